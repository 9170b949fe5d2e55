"""Network-namespace helpers for `vm` tests: a small lab of namespaces, veths and servers.

Addresses used with these helpers must come from 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24 or 198.18.0.0/15; nothing here sends traffic anywhere else.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Netns:
    """A throwaway network namespace; `ipr` is an IPRoute socket living inside it."""

    name: str
    _ipr: Any = field(default=None, repr=False)

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute(netns=self.name)
        return self._ipr

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch this thread into the namespace: sockets made meanwhile stay in it."""
        from pyroute2 import netns

        netns.pushns(self.name)
        try:
            yield
        finally:
            netns.popns()

    def run(self, argv: list[str], *, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a real binary (ipvsadm, iptables, ...) inside the namespace."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=check,
                              capture_output=True, text=True, timeout=timeout)

    def sysctl(self, key: str, value: str | int) -> None:
        """/proc/sys/net is per namespace: opened from inside, it is this namespace's."""
        with self.entered():
            Path("/proc/sys", key.replace(".", "/")).write_text(f"{value}\n")

    def link_index(self, ifname: str) -> int:
        (index,) = self.ipr.link_lookup(ifname=ifname)
        return int(index)

    def up(self, ifname: str) -> None:
        self.ipr.link("set", index=self.link_index(ifname), state="up")

    def addr(self, ifname: str, cidr: str) -> None:
        address, prefix = cidr.split("/")
        self.ipr.addr("add", index=self.link_index(ifname), address=address,
                      prefixlen=int(prefix))

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair from namespace a to namespace b, both ends up."""
    a.ipr.link("add", ifname=a_if, kind="veth", peer={"ifname": b_if, "net_ns_fd": b.name})
    a.up(a_if)
    b.up(b_if)


class _NameHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's name, so a test can see who served it."""

    server_name_text = "unnamed"

    def do_GET(self) -> None:
        body = self.server_name_text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


@contextlib.contextmanager
def serving(ns: Netns, make: Callable[[], socketserver.BaseServer]) -> Iterator[None]:
    """Run the server `make()` builds, from a thread of this process, inside `ns`.

    The listening socket is created inside the namespace and stays there; a thread avoids
    starting another Python interpreter, which takes seconds under TCG.
    """
    with ns.entered():
        server = make()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def http_backend(ns: Netns, address: str, port: int, name: str) -> Iterator[None]:
    """A tiny http.server bound inside `ns` that answers with `name`."""
    handler = type("Handler", (_NameHandler,), {"server_name_text": name})
    with serving(ns, lambda: http.server.ThreadingHTTPServer((address, port), handler)):
        yield


def http_get(ns: Netns, address: str, port: int, *, timeout: float = 5.0) -> str:
    """One GET from inside `ns` on a fresh connection; returns the body."""
    with ns.entered():
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            return resp.read().decode()
        finally:
            conn.close()


def open_ipvs(ns: Netns) -> Any:
    """pyroute2's IPVS socket in `ns`; a missing ip_vs module is reported as such."""
    from pyroute2 import IPVS
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return IPVS(netns=ns.name)
    except NetlinkError as e:
        if e.code == 2:  # no "IPVS" generic netlink family: the module is not loaded
            modules = os.environ.get("LVS_VM_MODULES_DIR")
            hint = (f"modprobe -d {modules} ip_vs" if modules
                    else "run this inside the VM: python -m tests.harness.vm run -- ...")
            pytest.fail(f"ip_vs is not loaded in kernel {os.uname().release} ({hint})")
        raise
