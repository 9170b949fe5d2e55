"""Run a real kube-apiserver and etcd as plain processes on 127.0.0.1 (the envtest approach).

Why: the operator and agents must be tested against the real API machinery (CRD structural
schemas, CEL validation, RBAC, watches, status subresources) on machines without Docker.
Nothing here listens on or talks to anything but the loopback address.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import yaml

from .binaries import Binaries, Log, ensure_binaries, etcd_version
from .pki import CertificateAuthority

LOOPBACK = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "198.18.0.0/24"  # benchmarking range, never routed anywhere
KUBERNETES_SERVICE_IP = "198.18.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "lvs-test-admin"
# Where the qemu guest of tests/harness/vm reaches forwarded host ports (its guestfwd address).
# The serving certificate names it too, so kubeconfigs with server https://10.0.2.100:PORT
# verify TLS inside the guest; it is a name in a certificate, nothing listens on it.
GUEST_FORWARD_ADDRESS = "10.0.2.100"
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message carries the processes' log tails."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike CalledProcessError its message shows kubectl's stderr."""

    def __str__(self) -> str:
        args = self.cmd[1:] if isinstance(self.cmd, list) else self.cmd
        stderr = (self.stderr or "").strip()
        return f"kubectl {args} exited {self.returncode}: {stderr or '(no stderr)'}"


def _stderr_log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


_PRCTL: Callable[..., int] | None
try:  # resolved here, not in the child: after fork only the bare call runs (no dlopen)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the servers get SIGTERM if the Python process dies without cleanup.

    Caveat of the Linux API: the signal follows the death of the *thread* that started the
    servers, so start them from a thread that lives as long as they should (pytest's does).
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def child_env(
    base: Mapping[str, str] | None = None, *, strip_proxies: bool = False
) -> dict[str, str]:
    """Environment for anything talking to the local control plane: loopback never proxied.

    The servers themselves get no proxy variables at all (strip_proxies); commands run
    against them keep theirs (they may need them for registries) but with NO_PROXY covering
    127.0.0.1 and localhost.
    """
    env = {
        k: v for k, v in (base or os.environ).items()
        if not (strip_proxies and k in _PROXY_VARS)
    }
    existing = env.get("NO_PROXY") or env.get("no_proxy") or ""
    no_proxy = ",".join(filter(None, [existing, "127.0.0.1,localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} missing)"
    return "\n".join(text.splitlines()[-lines:])


class LocalControlPlane:
    """etcd + kube-apiserver on loopback with RBAC, an admin kubeconfig and minted identities.

    Use as a context manager, or call start()/stop(). ``keep=True`` (or LVS_CONTROLPLANE_KEEP=1)
    leaves the temp dir with logs, certificates and etcd data after stop() for debugging.
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        workdir: Path | None = None,
        keep: bool | None = None,
        ready_timeout: float = 120.0,
        log: Log = _stderr_log,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.binaries = binaries
        self.log = log
        self.ready_timeout = ready_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.keep = keep if keep is not None else os.environ.get("LVS_CONTROLPLANE_KEEP") == "1"
        self._given_workdir = workdir
        self.workdir = Path()
        self.server = ""
        self.kubeconfig = Path()
        self.bin_dir = Path()
        self.etcd_url = ""
        self.startup_seconds = 0.0
        self._ca: CertificateAuthority | None = None
        self._serving: tuple[Path, Path] = (Path(), Path())
        self._admin: tuple[Path, Path] = (Path(), Path())
        self._sa_key, self._sa_pub = Path(), Path()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._running = False
        self._apiserver_args: list[str] = []

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        """The API server's port on 127.0.0.1 (what a VM forward points at)."""
        if not self.server:
            raise RuntimeError("start() first")
        return int(self.server.rsplit(":", 1)[1])

    @property
    def ca_file(self) -> Path:
        """CA certificate that signs the API server's serving certificate (and client certs)."""
        return self.workdir / "pki" / "ca.crt"

    def log_file(self, component: str) -> Path:
        """Log file of ``etcd`` or ``kube-apiserver``."""
        return self.workdir / "logs" / f"{component}.log"

    def start(self) -> LocalControlPlane:
        """Start etcd then kube-apiserver, wait for /readyz, write the admin kubeconfig.

        startup_seconds then holds the start-to-ready time (binaries already at hand).
        """
        if self._running:
            return self
        if self.binaries is None:
            self.binaries = ensure_binaries(self.log)
        started = time.monotonic()
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="lvs-controlplane-"))
        atexit.register(self.stop)
        self._running = True
        try:
            self._prepare_files()
            for attempt in range(3):
                try:
                    self._start_processes()
                    break
                except ControlPlaneError as exc:
                    if attempt == 2 or not self._port_clash():
                        raise
                    self.log(f"port clash, retrying with new ports ({exc.args[0].splitlines()[0]})")
                    self._stop_processes()
        except ControlPlaneError as exc:
            tails = self.log_tails()
            self.stop()
            raise ControlPlaneError(f"{exc}\n{tails}") from None
        except BaseException:
            self._report_failure()
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.log(f"control plane ready at {self.server} in {self.startup_seconds:.1f}s "
                 f"(workdir {self.workdir})")
        return self

    def stop(self) -> None:
        """Terminate kube-apiserver then etcd; remove the temp dir unless keep is set."""
        if not self._running:
            return
        self._running = False
        atexit.unregister(self.stop)
        self._stop_processes()
        if self.keep or self._given_workdir is not None:
            self.log(f"kept {self.workdir} (logs, certificates, etcd data)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def mint_kubeconfig(
        self,
        user: str,
        groups: Sequence[str] = (),
        *,
        path: Path | None = None,
        server: str | None = None,
    ) -> Path:
        """Write a kubeconfig for user in groups (x509 client cert; no RBAC grants of its own).

        Why: later tiers run the operator and agents under RBAC-limited identities, exactly as
        the chart's roles would grant them, instead of as cluster-admin. ``server`` replaces
        the loopback URL, e.g. ``https://10.0.2.100:6443`` for a client inside the VM (the
        serving certificate is valid for that address).
        """
        assert self._ca is not None, "start() first"
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", user) + "-" + os.urandom(3).hex()
        cert, key = self._ca.issue(f"user-{safe}", user, groups)
        target = path or self.workdir / "kubeconfigs" / f"{safe}.kubeconfig"
        self._write_kubeconfig(target, user, cert, key, server=server)
        return target

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        duration: str = "24h",
        path: Path | None = None,
        server: str | None = None,
        create: bool = True,
        bound_pod: str | None = None,
    ) -> Path:
        """Write a kubeconfig with a token of ServiceAccount namespace/name (created first
        unless ``create`` is false, e.g. when the chart made it).

        Why: the chart binds its RBAC to ServiceAccounts, so running the operator and agents
        as exactly those identities tests the chart's roles as a real cluster would. Tokens come
        from the TokenRequest API, signed with this control plane's service-account key.
        ``bound_pod``: bind the token to that Pod in ``namespace``, as the kubelet does for a
        pod's own token; the API server then puts the pod's node name into the identity.
        ``server``: as for mint_kubeconfig.
        """
        if create:
            manifest = yaml.safe_dump({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            })
            self.kubectl("apply", "--server-side", "--field-manager=lvs-test-harness", "-f", "-",
                         input=manifest)
        bind = ["--bound-object-kind=Pod", f"--bound-object-name={bound_pod}"] if bound_pod else []
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}", *bind
        ).stdout.strip()
        user = f"system:serviceaccount:{namespace}:{name}"
        pod = f"-{bound_pod}" if bound_pod else ""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"sa-{namespace}-{name}{pod}")
        target = path or self.workdir / "kubeconfigs" / f"{safe}.kubeconfig"
        self._write_kubeconfig(target, user, token=token, namespace=namespace,
                               server=server)
        return target

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG and a PATH that finds the pinned kubectl and helm first."""
        env = child_env()
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane (admin unless kubeconfig given)."""
        assert self.binaries is not None
        proc = subprocess.run(
            [str(self.binaries.kubectl), *args], env=self.env(kubeconfig), input=input,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver and start it again on the same port with the same etcd data
        (clients see connections drop and watches end); returns the seconds until ready.

        Why: the operator and agents must ride out an API server restart."""
        proc = self._procs.get("kube-apiserver")
        assert proc is not None and self._apiserver_args, "start() first"
        t0 = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        old_log = self._logs.pop("kube-apiserver", None)
        if old_log is not None:
            old_log.close()
        apiserver = self._spawn("kube-apiserver", self._apiserver_args)
        self._wait("kube-apiserver", apiserver, self._apiserver_ready, self.ready_timeout)
        return time.monotonic() - t0

    def dead_process(self) -> str | None:
        """Name of a server process that has exited while it should be running, if any."""
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                return f"{name} (exit status {proc.returncode})"
        return None

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of both logs, for error messages."""
        return "\n".join(
            f"----- {name}.log (last {lines} lines) -----\n{tail(self.log_file(name), lines)}"
            for name in ("etcd", "kube-apiserver")
        )

    # ------------------------------------------------------------------ internals

    def _prepare_files(self) -> None:
        assert self.binaries is not None
        for sub in ("logs", "pki", "kubeconfigs", "bin", "apiserver-certs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.bin_dir = self.workdir / "bin"
        for name, path in (("kubectl", self.binaries.kubectl), ("helm", self.binaries.helm)):
            link = self.bin_dir / name
            if path is not None and not link.exists():
                link.symlink_to(path)
        self._ca = CertificateAuthority(self.workdir / "pki")
        self._serving = self._ca.issue(
            "kube-apiserver", "kube-apiserver",
            server_names=[
                LOOPBACK, "localhost", GUEST_FORWARD_ADDRESS, KUBERNETES_SERVICE_IP,
                "kubernetes", "kubernetes.default",
                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            ],
        )
        self._admin = self._ca.issue("admin", ADMIN_USER, ["system:masters"])
        self._sa_key, self._sa_pub = self._ca.keypair("service-account")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logf = open(self.log_file(name), "ab")  # noqa: SIM115 - closed in _stop_processes
        logf.write(f"\n===== {' '.join(args)}\n".encode())
        logf.flush()
        self._logs[name] = logf
        proc = subprocess.Popen(
            args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, env=child_env(strip_proxies=True), start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._procs[name] = proc
        return proc

    def _start_processes(self) -> None:
        assert self.binaries is not None and self._ca is not None
        client_port, peer_port, secure_port = free_port(), free_port(), free_port()
        while len({client_port, peer_port, secure_port}) < 3:
            peer_port, secure_port = free_port(), free_port()
        self.etcd_url = f"http://{LOOPBACK}:{client_port}"
        peer_url = f"http://{LOOPBACK}:{peer_port}"
        data_dir = self.workdir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        etcd_args = [
            str(self.binaries.etcd),
            "--name=lvs-test",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=lvs-test={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        version = etcd_version(self.binaries.etcd) or "3.5"
        if tuple(int(x) for x in version.split(".")[:2]) >= (3, 5):
            etcd_args.append("--unsafe-no-fsync")  # throwaway data: trade durability for speed
        etcd = self._spawn("etcd", etcd_args)
        self._wait("etcd", etcd, self._etcd_healthy, 30.0)

        self.server = f"https://{LOOPBACK}:{secure_port}"
        serving_cert, serving_key = self._serving
        apiserver_args = [
            str(self.binaries.kube_apiserver),
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={secure_port}",
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={serving_cert}",
            f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={self.ca_file}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self._sa_pub}",
            f"--service-account-signing-key-file={self._sa_key}",
            "--authorization-mode=Node,RBAC",
            # No controller-manager creates the `default` ServiceAccount in namespaces.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",  # the agent DaemonSet uses hostNetwork
            # A loopback advertise address cannot be written into the `kubernetes` Endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *self.extra_apiserver_args,
        ]
        self._apiserver_args = apiserver_args
        apiserver = self._spawn("kube-apiserver", apiserver_args)
        self._write_kubeconfig(self.workdir / "admin.kubeconfig", ADMIN_USER, *self._admin)
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self._wait("kube-apiserver", apiserver, self._apiserver_ready, self.ready_timeout)

    def _etcd_healthy(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, int(self.etcd_url.rsplit(":", 1)[1]),
                                          timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and b"true" in resp.read()
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self._admin[0]), str(self._admin[1]))
        port = int(self.server.rsplit(":", 1)[1])
        conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=5, context=ctx)
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            return resp.status == 200 and resp.read().strip() == b"ok"
        finally:
            conn.close()

    def _wait(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        probe: Callable[[], bool],
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with status {proc.returncode}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{name} not ready after {timeout:.0f}s")
            time.sleep(0.2)

    def _port_clash(self) -> bool:
        return any(
            "address already in use" in tail(self.log_file(n), 200)
            for n in ("etcd", "kube-apiserver")
        )

    def _report_failure(self) -> None:
        self.log("control plane failed to start; log tails follow\n" + self.log_tails())

    def _stop_processes(self) -> None:
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            logf = self._logs.pop(name, None)
            if logf is not None:
                logf.close()

    def _write_kubeconfig(
        self,
        path: Path,
        user: str,
        cert: Path | None = None,
        key: Path | None = None,
        *,
        token: str | None = None,
        namespace: str = "default",
        server: str | None = None,
    ) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        if token is not None:
            credentials = {"token": token}
        else:
            assert cert is not None and key is not None
            credentials = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lvs-local", "cluster": {
                "server": server or self.server,
                "certificate-authority-data": b64(self.ca_file),
            }}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "lvs-local", "context": {
                "cluster": "lvs-local", "user": user, "namespace": namespace,
            }}],
            "current-context": "lvs-local",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o600)
        os.replace(tmp, path)
