"""lvsctl list/connections/zero/save/apply against the real kernel and the real ipvsadm 1.31,
with real HTTP traffic through a NAT service (Debian 6.1 in the qemu guest).

One lab for the module (TCG makes every namespace and process start count):

    client 203.0.113.2 --- [director] VIP 203.0.113.10:80 rr, NAT --- rs1 198.51.100.11:8080
                                                                 \\-- rs2 198.51.100.12:8080

programmed by the real agent code in-process; the lvsctl functions run in-process too, and one
test runs the installed `lvsctl` command line. Every client loop is bounded in count and time.

    python -m tests.harness.vm run --timeout 900 -- .venv/bin/python -m pytest -q \\
        -p no:cacheprovider -p no:hypothesispytest tests/vm/test_lvsctl_ops.py
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from lvs_operator.cli import ops
from lvs_operator.compiler.plan import ServiceKey
from lvs_operator.compiler.render import ipvsadm_save
from lvs_operator.kernel.errors import NotFound
from lvs_operator.kernel.netns import entered
from lvs_operator.kernel.real_ipvs import NetlinkIPVS
from tests.contract.ipvs_contract import add_ops, mixed_table
from tests.unit.builders import rs, vs
from tests.vm.lvslab import get, program, routed, who_http
from tests.vm.netlab import Netns

VIP = "203.0.113.10"
SERVICE = ServiceKey(4, "tcp", VIP, 80, 0)
REQUESTS = 6
LVSCTL = str(Path(sys.executable).with_name("lvsctl"))
_counter = itertools.count()


# --------------------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def make_netns() -> Iterator[Callable[[str], Netns]]:
    """Module-scoped twin of conftest's make_netns: namespaces live as long as the lab."""
    from pyroute2 import netns

    made: list[Netns] = []
    prefix = f"lvso{os.getpid() % 10000}x{next(_counter)}"

    def make(role: str) -> Netns:
        ns = Netns(f"{prefix}-{role}")
        netns.create(ns.name)
        made.append(ns)
        ns.up("lo")
        return ns

    yield make
    for ns in reversed(made):
        ns.close()
        with contextlib.suppress(OSError):
            netns.remove(ns.name)


@pytest.fixture(scope="module")
def lab(
    make_netns: Callable[[str], Netns], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Netns]]:
    lab = routed(make_netns)
    docs = [
        vs("web", VIP, ports=[{"port": 80, "targetPort": 8080}], scheduler={"name": "rr"},
           forwarding={"method": "NAT"}),
        rs("rs1", "198.51.100.11", app="web", nodeName="rs1"),
        rs("rs2", "198.51.100.12", app="web", nodeName="rs2"),
    ]  # fmt: skip
    program(lab, docs, tmp_path_factory.mktemp("state"), nodes=("director",))
    with ExitStack() as servers:
        for name in ("rs1", "rs2"):
            servers.enter_context(who_http(lab[name], 8080, name))
        yield lab


@pytest.fixture(scope="module")
def table(lab: dict[str, Netns]) -> Iterator[NetlinkIPVS]:
    with NetlinkIPVS(lab["director"].name) as t:
        yield t


@pytest.fixture(scope="module")
def routable(make_netns: Callable[[str], Netns]) -> Callable[[str], Netns]:
    """Namespaces for table-only tests: a dummy device with default routes, so IPv4
    destinations are unicast (nothing is sent)."""
    subprocess.run(["modprobe", "ip_vs_pe_sip"], check=False, capture_output=True, timeout=60)

    def make(role: str) -> Netns:
        ns = make_netns(role)
        ns.ipr.link("add", ifname="dummy0", kind="dummy")
        ns.up("dummy0")
        ns.addr("dummy0", "198.51.100.1/24")
        ns.ipr.addr("add", index=ns.link_index("dummy0"), address="2001:db8:ffff::1",
                    prefixlen=64, flags=0x02)  # fmt: skip  # IFA_F_NODAD
        ns.ipr.route("add", dst="0.0.0.0/0", oif=ns.link_index("dummy0"))
        ns.ipr.route("add", dst="::/0", oif=ns.link_index("dummy0"), family=socket.AF_INET6)
        return ns

    return make


# --------------------------------------------------------------------------- helpers


def _ipvsadm(ns: Netns, *args: str) -> str:
    return ns.run(["ipvsadm", *args]).stdout


def _still(ns: Netns, seconds: float = 30) -> str:
    """`ipvsadm -Ln --stats --exact` once two reads 2.2 s apart agree: the kernel folds its
    per-CPU counters into what it reports every 2 s (estimation_timer), so the numbers lag
    the packets by up to 2 s. Bounded."""
    deadline = time.monotonic() + seconds
    last = _ipvsadm(ns, "-L", "-n", "--stats", "--exact")
    while True:
        time.sleep(2.2)
        now = _ipvsadm(ns, "-L", "-n", "--stats", "--exact")
        if now == last:
            return now
        assert time.monotonic() < deadline, f"counters never stood still:\n{now}"
        last = now


def _service_numbers(text: str) -> list[int]:
    """The five numbers of the VIP's service line of a --stats/--rate --exact listing."""
    (line,) = [x for x in text.splitlines() if x.startswith(f"TCP  {VIP}:80 ")]
    return [int(v) for v in line.split()[2:]]


def _one_get(ns_name: str, timeout: float = 5.0) -> None:
    """One HTTP GET on a fresh connection from inside a namespace, from any thread (the
    thread's own setns, never pyroute2's process-wide namespace stack)."""
    with entered(ns_name):
        sock = socket.create_connection((VIP, 80), timeout=timeout)
    with sock:
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {VIP}\r\n\r\n".encode())
        for _ in range(100):  # bounded: the answer is a few hundred bytes
            if not sock.recv(4096):
                break


@contextlib.contextmanager
def _traffic(client: Netns, limit: int = 400, seconds: float = 60) -> Iterator[list[int]]:
    """GETs in a background thread until the body ends (at most `limit` or `seconds`)."""
    stop = threading.Event()
    done: list[int] = []

    def load() -> None:
        deadline = time.monotonic() + seconds
        for _ in range(limit):
            if stop.is_set() or time.monotonic() > deadline:
                return
            with contextlib.suppress(OSError):
                _one_get(client.name)
                done.append(1)
            time.sleep(0.05)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=30)


def _show(title: str, text: str) -> None:
    """Shown with `-rP`, and kept in $LVS_VM_OUTDIR when the harness gives one."""
    print(f"--- {title}\n{text}", end="")
    outdir = os.environ.get("LVS_VM_OUTDIR")
    if outdir:
        with open(Path(outdir) / "test_lvsctl_ops.txt", "a") as handle:
            handle.write(f"--- {title}\n{text}")


# --------------------------------------------------------------------------- list


def test_list_stats_prints_what_ipvsadm_prints(lab: dict[str, Netns], table: NetlinkIPVS) -> None:
    director = lab["director"]
    answers = sorted(get(lab["client"], VIP, 80)[0] for _ in range(REQUESTS))
    assert answers == ["rs1"] * 3 + ["rs2"] * 3
    _still(director)
    # the same moment: nothing moves any more, both read the kernel back to back
    ours = ops.list_table(table, "stats", exact=True)
    theirs = _ipvsadm(director, "-L", "-n", "--stats", "--exact")
    scaled, scaled_theirs = ops.list_table(table, "stats"), _ipvsadm(director, "-Ln", "--stats")
    plain, plain_theirs = ops.list_table(table), _ipvsadm(director, "-Ln")
    command_line = subprocess.run(
        [LVSCTL, "list", "-n", "--stats", "--exact", "--netns", director.name],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    _show("lvsctl list --stats --exact", ours)
    _show("ipvsadm -L -n --stats --exact", theirs)
    assert ours == theirs
    assert command_line == theirs
    assert scaled == scaled_theirs
    assert plain == plain_theirs
    conns, inpkts, outpkts, inbytes, outbytes = _service_numbers(ours)
    assert conns == REQUESTS and min(inpkts, outpkts, inbytes, outbytes) > 0


def test_list_rate_has_ipvsadm_s_layout_during_traffic(
    lab: dict[str, Netns], table: NetlinkIPVS
) -> None:
    director = lab["director"]
    with _traffic(lab["client"]) as done:
        deadline = time.monotonic() + 40
        while True:  # the estimator averages over 2 s ticks: wait for the first rates
            theirs = _ipvsadm(director, "-L", "-n", "--rate", "--exact")
            _cps, inpps, _outpps, inbps, _outbps = _service_numbers(theirs)
            if min(inpps, inbps) > 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        ours = ops.list_table(table, "rate", exact=True)
        theirs = _ipvsadm(director, "-L", "-n", "--rate", "--exact")
        scaled, scaled_theirs = ops.list_table(table, "rate"), _ipvsadm(director, "-Ln", "--rate")
    _show("lvsctl list --rate --exact", ours)
    _show("ipvsadm -L -n --rate --exact", theirs)
    assert done, "no request got through"
    for a, b in ((ours, theirs), (scaled, scaled_theirs)):
        # the values move between the two reads; the layout does not
        ours_lines, their_lines = a.splitlines(), b.splitlines()
        assert ours_lines[:3] == their_lines[:3]  # version, title
        assert len(ours_lines) == len(their_lines) == 6
        for x, y in zip(ours_lines[3:], their_lines[3:], strict=True):
            assert (x[:33], len(x), len(x.split())) == (y[:33], len(y), len(y.split())), (x, y)
    for text in (ours, theirs):
        # CPS shows 0 below half a connection per second (a busy CI host under TCG can get
        # there); the packet and byte rates of the same traffic cannot
        _cps, inpps, outpps, inbps, outbps = _service_numbers(text)
        assert min(inpps, outpps, inbps, outbps) > 0, text


# --------------------------------------------------------------------------- connections


def _entries(text: str) -> dict[tuple[str, ...], int]:
    """`-Lnc` lines by everything but the expire column -> seconds left."""
    out = {}
    for line in text.splitlines()[2:]:
        fields = line.split()
        minutes, seconds = fields[1].split(":")
        out[(fields[0], *fields[2:])] = int(minutes) * 60 + int(seconds)
    return out


def test_connections_lists_a_held_connection_like_ipvsadm(
    lab: dict[str, Netns], table: NetlinkIPVS
) -> None:
    director = lab["director"]
    with lab["client"].entered():
        held = socket.create_connection((VIP, 80), timeout=5)
    with held:
        port = held.getsockname()[1]
        for _attempt in range(3):  # an entry may expire or change state between the reads
            ours = ops.format_connections(table.connections())
            theirs = _ipvsadm(director, "-L", "-n", "-c")
            mine, their = _entries(ours), _entries(theirs)
            if mine.keys() == their.keys():
                break
            time.sleep(1)
        _show("lvsctl connections", ours)
        _show("ipvsadm -L -n -c", theirs)
        assert ours.splitlines()[:2] == theirs.splitlines()[:2]
        assert mine.keys() == their.keys(), mine.keys() ^ their.keys()
        for key, left in mine.items():
            assert abs(left - their[key]) <= 3, (key, left, their[key])
        # the held connection, with its line exactly as ipvsadm prints it but the expiry
        (key,) = [k for k in mine if k[2] == f"203.0.113.2:{port}"]
        assert key[0:2] == ("TCP", "ESTABLISHED") and key[3] == f"{VIP}:80"
        assert key[4] in ("198.51.100.11:8080", "198.51.100.12:8080")
        assert 14 * 60 <= mine[key] <= 15 * 60  # the TCP established timeout: 15 min
        (line,) = [x for x in ours.splitlines() if f"203.0.113.2:{port} " in x]
        (their_line,) = [x for x in theirs.splitlines() if f"203.0.113.2:{port} " in x]
        assert line[:4] + line[10:] == their_line[:4] + their_line[10:]


# --------------------------------------------------------------------------- zero


def test_zero_resets_what_ipvsadm_shows(lab: dict[str, Netns], table: NetlinkIPVS) -> None:
    director = lab["director"]
    before = _still(director)  # nothing in flight: zero takes every packet with it
    assert _service_numbers(before)[0] > 0
    table.zero(SERVICE)
    after = _still(director)  # and nothing comes back at the next estimator tick
    _show("ipvsadm -L -n --stats --exact after lvsctl zero", after)
    numbers = [line.split()[-5:] for line in after.splitlines()[3:]]
    assert len(numbers) == 3 and {n for row in numbers for n in row} == {"0"}
    assert set(_service_numbers(_ipvsadm(director, "-L", "-n", "--rate", "--exact"))) == {0}
    assert ops.list_table(table, "stats", exact=True) == after
    table.zero()  # everything, on a zeroed table: still fine
    with pytest.raises(NotFound):
        table.zero(SERVICE._replace(port=81))


# --------------------------------------------------------------------------- save


def test_save_prints_what_ipvsadm_save_prints(
    lab: dict[str, Netns], table: NetlinkIPVS, routable: Callable[[str], Netns]
) -> None:
    director = lab["director"]
    assert ops.format_save(table.dump()) == director.run(["ipvsadm-save", "-n"]).stdout
    ns = routable("save")
    with NetlinkIPVS(ns.name) as other:
        assert other.apply(add_ops(*mixed_table())) == []
        saved = ops.format_save(other.dump())
        _show("lvsctl save (every kind of service)", saved)
        assert saved == ns.run(["ipvsadm-save", "-n"]).stdout
        assert saved.splitlines() == ipvsadm_save(mixed_table())
        # every listing of every kind of service (flags, masks, engines, one-packet, IPv6,
        # fwmark, tunnels), whole and one service at a time
        for view in ops.VIEWS:
            option = [] if view == "plain" else [f"--{view}"]
            ours = ops.list_table(other, view)
            assert ours == _ipvsadm(ns, "-L", "-n", *option), view
            assert ops.list_table(other, view, exact=True) == _ipvsadm(
                ns, "-L", "-n", "--exact", *option
            )
        _show("lvsctl list --tun-info (every kind of service)", ops.list_table(other, "tun-info"))
        for service, args in (
            (ServiceKey(6, "tcp", "2001:db8::10", 443, 0), ["-t", "[2001:db8::10]:443"]),
            (ServiceKey(6, "", "", 0, 8), ["-f", "8", "-6"]),
            (ServiceKey(4, "udp", "203.0.113.13", 5060, 0), ["-u", "203.0.113.13:5060"]),
        ):
            assert ops.list_table(other, service=service) == _ipvsadm(ns, "-L", "-n", *args)


# --------------------------------------------------------------------------- apply


def test_apply_brings_a_table_to_the_file_minimally(routable: Callable[[str], Netns]) -> None:
    ns = routable("apply")
    rules = "".join(f"{line}\n" for line in ipvsadm_save(mixed_table()))
    with NetlinkIPVS(ns.name) as t:
        first = ops.apply_rules(t, rules)
        assert (first.problems, first.failures) == ([], [])
        assert len(first.changes) == len(rules.splitlines())  # every line was an add
        assert ns.run(["ipvsadm-save", "-n"]).stdout == rules
        again = ops.apply_rules(t, rules)
        assert again == ops.ApplyResult([], [], [])
        # an edited file: one service gets a new scheduler, loses, changes and gains a
        # destination; nothing else is touched
        edited = (
            rules.replace("-A -u 203.0.113.11:53 -s wlc", "-A -u 203.0.113.11:53 -s rr")
            .replace("-a -u 203.0.113.11:53 -r 192.0.2.14:53 -g -w 0\n", "")
            .replace(
                "-a -u 203.0.113.11:53 -r 192.0.2.13:53 -g -w 1\n",
                "-a -u 203.0.113.11:53 -r 192.0.2.13:53 -g -w 5\n"
                "-a -u 203.0.113.11:53 -r 192.0.2.20:53 -g -w 1\n",
            )
        )
        assert edited != rules and edited.count("\n") == rules.count("\n")  # -1 +1 dest
        ipvsadm = ns.run  # a foreign service, not in the file
        ipvsadm(["ipvsadm", "-A", "-t", "198.18.0.1:80", "-s", "rr"])
        dry = ops.apply_rules(t, edited, dry_run=True)
        assert ns.run(["ipvsadm-save", "-n"]).stdout.count("\n") == rules.count("\n") + 1
        changed = ops.apply_rules(t, edited)
        _show("lvsctl apply -f edited.rules", "\n".join(changed.changes) + "\n")
        assert changed == dry
        assert changed.changes == [
            "-E -u 203.0.113.11:53 -s rr -p 600 -M 255.255.255.0",
            "-a -u 203.0.113.11:53 -r 192.0.2.20:53 -g -w 1",
            "-e -u 203.0.113.11:53 -r 192.0.2.13:53 -g -w 5",
            "-d -u 203.0.113.11:53 -r 192.0.2.14:53",
        ]
        saved = ns.run(["ipvsadm-save", "-n"]).stdout
        assert saved == "-A -t 198.18.0.1:80 -s rr\n" + edited  # sorted first by ipvsadm
        pruned = ops.apply_rules(t, edited, prune=True)
        assert pruned.changes == ["-D -t 198.18.0.1:80"]
        assert ns.run(["ipvsadm-save", "-n"]).stdout == edited
