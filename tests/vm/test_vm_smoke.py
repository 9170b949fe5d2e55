"""Smoke test of the `vm` tier: real TCP traffic through a real IPVS NAT service.

    client (198.51.100.2) --veth-- director (198.51.100.1; VIP 203.0.113.10 on lo)
                                    br0 192.0.2.1 --veth-- rs1 192.0.2.11:8080
                                                  --veth-- rs2 192.0.2.12:8080

The director forwards VIP:80 to both real servers with round robin and masquerading (NAT);
the real servers route back through the director, which rewrites the replies.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable
from contextlib import ExitStack

from tests.vm.netlab import Netns, http_backend, http_get, open_ipvs, veth

VIP = "203.0.113.10"
CLIENT, DIRECTOR_FRONT = "198.51.100.2", "198.51.100.1"
DIRECTOR_BACK = "192.0.2.1"
REAL_SERVERS = {"rs1": "192.0.2.11", "rs2": "192.0.2.12"}
RS_PORT = 8080
REQUESTS = 6  # bounded: one new connection each


def test_guest_environment() -> None:
    """The harness's promises: Debian kernel, IPVS loaded, writable scratch and results."""
    assert os.environ["LVS_IN_VM"] == "1"
    assert os.path.isdir(os.path.join(os.environ["LVS_VM_MODULES_DIR"], "lib", "modules",
                                      os.uname().release))
    with open("/proc/modules") as fh:
        loaded = {line.split()[0] for line in fh}
    schedulers = {f"ip_vs_{s}" for s in ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh",
                                         "sed", "nq", "mh", "fo", "ovf")}
    assert {"ip_vs", "ip_set", "xt_ipvs", "veth", "bridge", *schedulers} <= loaded, loaded
    with open(os.path.join(os.environ["LVS_VM_OUTDIR"], ".vm-smoke"), "w") as fh:
        fh.write("ok\n")
    os.unlink(os.path.join(os.environ["LVS_VM_OUTDIR"], ".vm-smoke"))
    for scratch in ("/tmp", "/run/netns", "/var/lib"):
        assert os.access(scratch, os.W_OK), scratch


def build_lab(make_netns: Callable[[str], Netns]) -> dict[str, Netns]:
    """Namespaces, links, addresses and routes of the picture in the module docstring."""
    client, director = make_netns("client"), make_netns("director")
    veth(client, "eth0", director, "front")
    client.addr("eth0", f"{CLIENT}/24")
    client.ipr.route("add", dst="0.0.0.0/0", gateway=DIRECTOR_FRONT)
    director.addr("front", f"{DIRECTOR_FRONT}/24")
    director.addr("lo", f"{VIP}/32")
    director.ipr.link("add", ifname="br0", kind="bridge")
    director.up("br0")
    director.addr("br0", f"{DIRECTOR_BACK}/24")
    director.sysctl("net.ipv4.ip_forward", 1)
    lab = {"client": client, "director": director}
    for name, address in REAL_SERVERS.items():
        rs = make_netns(name)
        veth(director, f"to-{name}", rs, "eth0")
        director.ipr.link("set", index=director.link_index(f"to-{name}"),
                          master=director.link_index("br0"))
        rs.addr("eth0", f"{address}/24")
        rs.ipr.route("add", dst="0.0.0.0/0", gateway=DIRECTOR_BACK)
        lab[name] = rs
    return lab


def test_ipvs_nat_round_robin(make_netns: Callable[[str], Netns]) -> None:
    from pyroute2 import IPVSDest, IPVSService

    lab = build_lab(make_netns)
    director, client = lab["director"], lab["client"]

    ipvs = open_ipvs(director)
    try:
        service = IPVSService(addr=VIP, port=80, protocol=socket.IPPROTO_TCP, sched_name="rr")
        ipvs.service("add", service=service)
        for address in REAL_SERVERS.values():
            # fwd_method 0 = masquerading (NAT); pyroute2's default (3) is direct routing.
            ipvs.dest("add", service=service,
                      dest=IPVSDest(addr=address, port=RS_PORT, fwd_method=0, weight=1))
    finally:
        ipvs.close()

    saved = director.run(["ipvsadm", "-S", "-n"]).stdout.splitlines()
    assert f"-A -t {VIP}:80 -s rr" in saved, saved
    for address in REAL_SERVERS.values():
        assert f"-a -t {VIP}:80 -r {address}:{RS_PORT} -m -w 1" in saved, saved

    with ExitStack() as stack:
        for name, address in REAL_SERVERS.items():
            stack.enter_context(http_backend(lab[name], address, RS_PORT, name))
        answers = [http_get(client, VIP, 80, timeout=5.0) for _ in range(REQUESTS)]

    assert set(answers) == set(REAL_SERVERS), answers
    assert all(a != b for a, b in itertools.pairwise(answers)), (
        f"round robin should alternate: {answers}")

    stats = director.run(["ipvsadm", "-L", "-n", "--stats"]).stdout
    assert f"TCP  {VIP}:80" in stats, stats


def test_ipvsadm_sees_an_empty_table_in_a_fresh_namespace(
        make_netns: Callable[[str], Netns]) -> None:
    """IPVS state is per network namespace: a new one starts empty."""
    ns = make_netns("empty")
    assert ns.run(["ipvsadm", "-S", "-n"]).stdout.strip() == ""
