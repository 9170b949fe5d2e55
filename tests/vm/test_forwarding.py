"""Real packets through every forwarding method, programmed by the real agent from manifests.

Each test compiles VirtualService/RealServer manifests, lets the agent apply the director's
plan (and, for DR/TUN, each real server's plan) inside network namespaces of the Debian
guest, then sends a bounded number of requests from a client namespace.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from tests.unit.builders import rs, vs
from tests.vm.lvslab import (
    MakeNetns,
    get,
    program,
    routed,
    segment,
    service_stats,
    who_http,
)

REQUESTS = 6


def _ask(lab: dict, vip: str, server_port: int) -> list[tuple[str, str]]:
    """REQUESTS fresh GETs to vip:80 while rs1 and rs2 serve on `server_port`:
    (who answered, whom it saw) for each."""
    with ExitStack() as servers:
        for name in ("rs1", "rs2"):
            servers.enter_context(who_http(lab[name], server_port, name))
        return [get(lab["client"], vip, 80) for _ in range(REQUESTS)]


def _backends(method: str, addresses: dict[str, str], **spec: object) -> list[dict]:
    return [rs(name, ip, app="web", nodeName=name, **spec) for name, ip in addresses.items()]


def test_nat_maps_the_port_and_replies_return_through_the_director(
        make_netns: MakeNetns, tmp_path: Path):
    lab = routed(make_netns)
    docs = [vs("web", "203.0.113.10", ports=[{"port": 80, "targetPort": 8080}],
               scheduler={"name": "rr"}, forwarding={"method": "NAT"}),
            *_backends("NAT", {"rs1": "198.51.100.11", "rs2": "198.51.100.12"})]
    program(lab, docs, tmp_path, nodes=("director",))
    answers = _ask(lab, "203.0.113.10", 8080)
    assert Counter(server for server, _ in answers) == {"rs1": 3, "rs2": 3}
    assert {seen for _, seen in answers} == {"203.0.113.2"}  # NAT keeps the client address
    stats = service_stats(lab["director"], "-t 203.0.113.10:80", REQUESTS)
    assert stats["inpkts"] > 0 and stats["outpkts"] > 0  # replies came back through IPVS


def test_fullnat_real_servers_see_the_director_and_need_no_route_back(
        make_netns: MakeNetns, tmp_path: Path):
    lab = routed(make_netns, real_servers_route_back=False)
    docs = [vs("web", "203.0.113.10", ports=[{"port": 80, "targetPort": 8080}],
               scheduler={"name": "rr"}, forwarding={"method": "FULLNAT"}),
            *_backends("FULLNAT", {"rs1": "198.51.100.11", "rs2": "198.51.100.12"})]
    program(lab, docs, tmp_path, nodes=("director",))
    assert lab["rs1"].run(["ip", "route", "show", "default"]).stdout == ""
    answers = _ask(lab, "203.0.113.10", 8080)
    assert Counter(server for server, _ in answers) == {"rs1": 3, "rs2": 3}
    assert {seen for _, seen in answers} == {"198.51.100.1"}  # source NAT to the director


def test_dr_real_servers_answer_directly(make_netns: MakeNetns, tmp_path: Path):
    lab = segment(make_netns)
    docs = [vs("web", "192.0.2.10", ports=[{"port": 80}], scheduler={"name": "rr"},
               forwarding={"method": "DR"}),
            *_backends("DR", {"rs1": "192.0.2.11", "rs2": "192.0.2.12"})]
    program(lab, docs, tmp_path)
    for name in ("rs1", "rs2"):  # what the agent did on the real servers
        addrs = lab[name].run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]).stdout
        assert "192.0.2.10/32" in addrs
        assert lab[name].run(["sysctl", "-n", "net.ipv4.conf.all.arp_ignore"]).stdout.strip() == "1"
        assert lab[name].run(["sysctl", "-n", "net.ipv4.conf.all.arp_announce"]).stdout.strip() == "2"
    answers = _ask(lab, "192.0.2.10", 80)
    assert Counter(server for server, _ in answers) == {"rs1": 3, "rs2": 3}
    assert {seen for _, seen in answers} == {"192.0.2.100"}
    stats = service_stats(lab["director"], "-t 192.0.2.10:80", REQUESTS)
    assert stats["inpkts"] > 0 and stats["outpkts"] == 0  # replies bypassed the director
    # Only the director answers ARP for the VIP: the client learned the director's MAC.
    director_mac = lab["director"].run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    neigh = lab["client"].run(["ip", "neigh", "show", "192.0.2.10"]).stdout
    assert director_mac in neigh, neigh


def test_tun_real_servers_decapsulate_and_answer_directly(make_netns: MakeNetns,
                                                           tmp_path: Path):
    lab = segment(make_netns)
    docs = [vs("web", "192.0.2.10", ports=[{"port": 80}], scheduler={"name": "rr"},
               forwarding={"method": "TUN", "tunnel": {"type": "ipip"}}),
            *_backends("TUN", {"rs1": "192.0.2.11", "rs2": "192.0.2.12"})]
    program(lab, docs, tmp_path)
    for name in ("rs1", "rs2"):
        link = lab[name].run(["ip", "-o", "link", "show", "tunl0"]).stdout
        assert "UP" in link.split("<", 1)[1].split(">", 1)[0], link
    answers = _ask(lab, "192.0.2.10", 80)
    assert Counter(server for server, _ in answers) == {"rs1": 3, "rs2": 3}
    assert {seen for _, seen in answers} == {"192.0.2.100"}
    stats = service_stats(lab["director"], "-t 192.0.2.10:80", REQUESTS)
    assert stats["inpkts"] > 0 and stats["outpkts"] == 0
    rx_packets = int(lab["rs1"].run(
        ["cat", "/sys/class/net/tunl0/statistics/rx_packets"]).stdout.strip())
    assert rx_packets > 0  # decapsulation happened on tunl0


def test_fwmark_80_and_443_stick_to_one_server_per_client(make_netns: MakeNetns,
                                                           tmp_path: Path):
    lab = segment(make_netns, clients=2)
    docs = [vs("shop", "192.0.2.10", ports=None, scheduler={"name": "rr"},
               forwarding={"method": "DR"}, persistence={"timeout": 60},
               firewallMark={"mark": 99, "ports": [{"port": 80}, {"port": 443}]}),
            *[rs(n, ip, app="shop", nodeName=n) for n, ip in
              {"rs1": "192.0.2.11", "rs2": "192.0.2.12"}.items()]]
    program(lab, docs, tmp_path)
    with ExitStack() as servers:
        for name in ("rs1", "rs2"):
            for port in (80, 443):
                servers.enter_context(who_http(lab[name], port, name))
        first = {c: [get(lab[c], "192.0.2.10", p)[0] for p in (80, 443, 80, 443)]
                 for c in ("client", "client2")}
    assert len(set(first["client"])) == 1 and len(set(first["client2"])) == 1
    assert first["client"][0] != first["client2"][0]  # rr across the persistence templates
    stats = service_stats(lab["director"], "-f 99", 8)
    assert stats["conns"] == 8
