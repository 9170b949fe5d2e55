"""The agent's own Kubernetes API client (agent/kubeapi.py): kubeconfig and in-cluster
credentials, JSON requests and their errors, kept connections, watch streams. Against a
loopback HTTP server; TLS, tokens and client certificates against the real API server are the
cluster tier's (every agent there uses this client)."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator.agent import kubeapi
from lvs_operator.agent.kubeapi import (
    Credentials,
    KubeAPI,
    KubeAPIError,
    KubeConfigError,
    load_credentials,
)


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None,
               name: str = "config") -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                     {"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


# ------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize("desc, user, cluster, want", [
    ("token and CA data", {"token": "abc"},
     {"server": "https://192.0.2.1:6443", "certificate-authority-data":
      base64.b64encode(b"PEM").decode()},
     {"server": "https://192.0.2.1:6443", "token": "abc", "ca_data": b"PEM", "ca_file": None}),
    ("files relative to the kubeconfig", {"tokenFile": "tok"},
     {"server": "https://h:1", "certificate-authority": "ca.crt", "tls-server-name": "api"},
     {"token_file": "DIR/tok", "ca_file": "DIR/ca.crt", "tls_server_name": "api"}),
    ("client certificate data", {"client-certificate-data": base64.b64encode(b"C").decode(),
                                 "client-key-data": base64.b64encode(b"K").decode()},
     None, {"cert_data": b"C", "key_data": b"K", "token": None}),
    ("insecure", {"token": "t"}, {"server": "https://h:1", "insecure-skip-tls-verify": True},
     {"insecure": True}),
])
def test_kubeconfig_credentials(tmp_path: Path, desc: str, user: dict[str, Any],
                                cluster: dict[str, Any] | None, want: dict[str, Any]) -> None:
    creds = load_credentials(kubeconfig(tmp_path, user, cluster))
    for key, value in want.items():
        if isinstance(value, str):
            value = value.replace("DIR", str(tmp_path))
        assert getattr(creds, key) == value, (desc, key)
    assert creds.source == f"kubeconfig {tmp_path / 'config'}"


def test_client_certificate_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    creds = load_credentials(kubeconfig(tmp_path, {"client-certificate": "c.pem",
                                                   "client-key": "k.pem"}))
    assert (creds.cert_data, creds.key_data) == (b"CERT", b"KEY")


@pytest.mark.parametrize("desc, doc, says", [
    ("exec plugin", {"exec": {"command": "aws"}}, "`exec` plugin, which lvs-agent does not run"),
    ("auth provider", {"auth-provider": {"name": "gcp"}}, "`auth-provider` plugin"),
])
def test_plugins_are_refused_saying_what_to_use(tmp_path: Path, desc: str,
                                                doc: dict[str, Any], says: str) -> None:
    with pytest.raises(KubeConfigError, match=says) as exc:
        load_credentials(kubeconfig(tmp_path, doc))
    assert "token, a token file or a client certificate" in str(exc.value), desc


def test_unusable_kubeconfigs_say_why(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"cannot read kubeconfig .*missing"):
        load_credentials(tmp_path / "missing")
    (tmp_path / "empty").write_text("apiVersion: v1\n")
    with pytest.raises(KubeConfigError, match="has no current-context"):
        load_credentials(tmp_path / "empty")
    path = kubeconfig(tmp_path, {"token": "t"})
    doc = yaml.safe_load(path.read_text())
    doc["current-context"] = "nope"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(KubeConfigError, match="no context named 'nope'"):
        load_credentials(path)
    with pytest.raises(KubeConfigError, match="has no server"):
        load_credentials(kubeconfig(tmp_path, {"token": "t"}, {"certificate-authority": "x"}))
    with pytest.raises(KubeConfigError, match="is not an http"):
        KubeAPI(Credentials(server="unix:///run/k8s.sock"))


def test_kubeconfig_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(tmp_path, {"token": "from-env"}, name="a")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'b'}")
    assert load_credentials().token == "from-env"
    monkeypatch.setenv("KUBECONFIG", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    kubeconfig(tmp_path / ".kube", {"token": "from-home"})
    assert load_credentials().token == "from-home"
    explicit = kubeconfig(tmp_path, {"token": "explicit"}, name="e")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert load_credentials(explicit).token == "explicit"


def test_in_cluster_credentials_use_the_mounted_token(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubeapi, "IN_CLUSTER_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match="is a ServiceAccount token mounted"):
        load_credentials()
    (tmp_path / "token").write_text("t1\n")
    (tmp_path / "ca.crt").write_text("")
    creds = load_credentials()
    assert creds.server == "https://[fd00::1]:443"
    assert (creds.token_file, creds.ca_file) == (str(tmp_path / "token"),
                                                 str(tmp_path / "ca.crt"))


# ------------------------------------------------------------------------------ requests


class Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, like the API server; answers from `Handler.routes`."""

    protocol_version = "HTTP/1.1"
    routes: dict[tuple[str, str], tuple[int, Any]] = {}
    seen: list[tuple[str, str, str, Any]] = []
    connections: set[int] = set()
    close_after: bool = False

    def handle_one_request(self) -> None:
        Handler.connections.add(self.client_address[1])
        super().handle_one_request()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        Handler.seen.append((self.command, self.path, self.headers.get("Content-Type", ""),
                             self.headers.get("Authorization")))
        if self.path.startswith("/watch"):
            self._watch()
            return
        status, obj = Handler.routes.get((self.command, self.path.split("?")[0]),
                                         (404, {"kind": "Status", "message": "nothing here"}))
        data = json.dumps(obj if body is None or status >= 300 else {"echo": body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if Handler.close_after:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _watch(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3):
            line = json.dumps({"type": "ADDED", "object": {"n": i}}).encode() + b"\n"
            half = len(line) // 2  # an event split across chunks
            for part in (line[:half], line[half:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Handler.routes, Handler.seen, Handler.connections = {}, [], set()
    Handler.close_after = False
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_json_requests_and_their_errors(server: int, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    api = KubeAPI(Credentials(server=f"http://127.0.0.1:{server}/prefix",
                              token_file=str(tmp_path / "token")))
    Handler.routes = {("GET", "/prefix/api/v1/namespaces/ns/things/a%2Fb"): (200, {"ok": 1}),
                      ("GET", "/prefix/forbidden"): (403, {"kind": "Status",
                                                           "message": "things is forbidden"})}
    path = KubeAPI.path("api", "v1", "namespaces", "ns", "things", "a/b", query={"x": None})
    assert api.call("GET", path, doing="reading a/b") == {"ok": 1}
    with pytest.raises(KubeAPIError) as exc:
        api.call("GET", "/forbidden", doing="reading it")
    assert (exc.value.status, str(exc.value)) == (403, "reading it: HTTP 403: things is forbidden")
    Handler.routes[("PATCH", "/prefix/x/status")] = (200, {})
    assert api.call("PATCH", "/x/status", doing="patching", body={"status": {"a": 1}},
                    content_type="application/merge-patch+json") == {"echo": {"status": {"a": 1}}}
    assert Handler.seen[-1][2] == "application/merge-patch+json"
    with pytest.raises(KubeAPIError, match=r"^patching: HTTP 404: nothing here$"):
        api.call("PATCH", "/y", doing="patching", body={})
    assert {auth for *_, auth in Handler.seen} == {"Bearer s3cret"}
    assert len(Handler.connections) == 1  # kept alive across all four requests
    assert KubeAPI.path("apis", "g", query={"fieldSelector": "metadata.name=n1", "w": 1}) == \
        "/apis/g?fieldSelector=metadata.name%3Dn1&w=1"


def test_a_connection_the_server_closed_is_replaced_once(server: int) -> None:
    api = KubeAPI(Credentials(server=f"http://127.0.0.1:{server}"))
    Handler.routes = {("GET", "/a"): (200, {"n": 1})}
    assert api.call("GET", "/a", doing="a") == {"n": 1}
    conn = api._local.conn
    # The server goes away from under the kept connection (idle timeout, restart).
    conn.sock.shutdown(socket.SHUT_RDWR)
    assert api.call("GET", "/a", doing="a") == {"n": 1}  # sent again on a new connection
    assert len(Handler.connections) == 2
    strict = api.sibling(retry_stale=False)
    assert strict.call("GET", "/a", doing="a") == {"n": 1}
    strict._local.conn.sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(KubeAPIError, match=r"^b: ") as exc:
        strict.call("GET", "/a", doing="b")
    assert exc.value.status is None
    assert strict.call("GET", "/a", doing="a") == {"n": 1}  # and the next one reconnects


def test_a_server_that_closes_after_each_answer(server: int) -> None:
    Handler.close_after = True
    Handler.routes = {("GET", "/a"): (200, {})}
    api = KubeAPI(Credentials(server=f"http://127.0.0.1:{server}"), retry_stale=False)
    for _ in range(3):
        assert api.call("GET", "/a", doing="a") == {}
    assert len(Handler.connections) == 3


def test_no_answer_is_an_error_without_a_status() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = KubeAPI(Credentials(server=f"http://127.0.0.1:{port}"))
    with pytest.raises(KubeAPIError, match=f"listing: connecting to http://127.0.0.1:{port}: "
                                           ".*refused") as exc:
        api.call("GET", "/", doing="listing", timeout=1.0)
    assert exc.value.status is None

    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        api = KubeAPI(Credentials(server=f"http://127.0.0.1:{silent.getsockname()[1]}"))
        t0 = time.monotonic()
        with pytest.raises(KubeAPIError, match=r"^reading: timed out$"):
            api.call("GET", "/", doing="reading", timeout=(1.0, 0.3))
        assert time.monotonic() - t0 < 1.0


def test_a_watch_streams_lines_on_its_own_connection(server: int) -> None:
    api = KubeAPI(Credentials(server=f"http://127.0.0.1:{server}"))
    Handler.routes = {("GET", "/a"): (200, {})}
    api.call("GET", "/a", doing="a")
    lines = list(api.stream("/watch?w=1", doing="watching", timeout=5.0))
    assert [json.loads(line)["object"]["n"] for line in lines] == [0, 1, 2]
    assert all(line.endswith("\n") for line in lines)
    assert len(Handler.connections) == 2
    api.call("GET", "/a", doing="a")  # the kept connection was not the watch's
    assert len(Handler.connections) == 2
    with pytest.raises(KubeAPIError, match="watching: HTTP 404: nothing here"):
        api.stream("/nowatch", doing="watching", timeout=5.0)


def test_the_agent_does_not_import_the_kubernetes_package() -> None:
    """Why this client exists: the agent's start (seconds under emulation) without it."""
    code = ("import sys, lvs_operator.agent.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('kubernetes', 'urllib3', 'kopf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
