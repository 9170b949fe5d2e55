"""The guest half of the end-to-end tests and of `make demo`: LVS sites in namespaces.

Runs inside the qemu guest (real IPVS); the host side drives it through GuestVM:

    up --prefix P --backends N   build the e2e site and serve until SIGTERM, then tear it down
    demo                         build the site examples/ is written for (see demo_site)
    get --prefix P ADDR PORT N   N HTTP requests from the client namespace; JSON of who answered
    hold --prefix P ADDR PORT S  one TCP connection through the VIP, a line every 0.5 s for at
                                 most S seconds or until SIGTERM; prints a summary line
    ha-up --prefix P             the two-director DR site of the HA tests (see ha_up)
    arpwatch --prefix P ADDR S   who-has ADDR from the client every 0.2 s for at most S seconds
                                 or until SIGTERM; JSON of who answered, split brain counted
    probe --prefix P ADDR PORT S a new connection to the line echo every 0.2 s (bounded like
                                 arpwatch); JSON of the outages seen
    kernel NS                    the owned kernel state of namespace NS, as JSON
    serve --prefix P NAME PORT   HTTP on :PORT in namespace P-NAME answering NAME, until SIGTERM
                                 (at most an hour): a listener a test can stop and start again

Site (LVS-NAT, as in the LVS HOWTO):

    client 203.0.113.2 --- 203.0.113.1 [P-dir] br0 198.51.100.1 --- P-rs1 .11, P-rs2 .12, ...

Each real server answers HTTP on :80 with its name and echoes lines on :7000 prefixed with its
name. Addresses only from 203.0.113.0/24 and 198.51.100.0/24; loops bounded.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _run_site(names: list[str], wire: Callable[[ExitStack], None]) -> int:
    """Create the namespaces, let `wire` connect them and start servers (on the stack),
    print READY, serve until SIGTERM (at most an hour), then delete the namespaces."""
    made: list[str] = []
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for n in names:
            _ip("netns", "add", n)
            made.append(n)
            _ip("-n", n, "link", "set", "lo", "up")
        with ExitStack() as stack:
            wire(stack)
            print("READY", flush=True)
            deadline = time.monotonic() + 3600  # a lab outliving its test is a bug
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        for n in reversed(made):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)
    return 0


def up(prefix: str, backends: int) -> int:
    from tests.vm.lvslab import line_echo, who_http
    from tests.vm.netlab import Netns

    c, d = f"{prefix}-client", f"{prefix}-dir"
    rs = [f"{prefix}-rs{i}" for i in range(1, backends + 1)]

    def wire(stack: ExitStack) -> None:
        _ip("-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "front", "netns", d)
        _ip("-n", c, "addr", "add", "203.0.113.2/24", "dev", "eth0")
        _ip("-n", c, "link", "set", "eth0", "up")
        _ip("-n", c, "route", "add", "default", "via", "203.0.113.1")
        _ip("-n", d, "addr", "add", "203.0.113.1/24", "dev", "front")
        _ip("-n", d, "link", "set", "front", "up")
        _director_bridge(d)
        for i, r in enumerate(rs, start=1):
            _real_server(d, f"to-rs{i}", r, f"198.51.100.{10 + i}")
            stack.enter_context(who_http(Netns(r), 80, f"rs{i}"))
            stack.enter_context(line_echo(Netns(r), 7000, f"rs{i}"))

    return _run_site([c, d, *rs], wire)


def _director_bridge(director: str) -> None:
    _ip("-n", director, "link", "add", "br0", "type", "bridge")
    _ip("-n", director, "addr", "add", "198.51.100.1/24", "dev", "br0")
    _ip("-n", director, "link", "set", "br0", "up")


def _real_server(director: str, port: str, ns: str, address: str) -> None:
    """A real server on the director's bridge, routing back through the director (NAT)."""
    _ip("-n", director, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("-n", director, "link", "set", port, "master", "br0", "up")
    _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "route", "add", "default", "via", "198.51.100.1")


def demo_site() -> int:
    r"""The nodes of examples/nodes.yaml as namespaces, wired for examples/nat-wrr-portmap:

        client 192.0.2.100 --- 192.0.2.1 [director-a] br0 198.51.100.1 --- web-nat-1 .11:8080
                                                                      \-- web-nat-2 .12:8080
        director-b, real-1, real-2, real-3: namespaces of their own (their agents program
        them: VIPs, lo VIPs, ARP sysctls, tunnel devices), not wired for traffic.
    """
    from tests.vm.lvslab import who_http
    from tests.vm.netlab import Netns

    def wire(stack: ExitStack) -> None:
        _ip("-n", "client", "link", "add", "eth0", "type", "veth", "peer", "name", "front",
            "netns", "director-a")
        _ip("-n", "client", "addr", "add", "192.0.2.100/24", "dev", "eth0")
        _ip("-n", "client", "link", "set", "eth0", "up")
        _ip("-n", "client", "route", "add", "default", "via", "192.0.2.1")
        _ip("-n", "director-a", "addr", "add", "192.0.2.1/24", "dev", "front")
        _ip("-n", "director-a", "link", "set", "front", "up")
        _ip("-n", "director-a", "-6", "route", "add", "default", "dev", "front")  # web6's VIP
        _director_bridge("director-a")
        # A device to route VIPs to, with an address of its own: removing a device's last
        # IPv4 address (a VIP) makes the kernel flush the routes through it.
        for i, n in enumerate(("director-b", "real-1", "real-2", "real-3"), start=2):
            _ip("-n", n, "link", "add", "eth0", "type", "dummy")
            _ip("-n", n, "addr", "add", f"203.0.113.{i}/24", "dev", "eth0")
            _ip("-n", n, "link", "set", "eth0", "up")
            _ip("-n", n, "route", "add", "default", "dev", "eth0")
            _ip("-n", n, "-6", "route", "add", "default", "dev", "eth0")
        for i, n in ((11, "web-nat-1"), (12, "web-nat-2")):
            _real_server("director-a", f"to-{n}", n, f"198.51.100.{i}")
            stack.enter_context(who_http(Netns(n), 8080, n))

    return _run_site(["client", "director-a", "director-b", "real-1", "real-2", "real-3",
                      "web-nat-1", "web-nat-2"], wire)


def _client_socket(prefix: str, addr: str, port: int, timeout: float) -> socket.socket:
    from lvs_operator.kernel.netns import entered  # light: tests.vm.netlab imports pytest

    with entered(f"{prefix}-client" if prefix else "client"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((addr, port))
    return sock


def get(prefix: str, addr: str, port: int, count: int, *, verbose: bool = False) -> int:
    answers: list[str] = []
    for _ in range(min(count, 1000)):
        try:
            sock = _client_socket(prefix, addr, port, 3.0)
            with sock:
                sock.sendall(f"GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n".encode())
                data = b""
                while len(data) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            body = data.split(b"\r\n\r\n", 1)[-1].decode()
            answers.append(body.split()[0] if body else "(empty)")
        except OSError as exc:
            answers.append(f"error:{exc.__class__.__name__}")
        if verbose:
            print(f"  request {len(answers):2d}: {addr}:{port} answered by {answers[-1]}",
                  flush=True)
    print(json.dumps({"answers": answers}))
    return 0


def hold(prefix: str, addr: str, port: int, seconds: float, timeout: float = 5.0) -> int:
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    ok = failed = 0
    servers: set[str] = set()
    sock = _client_socket(prefix, addr, port, timeout)
    file = sock.makefile("rwb")
    print("CONNECTED", flush=True)
    deadline = time.monotonic() + seconds
    n = 0
    while not stopping and time.monotonic() < deadline:
        n += 1
        try:
            file.write(f"ping-{n}\n".encode())
            file.flush()
            line = file.readline().decode().strip()
            server, echoed = line.split(" ", 1)
            if echoed != f"ping-{n}":
                raise ValueError(line)
            servers.add(server)
            ok += 1
        except (OSError, ValueError) as exc:
            failed += 1
            print(f"exchange {n} failed: {exc!r}", flush=True)
            if failed > 3:
                break
        time.sleep(0.5)
    sock.close()
    print(f"HOLD ok={ok} failed={failed} servers={','.join(sorted(servers))}", flush=True)
    return 0 if failed == 0 and ok > 0 and len(servers) == 1 else 1


def ha_up(prefix: str) -> int:
    r"""Two LVS-DR directors on one Ethernet segment (a bridge in P-lan), for director HA:

        P-client .2 --+-- P-a .3 (director, eth0)   +-- P-rs1 .11 (VIP .10 on lo)
                      +-- P-b .4 (director, eth0)   +-- P-rs2 .12 (VIP .10 on lo)

    in 203.0.113.0/24. The real servers carry the VIP on lo with arp_ignore=1 and
    arp_announce=2 (set here, not by an agent: the test is about the directors) and answer
    HTTP on :80 and line echo on :7000 with their name. The directors hold nothing until
    their agents program them. Cut a director's link with `ip -n P-lan link set p-a down`.
    """
    from tests.vm.lvslab import line_echo, who_http
    from tests.vm.netlab import Netns

    lan = f"{prefix}-lan"
    hosts = {"client": 2, "a": 3, "b": 4, "rs1": 11, "rs2": 12}

    def wire(stack: ExitStack) -> None:
        _ip("-n", lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan, "link", "set", "br0", "up")
        for name, host in hosts.items():
            ns = f"{prefix}-{name}"
            _ip("-n", lan, "link", "add", f"p-{name}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", lan, "link", "set", f"p-{name}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"203.0.113.{host}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for name in ("rs1", "rs2"):
            ns = f"{prefix}-{name}"
            for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
                for dev in ("all", "eth0"):
                    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                                    f"net.ipv4.conf.{dev}.{key}={value}"], check=True,
                                   timeout=30)
            _ip("-n", ns, "addr", "add", "203.0.113.10/32", "dev", "lo")
            stack.enter_context(who_http(Netns(ns), 80, name))
            stack.enter_context(line_echo(Netns(ns), 7000, name))

    return _run_site([lan, *(f"{prefix}-{n}" for n in hosts)], wire)


def _until_sigterm(seconds: float) -> Callable[[], bool]:
    """A predicate that turns false at SIGTERM or after `seconds` (at most an hour)."""
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + min(seconds, 3600)
    return lambda: not stopping and time.monotonic() < deadline


def arpwatch(prefix: str, addr: str, seconds: float) -> int:
    """Who answers ARP for `addr` on the client's segment, every 0.2 s: the MACs in order of
    appearance, when each answered, and how many probes got two or more answers."""
    from tests.vm.arpwatch import arp_responders

    going = _until_sigterm(seconds)
    t0 = time.monotonic()
    probes = split = silent = 0
    spans: list[dict[str, Any]] = []  # runs of probes answered by the same set of MACs
    print("WATCHING", flush=True)
    while going():
        began = time.monotonic()
        macs = sorted(arp_responders(f"{prefix}-client", "eth0", addr, timeout=0.1))
        now = round(time.monotonic() - t0, 2)
        probes += 1
        split += len(macs) > 1
        silent += not macs
        if not spans or spans[-1]["macs"] != macs:
            spans.append({"macs": macs, "from": now, "to": now})
        else:
            spans[-1]["to"] = now
        time.sleep(max(0.0, 0.2 - (time.monotonic() - began)))  # the guest has one CPU
    print(json.dumps({"probes": probes, "split": split, "silent": silent, "spans": spans}),
          flush=True)
    return 0


def probe(prefix: str, addr: str, port: int, seconds: float) -> int:
    """A new TCP connection to the line echo at `addr`:`port` every 0.2 s (0.5 s timeout),
    one line exchanged: the outages (first failure to the next success, seconds) and who
    answered. The whole process sits in the client's namespace (no switch per request: under
    TCG every bit of Python costs)."""
    from lvs_operator.kernel.netns import entered

    going = _until_sigterm(seconds)
    t0 = time.monotonic()
    ok = failed = 0
    outages: list[list[float]] = []
    failing_since: float | None = None
    servers: set[str] = set()
    with entered(f"{prefix}-client"):
        print("PROBING", flush=True)
        while going():
            started = time.monotonic()
            try:
                with socket.create_connection((addr, port), timeout=0.5) as sock:
                    sock.sendall(b"probe\n")
                    line = sock.makefile("rb").readline().decode().strip()
                if not line.endswith(" probe"):
                    raise OSError(f"unexpected answer {line!r}")
                servers.add(line.split()[0])
                ok += 1
                if failing_since is not None:
                    outages.append([round(failing_since - t0, 2), round(started - t0, 2)])
                    failing_since = None
            except OSError:
                failed += 1
                if failing_since is None:
                    failing_since = started
            time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
    print(json.dumps({"ok": ok, "failed": failed, "outages": outages,
                      "failing_at_end": failing_since is not None,
                      "servers": sorted(servers)}), flush=True)
    return 0


def serve(prefix: str, name: str, port: int) -> int:
    """One real server's HTTP listener on its own (the site's run inside `up`): killing this
    process stops it, so connections to it are refused, as when a daemon dies. Answers like
    `up`'s servers ("NAME CLIENT"); imports little, since every import costs under TCG."""
    import http.server
    import threading

    from lvs_operator.kernel.netns import entered

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

    going = _until_sigterm(3600)
    with entered(f"{prefix}-{name}"):
        server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    print("SERVING", flush=True)
    try:
        while going():
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()
    return 0


def kernel(ns: str) -> int:
    def run(*argv: str) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=60)
        return done.stdout if done.returncode == 0 else ""

    state = {
        "ipvs": [line for line in run("ipvsadm", "-Sn").splitlines() if line.strip()],
        "addresses": run("ip", "-o", "addr", "show").splitlines(),
        "ipsets": [s for s in run("ipset", "list", "-n").split() if s.startswith("lvs-")],
        "chains": [line for line in run("iptables-save").splitlines() if "LVS-" in line],
    }
    print(json.dumps(state))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="guestlab")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("up")
    a.add_argument("--prefix", required=True)
    a.add_argument("--backends", type=int, default=3)
    sub.add_parser("demo")
    for name in ("get", "hold", "probe"):
        s = sub.add_parser(name)
        s.add_argument("--prefix", default="", help="the site's prefix (none: the demo site)")
        s.add_argument("--verbose", action="store_true")
        s.add_argument("--timeout", type=float, default=5.0, help="hold: seconds per exchange")
        s.add_argument("addr")
        s.add_argument("port", type=int)
        s.add_argument("n", type=float)
    h = sub.add_parser("ha-up")
    h.add_argument("--prefix", required=True)
    w = sub.add_parser("arpwatch")
    w.add_argument("--prefix", required=True)
    w.add_argument("addr")
    w.add_argument("seconds", type=float)
    k = sub.add_parser("kernel")
    k.add_argument("ns")
    v = sub.add_parser("serve")
    v.add_argument("--prefix", required=True)
    v.add_argument("name")
    v.add_argument("port", type=int)
    args = p.parse_args(argv)
    if args.cmd == "up":
        return up(args.prefix, args.backends)
    if args.cmd == "demo":
        return demo_site()
    if args.cmd == "get":
        return get(args.prefix, args.addr, args.port, int(args.n), verbose=args.verbose)
    if args.cmd == "hold":
        return hold(args.prefix, args.addr, args.port, args.n, args.timeout)
    if args.cmd == "probe":
        return probe(args.prefix, args.addr, args.port, args.n)
    if args.cmd == "ha-up":
        return ha_up(args.prefix)
    if args.cmd == "arpwatch":
        return arpwatch(args.prefix, args.addr, args.seconds)
    if args.cmd == "serve":
        return serve(args.prefix, args.name, args.port)
    return kernel(args.ns)


if __name__ == "__main__":
    sys.exit(main())
