"""The agent's Kubernetes API client: JSON over HTTP(S) with the standard library.

Why not the `kubernetes` package: importing it loads some 380 modules (a typed model for
every API kind), about half a second on a server and seconds for a node agent starting on a
small or emulated machine, and the agent makes only a handful of kinds of request: list and
watch its NodePlan, get shards, patch its NodePlan's status, get/create/replace HA Leases and
get a VRRP password Secret. (The operator keeps the package: kopf is built on it.)

Credentials, in client-go's order: an explicit kubeconfig; else the pod's ServiceAccount
(KUBERNETES_SERVICE_HOST, the token file re-read as the kubelet rotates it); else $KUBECONFIG
(its first file) or ~/.kube/config. From a kubeconfig: the current context's cluster
(`server`, `certificate-authority[-data]`, `insecure-skip-tls-verify`, `tls-server-name`) and
user (`token`, `tokenFile`, `client-certificate[-data]` + `client-key[-data]`). `exec` and
`auth-provider` plugins are refused with a message saying so.

Connections are kept alive, one per thread (the agent loop, the Lease driver and the health
monitor each ask from their own); a watch gets a connection of its own for its lifetime. A
request on a kept connection that the server closed meanwhile is sent once more on a new one
(`retry_stale`); nothing else is retried here: callers have their own backoff and deadlines.
Errors are `KubeAPIError` (no answer: `status` None; an HTTP error: its status and the API's
message), and `KubeConfigError` for credentials that cannot be used.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import yaml

__all__ = [
    "IN_CLUSTER_DIR",
    "Credentials",
    "KubeAPI",
    "KubeAPIError",
    "KubeConfigError",
    "Response",
    "Timeout",
    "load_credentials",
]

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0  # client-go re-reads a token file once a minute
Timeout = float | tuple[float, float]  # seconds: both, or (connect, read)
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError,
          BrokenPipeError, ConnectionAbortedError)


class KubeConfigError(ValueError):
    """The credentials cannot be used: no kubeconfig, no context, a plugin we do not run."""


class KubeAPIError(Exception):
    """A request got no answer (`status` None: refused, timed out, TLS) or an HTTP error."""

    def __init__(self, doing: str, status: int | None, detail: str) -> None:
        self.status = status
        self.detail = detail
        code = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{doing}: {code}{detail}")


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8", errors="replace") or "null")

    def message(self) -> str:
        """The API's Status message, else the start of the body, else the reason phrase."""
        text = self.body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            return text.strip()[:200] or self.reason
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        return text.strip()[:200] or self.reason


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str  # https://host:port[/path]
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    token_file: str | None = None
    cert_data: bytes | None = None  # PEM client certificate and key
    key_data: bytes | None = None
    source: str = ""  # where these came from, for messages


def load_credentials(kubeconfig: Path | None = None) -> Credentials:
    """The credentials `kubeconfig` names; without one, the pod's ServiceAccount when
    KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG or ~/.kube/config."""
    if kubeconfig is not None:
        return _from_kubeconfig(Path(kubeconfig))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster()
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return _from_kubeconfig(Path(first) if first else Path.home() / ".kube" / "config")


def _in_cluster() -> Credentials:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token, ca = IN_CLUSTER_DIR / "token", IN_CLUSTER_DIR / "ca.crt"
    if not token.exists() or not ca.exists():
        raise KubeConfigError(f"in-cluster config: {token} or {ca} is missing (is a "
                              "ServiceAccount token mounted into this pod?)")
    server_host = f"[{host}]" if ":" in host else host
    return Credentials(server=f"https://{server_host}:{port}", ca_file=str(ca),
                       token_file=str(token), source="in-cluster ServiceAccount")


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or ():
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            return body if isinstance(body, dict) else {}
    raise KubeConfigError(f"{path}: no {what} named {name!r}")


def _from_kubeconfig(path: Path) -> Credentials:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"kubeconfig {path} is not YAML: {exc}") from exc
    if not isinstance(doc, dict) or not doc.get("current-context"):
        raise KubeConfigError(f"kubeconfig {path} has no current-context")
    context = _named(doc.get("contexts"), str(doc["current-context"]), "context", path)
    cluster = _named(doc.get("clusters"), str(context.get("cluster", "")), "cluster", path)
    user = _named(doc.get("users"), str(context.get("user", "")), "user", path) \
        if context.get("user") else {}
    base = path.parent

    def file_or_data(key: str) -> tuple[str | None, bytes | None]:
        data = cluster.get(f"{key}-data") if key == "certificate-authority" \
            else user.get(f"{key}-data")
        if data:
            return None, base64.b64decode(str(data))
        name = cluster.get(key) if key == "certificate-authority" else user.get(key)
        return (str(base / str(name)) if name else None), None

    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise KubeConfigError(
                f"kubeconfig {path}: user {context.get('user')!r} authenticates with an "
                f"`{plugin}` plugin, which lvs-agent does not run; give it a token, a token "
                "file or a client certificate (in a pod it uses its ServiceAccount)")
    server = str(cluster.get("server", ""))
    if not server:
        raise KubeConfigError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no "
                              "server")
    ca_file, ca_data = file_or_data("certificate-authority")
    cert_file, cert_data = file_or_data("client-certificate")
    key_file, key_data = file_or_data("client-key")
    try:
        if cert_file:
            cert_data = Path(cert_file).read_bytes()
        if key_file:
            key_data = Path(key_file).read_bytes()
    except OSError as exc:
        raise KubeConfigError(f"kubeconfig {path}: {exc}") from exc
    token_file = user.get("tokenFile")
    return Credentials(
        server=server,
        ca_file=ca_file,
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
        token=str(user["token"]) if user.get("token") else None,
        token_file=str(base / str(token_file)) if token_file else None,
        cert_data=cert_data,
        key_data=key_data,
        source=f"kubeconfig {path}",
    )


def _ssl_context(creds: Credentials) -> ssl.SSLContext:
    if creds.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(
                cafile=creds.ca_file,
                cadata=creds.ca_data.decode() if creds.ca_data is not None else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise KubeConfigError(f"{creds.source}: the certificate authority cannot be "
                                  f"loaded: {exc}") from exc
    if creds.cert_data is not None or creds.key_data is not None:
        if creds.cert_data is None or creds.key_data is None:
            raise KubeConfigError(f"{creds.source}: a client certificate needs both "
                                  "client-certificate and client-key")
        # ssl loads a client key only from a file: a private directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="lvs-agent-tls-") as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            for p, data in ((cert, creds.cert_data), (key, creds.key_data)):
                p.touch(mode=0o600)
                p.write_bytes(data)
            try:
                context.load_cert_chain(str(cert), str(key))
            except ssl.SSLError as exc:
                raise KubeConfigError(f"{creds.source}: the client certificate or key cannot "
                                      f"be loaded: {exc}") from exc
    return context


class _Token:
    """The bearer token: fixed, or a file re-read once a minute (a pod's projected token
    is rotated by the kubelet)."""

    def __init__(self, creds: Credentials) -> None:
        self._fixed, self._file = creds.token, creds.token_file
        self._value: str | None = None
        self._read_at = -TOKEN_REREAD_SECONDS
        self._lock = threading.Lock()

    def header(self) -> str | None:
        if self._fixed:
            return f"Bearer {self._fixed}"
        if not self._file:
            return None
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._read_at >= TOKEN_REREAD_SECONDS:
                try:
                    self._value = Path(self._file).read_text().strip()
                    self._read_at = now
                except OSError as exc:
                    if self._value is None:
                        raise KubeAPIError("reading the token", None,
                                           f"{self._file}: {exc.strerror or exc}") from exc
            return f"Bearer {self._value}"


def _timeouts(timeout: Timeout) -> tuple[float, float]:
    return (timeout, timeout) if isinstance(timeout, int | float) else timeout


class KubeAPI:
    """Requests to one API server with one set of credentials (thread-safe)."""

    def __init__(self, creds: Credentials, *, retry_stale: bool = True,
                 user_agent: str = "lvs-agent") -> None:
        url = urlsplit(creds.server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise KubeConfigError(f"{creds.source}: server {creds.server!r} is not an "
                                  "http(s) URL")
        self.credentials = creds
        self.retry_stale = retry_stale
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._context = _ssl_context(creds) if self._https else None
        self._token = _Token(creds)
        self._user_agent = user_agent
        self._local = threading.local()

    def sibling(self, *, retry_stale: bool) -> KubeAPI:
        """The same server and credentials (TLS context and token shared), other options."""
        other = object.__new__(KubeAPI)
        other.__dict__.update(self.__dict__)
        other.retry_stale = retry_stale
        other._local = threading.local()
        return other

    @staticmethod
    def path(*segments: str, query: Mapping[str, Any] | None = None) -> str:
        """'/' + the segments, each quoted; `query` without None values."""
        path = "/" + "/".join(quote(s, safe="") for s in segments)
        params = {k: v for k, v in (query or {}).items() if v is not None}
        return f"{path}?{urlencode(params)}" if params else path

    def request(self, method: str, path: str, *, doing: str, body: Any = None,
                content_type: str = "application/json", timeout: Timeout = 30.0) -> Response:
        """One request; `path` from `KubeAPI.path`. Any HTTP status is a Response; no answer
        at all is a KubeAPIError(status None)."""
        connect, read = _timeouts(timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = self._headers(doing, payload is not None, content_type)
        for attempt in (1, 2):
            conn, reused = self._connection(connect, doing)
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(read)
                conn.request(method, self._prefix + path, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE as exc:
                self._drop()
                if reused and self.retry_stale and attempt == 1:
                    continue
                raise KubeAPIError(doing, None, _describe(exc)) from exc
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                self._drop()
                raise KubeAPIError(doing, None, _describe(exc)) from exc
            if resp.will_close:
                self._drop()
            return Response(resp.status, resp.reason, data)
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, *, doing: str, body: Any = None,
             content_type: str = "application/json", timeout: Timeout = 30.0) -> Any:
        """A request whose 2xx answer is JSON; anything else is a KubeAPIError."""
        resp = self.request(method, path, doing=doing, body=body, content_type=content_type,
                            timeout=timeout)
        if not 200 <= resp.status <= 299:
            raise KubeAPIError(doing, resp.status, resp.message())
        try:
            return resp.json()
        except ValueError as exc:
            raise KubeAPIError(doing, resp.status, f"not JSON: {resp.body[:200]!r}") from exc

    def stream(self, path: str, *, doing: str, timeout: Timeout) -> Iterator[str]:
        """The lines of a streamed answer (a watch: one event per line), on a connection of
        its own that is closed when the iterator is. A non-2xx answer is a KubeAPIError."""
        connect, read = _timeouts(timeout)
        conn = self._new_connection(connect, doing)
        try:
            conn.sock.settimeout(read)
            conn.request("GET", self._prefix + path, headers=self._headers(doing, False, ""))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            conn.close()
            raise KubeAPIError(doing, None, _describe(exc)) from exc
        if not 200 <= resp.status <= 299:
            data = resp.read()
            conn.close()
            raise KubeAPIError(doing, resp.status, Response(resp.status, resp.reason,
                                                            data).message())
        return self._lines(conn, resp, doing)

    @staticmethod
    def _lines(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
               doing: str) -> Iterator[str]:
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                    raise KubeAPIError(doing, None, _describe(exc)) from exc
                if not line:
                    return
                yield line.decode("utf-8", errors="replace")
        finally:
            conn.close()

    # ---- connections

    def _headers(self, doing: str, has_body: bool, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if has_body:
            headers["Content-Type"] = content_type
        try:
            auth = self._token.header()
        except KubeAPIError as exc:
            raise KubeAPIError(doing, None, exc.detail) from exc
        if auth:
            headers["Authorization"] = auth
        return headers

    def _new_connection(self, connect_timeout: float, doing: str) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https and self.credentials.tls_server_name:
            conn = _ServerNameConnection(self._host, self._port, connect_timeout,
                                         self._context, self.credentials.tls_server_name)
        elif self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=connect_timeout,
                                               context=self._context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout)
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise KubeAPIError(doing, None, f"connecting to {self.credentials.server}: "
                                             f"{_describe(exc)}") from exc
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _connection(self, connect_timeout: float, doing: str
                    ) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        conn = self._new_connection(connect_timeout, doing)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _ServerNameConnection(http.client.HTTPSConnection):
    """HTTPS to host:port whose certificate is checked against `tls-server-name`."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext | None,
                 server_name: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._ctx = context or ssl.create_default_context()

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_name)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
