"""A small LVS lab inside the guest: namespaces wired as classic LVS how-tos draw them,
servers that say who answered (and whom they saw), and the real agent programming it all.

Addresses come only from 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24; every client
loop in the tests is bounded in count and by socket timeouts.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lvs_operator.agent.main import real_kernel
from lvs_operator.agent.reconcile import ReconcileReport, reconcile
from lvs_operator.agent.state import load_state, save_state
from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from tests.unit.builders import node
from tests.vm.netlab import Netns, serving, veth

MakeNetns = Callable[[str], Netns]

# --------------------------------------------------------------------------- topologies


def routed(make_netns: MakeNetns, *, real_servers_route_back: bool = True) -> dict[str, Netns]:
    """NAT/FULLNAT: client --- director --- real servers on a separate network.

        client 203.0.113.2 --- front 203.0.113.1 [director] br0 198.51.100.1 --- rs1 .11, rs2 .12

    The VIP 203.0.113.10 is on the client side. With `real_servers_route_back` the real
    servers' default route points at the director (classic LVS-NAT); without it they can
    only reach 198.51.100.0/24 (FULLNAT must cope).
    """
    client, director = make_netns("client"), make_netns("director")
    veth(client, "eth0", director, "front")
    client.addr("eth0", "203.0.113.2/24")
    client.ipr.route("add", dst="0.0.0.0/0", gateway="203.0.113.1")
    director.addr("front", "203.0.113.1/24")
    director.ipr.link("add", ifname="br0", kind="bridge")
    director.up("br0")
    director.addr("br0", "198.51.100.1/24")
    lab = {"client": client, "director": director}
    for i, name in enumerate(("rs1", "rs2"), start=11):
        rs = make_netns(name)
        veth(director, f"to-{name}", rs, "eth0")
        director.ipr.link("set", index=director.link_index(f"to-{name}"),
                          master=director.link_index("br0"))
        rs.addr("eth0", f"198.51.100.{i}/24")
        if real_servers_route_back:
            rs.ipr.route("add", dst="0.0.0.0/0", gateway="198.51.100.1")
        lab[name] = rs
    return lab


def segment(make_netns: MakeNetns, clients: int = 1) -> dict[str, Netns]:
    """DR/TUN: everyone on one Ethernet segment (a bridge in a "switch" namespace).

        client .100 (client2 .101), director .2, rs1 .11, rs2 .12 in 192.0.2.0/24; VIP .10
    """
    switch = make_netns("switch")
    switch.ipr.link("add", ifname="br0", kind="bridge")
    switch.up("br0")
    lab = {"switch": switch}
    hosts = {"director": 2, "rs1": 11, "rs2": 12}
    for c in range(clients):
        hosts["client" if c == 0 else f"client{c + 1}"] = 100 + c
    for name, host in hosts.items():
        ns = make_netns(name)
        port = f"p-{name}"[:15]
        veth(ns, "eth0", switch, port)
        switch.ipr.link("set", index=switch.link_index(port), master=switch.link_index("br0"))
        ns.addr("eth0", f"192.0.2.{host}/24")
        lab[name] = ns
    return lab


# --------------------------------------------------------------------------- the agent

LAB_NODES = [node("director", **{"lvs.dev/director": "true"}), node("rs1"), node("rs2")]


def program(lab: dict[str, Netns], docs: list[dict[str, Any]], state_dir: Path,
            nodes: tuple[str, ...] = ("director", "rs1", "rs2")) -> dict[str, ReconcileReport]:
    """Compile the manifests as the operator would and let the real agent apply each node's
    plan inside that node's namespace; every pass must succeed."""
    objects = [parse_manifest(d) for d in [*LAB_NODES, *docs]]
    result = compile_cluster([o for o in objects if o is not None])
    errors = [str(i) for i in result.all_issues() if i.severity == "Error"]
    assert not errors, errors
    reports = {}
    for name in nodes:
        path = state_dir / f"{name}.json"
        state = load_state(path)
        report = reconcile(result.plans[name], real_kernel(lab[name].name), state,
                           persist=lambda s, p=path: save_state(p, s))
        assert report.ok, (name, report.failures)
        reports[name] = report
    return reports


# --------------------------------------------------------------------------- servers


class _Threaded(socketserver.ThreadingMixIn):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # health probes close with an RST (SO_LINGER 0): not worth a traceback
        if not isinstance(sys.exc_info()[1], ConnectionResetError):
            super().handle_error(request, client_address)  # type: ignore[misc]


@contextlib.contextmanager
def who_http(ns: Netns, port: int, name: str) -> Iterator[None]:
    """HTTP on 0.0.0.0:port answering "<name> <client address it saw>"."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{name} {self.client_address[0]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(_Threaded, http.server.HTTPServer):
        pass

    with serving(ns, lambda: Server(("0.0.0.0", port), Handler)):
        yield


@contextlib.contextmanager
def line_echo(ns: Netns, port: int, name: str) -> Iterator[None]:
    """TCP on 0.0.0.0:port answering each line with "<name> <line>", for as long as the
    client keeps the connection (for least-connection and drain tests)."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                self.wfile.write(f"{name} {raw.decode().strip()}\n".encode())
                self.wfile.flush()

    class Server(_Threaded, socketserver.TCPServer):
        pass

    with serving(ns, lambda: Server(("0.0.0.0", port), Handler)):
        yield


@contextlib.contextmanager
def udp_who(ns: Netns, port: int, name: str) -> Iterator[None]:
    """UDP on 0.0.0.0:port answering every datagram with the server's name."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _data, sock = self.request
            sock.sendto(name.encode(), self.client_address)

    class Server(socketserver.UDPServer):
        allow_reuse_address = True

    with serving(ns, lambda: Server(("0.0.0.0", port), Handler)):
        yield


# --------------------------------------------------------------------------- clients


def get(ns: Netns, address: str, port: int = 80, timeout: float = 5.0) -> tuple[str, str]:
    """One HTTP GET on a fresh connection from inside `ns`: (who answered, whom it saw)."""
    with ns.entered():
        sock = socket.create_connection((address, port), timeout=timeout)
    with sock:
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1].decode()
    server, seen = body.split()
    return server, seen


class LineClient:
    """A long-lived TCP connection from inside a namespace."""

    def __init__(self, ns: Netns, address: str, port: int, timeout: float = 5.0) -> None:
        with ns.entered():
            self.sock = socket.create_connection((address, port), timeout=timeout)
        self.file = self.sock.makefile("rwb")

    def ask(self, text: str) -> str:
        self.file.write(f"{text}\n".encode())
        self.file.flush()
        line = self.file.readline().decode().strip()
        assert line, "the connection was closed"
        server, echoed = line.split(" ", 1)
        assert echoed == text
        return server

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def udp_ask(ns: Netns, address: str, port: int, timeout: float = 5.0) -> str:
    """One datagram from a fresh socket (a new source port, so a new IPVS connection)."""
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.sendto(b"who", (address, port))
        data, _ = sock.recvfrom(512)
    return data.decode()


def service_stats(director: Netns, service: str, conns: int) -> dict[str, int]:
    """Conns/InPkts/OutPkts of one service, from the real `ipvsadm -Ln --stats --exact`,
    once it shows `conns` connections: the kernel publishes these counters from its
    estimator timer (every 2 s), so they lag the traffic. Bounded: 10 s."""
    deadline = time.monotonic() + 10
    while True:
        out = director.run(["ipvsadm", "-Ln", "--stats", "--exact", *service.split()]).stdout
        stats = _parse_stats(out)
        if stats["conns"] >= conns or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def _parse_stats(out: str) -> dict[str, int]:
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 7 and fields[0] in ("TCP", "UDP", "FWM"):
            conns, inpkts, outpkts = (int(f) for f in fields[2:5])
            return {"conns": conns, "inpkts": inpkts, "outpkts": outpkts}
    raise AssertionError(f"no service line in:\n{out}")


# The agent's start (Python imports under TCG, slower still while the cluster tier's guest
# shares the two cores) is not what these tests measure: its first apply gets a wide bound,
# polled gently so the polling does not slow the start further; detection is timed from
# a table that already holds every server.
FIRST_APPLY_SECONDS = 300


def first_apply(agent: subprocess.Popen[str], check: Callable[[], bool]) -> None:
    """Wait for the agent's first pass to leave the table as `check` wants it; fails at once,
    with the agent's output, if the agent exits instead."""
    start = time.monotonic()
    while time.monotonic() - start < FIRST_APPLY_SECONDS:
        if check():
            print(f"first apply after {time.monotonic() - start:.1f} s")
            return
        if agent.poll() is not None:
            out, _ = agent.communicate()
            raise AssertionError(f"the agent exited ({agent.returncode}) before its first "
                                 f"apply:\n{out}")
        time.sleep(0.5)
    raise AssertionError(f"no first apply within {FIRST_APPLY_SECONDS} s")
