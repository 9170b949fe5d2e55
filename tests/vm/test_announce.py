"""VIP takeover announcements on a real kernel, checked from the client's side.

    client 192.0.2.100 --- [switch: br0] --- director A 192.0.2.2, director B 192.0.2.3
    VIP 192.0.2.10 (IPv6: 2001:db8::100, ::2, ::3, VIP 2001:db8::10)

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        -p no:hypothesispytest tests/vm/test_announce.py

Nothing here needs IPVS, so the same file also runs on a host kernel as root
(LVS_IN_VM=1 .venv/bin/python -m pytest -q tests/vm/test_announce.py).

What the client's kernel does with the announcements (net/ipv4/arp.c arp_process,
net/ipv6/ndisc.c ndisc_recv_na), which these tests pin down:
- A client that already has a neighbour entry for the VIP (it talked to the old director)
  takes the new MAC from a gratuitous ARP at once, even within `locktime`, with
  net.ipv4.conf.*.arp_accept=0 (the default): no client configuration is needed for the
  failover case. The entry goes to STALE with the new MAC.
- A gratuitous *reply* must carry target MAC = sender MAC (arp_is_garp); one with a zero
  target MAC is an ordinary reply, ignored for `locktime` (1 s) after the entry's last update.
- A client WITHOUT an entry ignores a gratuitous ARP unless arp_accept=1 (it then creates a
  STALE entry); with 0 it resolves the VIP itself when it next needs it.
- IPv6: an unsolicited NA with the override flag replaces the MAC of an existing entry.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lvs_operator.kernel.announce import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    arp_frame,
    garp_frame,
    parse_mac,
)
from lvs_operator.kernel.errors import InvalidArgument, NotFound
from lvs_operator.kernel.netns import entered
from lvs_operator.kernel.real_announce import PacketAnnouncer
from tests.vm.arpwatch import GarpListener, arp_responders
from tests.vm.netlab import Netns, veth

MakeNetns = Callable[[str], Netns]
VIP = "192.0.2.10"
VIP6 = "2001:db8::10"
IFA_F_NODAD = 0x02  # IPv6 addresses usable at once (no duplicate address detection wait)
HOSTS = {"client": 100, "dira": 2, "dirb": 3}


def two_directors(make_netns: MakeNetns, *, ipv6: bool = False) -> dict[str, Netns]:
    """A client and directors A and B on one Ethernet segment (a bridge in a "switch"
    namespace), as tests/vm/lvslab.py segment() builds it."""
    switch = make_netns("switch")
    switch.ipr.link("add", ifname="br0", kind="bridge")
    switch.up("br0")
    lab = {"switch": switch}
    for name, host in HOSTS.items():
        ns = make_netns(name)
        port = f"p-{name}"
        veth(ns, "eth0", switch, port)
        switch.ipr.link("set", index=switch.link_index(port), master=switch.link_index("br0"))
        ns.addr("eth0", f"192.0.2.{host}/24")
        if ipv6:
            add6(ns, f"2001:db8::{host}", 64)
        lab[name] = ns
    return lab


def add6(ns: Netns, address: str, prefix: int) -> None:
    ns.ipr.addr("add", index=ns.link_index("eth0"), address=address, prefixlen=prefix,
                flags=IFA_F_NODAD)


def mac_of(ns: Netns, ifname: str = "eth0") -> str:
    (link,) = ns.ipr.link("get", index=ns.link_index(ifname))
    return str(link.get("IFLA_ADDRESS"))


def neighbour(ns: Netns, ip: str) -> tuple[str | None, int] | None:
    """(MAC, NUD state) of the client's kernel neighbour entry for `ip`, None if none."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for msg in ns.ipr.neigh("dump", family=family):
        if msg.get("NDA_DST") == ip and msg["ifindex"] == ns.link_index("eth0"):
            return msg.get("NDA_LLADDR"), int(msg["state"])
    return None


def wait_neighbour_mac(ns: Netns, ip: str, mac: str, timeout: float = 3.0) -> str | None:
    """Poll (bounded) until the entry for `ip` shows `mac`; returns the MAC seen last."""
    deadline = time.monotonic() + timeout
    seen = None
    for _ in range(300):
        entry = neighbour(ns, ip)
        seen = entry[0] if entry else None
        if seen == mac or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return seen


def talk_to(ns: Netns, ip: str) -> None:
    """One UDP datagram to the discard port: makes the client's kernel resolve `ip`."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with ns.entered(), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"who", (ip, 9))


@contextlib.contextmanager
def arp_accept(ns: Netns, value: int) -> Iterator[None]:
    for scope in ("all", "eth0"):
        ns.sysctl(f"net.ipv4.conf.{scope}.arp_accept", value)
    yield


@pytest.fixture
def lab(make_netns: MakeNetns) -> dict[str, Any]:
    lab = two_directors(make_netns)
    return {**lab, "mac": {name: mac_of(lab[name]) for name in HOSTS}}


def test_failover_moves_the_client_to_the_new_director(lab: dict[str, Any]) -> None:
    client, a, b, mac = lab["client"], lab["dira"], lab["dirb"], lab["mac"]
    a.addr("eth0", f"{VIP}/32")
    assert arp_responders(client.name, "eth0", VIP) == {mac["dira"]}

    # The client talks to A: its kernel has an entry VIP -> A (what a real client has).
    with arp_accept(client, 0):  # the default, said explicitly: not needed for this case
        talk_to(client, VIP)
        assert wait_neighbour_mac(client, VIP, mac["dira"]) == mac["dira"]

        # Takeover: A lets go, B takes the address; until B announces, the client is stale.
        a.ipr.addr("del", index=a.link_index("eth0"), address=VIP, prefixlen=32)
        b.addr("eth0", f"{VIP}/32")
        assert neighbour(client, VIP) is not None
        assert neighbour(client, VIP)[0] == mac["dira"]  # type: ignore[index]

        with GarpListener(client.name, "eth0") as garps:
            PacketAnnouncer(b.name).announce("eth0", VIP, count=3, interval=0.05)
            assert garps.wait_for(VIP, mac["dirb"])
            garps.poll(0.2)  # the rest of them
        seen = [p for p in garps.seen if p.sender_mac == mac["dirb"]]
        # every round is a request (zero target MAC) and a reply (target MAC = sender MAC)
        assert {p.op for p in seen} == {ARPOP_REQUEST, ARPOP_REPLY}
        assert len(seen) == 6, seen
        assert all(p.destination == "ff:ff:ff:ff:ff:ff" for p in seen)
        assert all(p.target_mac == mac["dirb"] for p in seen if p.op == ARPOP_REPLY)
        # right after the gratuitous ARP, without the client asking again
        assert wait_neighbour_mac(client, VIP, mac["dirb"], timeout=1.0) == mac["dirb"]

    assert arp_responders(client.name, "eth0", VIP) == {mac["dirb"]}


def test_gratuitous_arp_creates_no_entry_unless_arp_accept(lab: dict[str, Any]) -> None:
    client, b, mac = lab["client"], lab["dirb"], lab["mac"]
    b.addr("eth0", f"{VIP}/32")
    announcer = PacketAnnouncer(b.name)
    with arp_accept(client, 0):
        with GarpListener(client.name, "eth0") as garps:
            announcer.announce("eth0", VIP, count=1)
            assert garps.wait_for(VIP, mac["dirb"])  # it arrived ...
        assert neighbour(client, VIP) is None  # ... and was ignored
    with arp_accept(client, 1):
        announcer.announce("eth0", VIP, count=1)
        assert wait_neighbour_mac(client, VIP, mac["dirb"], timeout=1.0) == mac["dirb"]


def send_raw(ns: Netns, frame: bytes) -> None:
    with entered(ns.name), socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind(("eth0", 0))
        s.send(frame)


@pytest.mark.parametrize("gratuitous", [True, False], ids=["target-mac-is-sender", "zero"])
def test_only_a_reply_naming_itself_as_target_beats_locktime(
    lab: dict[str, Any], gratuitous: bool
) -> None:
    client, a, b, mac = lab["client"], lab["dira"], lab["dirb"], lab["mac"]
    # locktime is in 1/100 s (USER_HZ), 100 by default; 10 s keeps this exact under TCG
    client.sysctl("net.ipv4.neigh.eth0.locktime", 1000)
    a.addr("eth0", f"{VIP}/32")
    talk_to(client, VIP)
    assert wait_neighbour_mac(client, VIP, mac["dira"]) == mac["dira"]  # just updated
    b_mac = parse_mac(mac["dirb"])
    if gratuitous:
        frame = garp_frame(b_mac, VIP, ARPOP_REPLY)
    else:
        frame = arp_frame(ARPOP_REPLY, b_mac, VIP, bytes(6), VIP)
    with GarpListener(client.name, "eth0") as arrived:
        send_raw(b, frame)
        assert arrived.wait_for(VIP, mac["dirb"])
    if gratuitous:
        assert wait_neighbour_mac(client, VIP, mac["dirb"], timeout=1.0) == mac["dirb"]
    else:  # give it every chance to (wrongly) switch; locktime is still running
        time.sleep(0.3)
        assert neighbour(client, VIP)[0] == mac["dira"]  # type: ignore[index]


def test_split_brain_shows_two_macs(lab: dict[str, Any]) -> None:
    client, a, b, mac = lab["client"], lab["dira"], lab["dirb"], lab["mac"]
    a.addr("eth0", f"{VIP}/32")
    b.addr("eth0", f"{VIP}/32")
    assert arp_responders(client.name, "eth0", VIP) == {mac["dira"], mac["dirb"]}
    assert arp_responders(client.name, "eth0", "192.0.2.77") == set()  # nobody has it


def test_announcer_errors_are_the_projects(lab: dict[str, Any]) -> None:
    b = lab["dirb"]
    announcer = PacketAnnouncer(b.name)
    with pytest.raises(NotFound, match="nosuch0"):
        announcer.announce("nosuch0", VIP)
    with pytest.raises(InvalidArgument, match="not an Ethernet device"):
        announcer.announce("lo", VIP)
    with pytest.raises(InvalidArgument):
        announcer.announce("eth0", "192.0.2.300")
    with pytest.raises(InvalidArgument):
        announcer.announce("eth0", VIP, count=0)
    with pytest.raises(NotFound, match="network namespace"):
        PacketAnnouncer("lvs-no-such-netns").announce("eth0", VIP)


def test_unsolicited_na_moves_the_ipv6_neighbour(make_netns: MakeNetns) -> None:
    lab = two_directors(make_netns, ipv6=True)
    client, a, b = lab["client"], lab["dira"], lab["dirb"]
    mac_a, mac_b = mac_of(a), mac_of(b)
    add6(a, VIP6, 128)
    talk_to(client, VIP6)
    assert wait_neighbour_mac(client, VIP6, mac_a) == mac_a

    a.ipr.addr("del", index=a.link_index("eth0"), address=VIP6, prefixlen=128)
    add6(b, VIP6, 128)
    assert neighbour(client, VIP6)[0] == mac_a  # type: ignore[index]
    PacketAnnouncer(b.name).announce("eth0", VIP6, count=2, interval=0.05)
    assert wait_neighbour_mac(client, VIP6, mac_b, timeout=1.0) == mac_b
