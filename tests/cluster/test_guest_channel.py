"""The guest the cluster tier runs node agents in: driven from the host, reaching only the
API server.

Why: agents run in the qemu guest (real IPVS) while the API server and the operator run on the
host's loopback. Every later end-to-end test stands on what is checked here: commands and
background processes in the guest are controllable from pytest, the guest reaches the API
server through its one forward with TLS verified, and it reaches nothing else on the host.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.cluster.conftest import APISERVER_GUEST_PORT
from tests.harness.controlplane import LocalControlPlane
from tests.harness.vm import GuestError, GuestVM


def test_run_returns_output_and_exit_status(guest: GuestVM) -> None:
    done = guest.run(["sh", "-c", 'echo "out $GREETING"; echo err >&2; exit 3'],
                     env={"GREETING": "hello"}, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out hello\n", "err\n")
    # It really is the guest: Debian's 6.1 kernel, with IPVS, and the harness's environment.
    assert guest.run(["uname", "-r"]).stdout.startswith("6.1.0-")
    assert guest.run(["sh", "-c", 'echo "$LVS_IN_VM"']).stdout == "1\n"
    assert "ip_vs " in guest.read_file("/proc/modules")
    assert guest.run(["cat"], input="piped\n").stdout == "piped\n"


def test_run_failures_raise_with_the_command_and_its_output(guest: GuestVM) -> None:
    with pytest.raises(GuestError) as failed:
        guest.run(["sh", "-c", "echo partial; echo broken >&2; exit 4"])
    message = str(failed.value)
    assert "exited 4" in message and "partial" in message and "broken" in message
    assert "sh -c" in message
    with pytest.raises(GuestError, match="timed out after 1 s"):
        guest.run(["sleep", "30"], timeout=1)


def test_spawn_logs_and_kill(guest: GuestVM) -> None:
    script = ('echo started; trap "echo got TERM; exit 7" TERM; '
              "while :; do sleep 0.1; done")
    handle = guest.spawn(["sh", "-c", script], name="looper")
    try:
        guest.wait_for_log(handle, "started", timeout=30)
        assert guest.alive(handle)
        assert guest.kill(handle) == 7
        assert not guest.alive(handle)
        assert guest.exit_status(handle) == 7
        assert guest.logs(handle).splitlines()[-1] == "got TERM"
    finally:
        guest.kill(handle, signal.SIGKILL)

    stubborn = guest.spawn(["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.1; done'],
                           name="stubborn")
    guest.wait_for_log(stubborn, "ready", timeout=30)
    assert guest.kill(stubborn, wait=1) is None  # TERM ignored: still running after 1 s
    assert guest.alive(stubborn)
    assert guest.kill(stubborn, signal.SIGKILL) == -signal.SIGKILL


def test_put_file_then_read_it_back(guest: GuestVM) -> None:
    path = f"/run/lvs-test/{secrets.token_hex(4)}/note.txt"
    guest.put_file(path, "line one\nline two\n", mode=0o600)
    assert guest.read_file(path) == "line one\nline two\n"
    assert guest.run(["stat", "-c", "%a", path]).stdout.strip() == "600"
    with pytest.raises(GuestError, match="No such file"):
        guest.read_file(path + ".missing")


def test_kubectl_in_the_guest_reaches_the_api_server_with_tls(
    control_plane: LocalControlPlane, guest: GuestVM, guest_kubeconfig: Callable[..., str]
) -> None:
    assert control_plane.binaries is not None
    kubectl = str(control_plane.binaries.kubectl)  # the guest sees the host's / read-only
    user = f"guest-probe-{secrets.token_hex(3)}"
    kubeconfig = guest_kubeconfig(user, ["lvs:guest-probes"])
    config = guest.read_file(kubeconfig)
    assert f"server: https://10.0.2.100:{APISERVER_GUEST_PORT}" in config
    assert "insecure-skip-tls-verify" not in config

    ready = guest.run([kubectl, "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
                      timeout=120)
    assert ready.stdout.strip() == "ok"
    who = json.loads(guest.run([kubectl, "--kubeconfig", kubeconfig, "auth", "whoami",
                                "-o", "json"], timeout=120).stdout)
    assert who["status"]["userInfo"]["username"] == user

    # The certificate is really checked: a name it does not carry is refused.
    wrong = guest.run([kubectl, "--kubeconfig", kubeconfig, "--tls-server-name=wrong.invalid",
                       "get", "--raw", "/readyz"], timeout=120, check=False)
    assert wrong.returncode != 0
    assert "x509" in wrong.stderr or "certificate" in wrong.stderr, wrong.stderr


@contextmanager
def _host_listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP listener on 127.0.0.1:<free port> with no forward; records who connects."""
    seen: list[str] = []
    stop = threading.Event()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append(f"{peer[0]}:{peer[1]}")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), seen
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


# Runs in the guest: connect to each address once (bounded) and send nothing; a connection the
# far side closes at once counts as "closed by peer". Prints one JSON object of the results.
PROBE = """
import json, socket, sys
results = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=4) as sock:
            sock.settimeout(2)
            try:
                got = sock.recv(1)
                results[target] = "connected" if got else "closed by peer"
            except socket.timeout:
                results[target] = "connected"
    except OSError as exc:
        results[target] = f"failed: {exc}"
print(json.dumps(results))
"""


def test_the_guest_reaches_no_host_port_without_a_forward(
    control_plane: LocalControlPlane, guest: GuestVM
) -> None:
    """Only 10.0.2.100:APISERVER_GUEST_PORT leads out; the qemu gateway, an unforwarded port
    on the forward address and the guest's own loopback do not reach the host's listener."""
    forwarded = guest.forward_address(control_plane.port)
    with _host_listener() as (port, seen):
        targets = [f"10.0.2.2:{port}", f"{guest.guest_ip}:{port}", f"127.0.0.1:{port}"]
        probe = guest.run([sys.executable, "-S", "-c", PROBE, forwarded, *targets], timeout=60)
    results = json.loads(probe.stdout)
    assert results[forwarded] == "connected", results  # the probe itself works
    for target in targets:
        assert results[target].startswith("failed"), results
    assert seen == [], f"the host listener was reached from the guest: {seen}"
