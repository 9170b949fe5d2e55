"""IPVS connection synchronisation with real traffic: a connection opened through director A
(master sync daemon) shows up in director B's connection table (backup daemon), and carries on
through B once the client's next hop moves there: what a failover needs.

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        -p no:hypothesispytest tests/vm/test_sync_daemon.py

One Ethernet segment (a bridge in a "switch" namespace), addresses in 192.0.2.0/24:

    client .100 --+-- director A .2 (master, eth0)  --+-- rs1 .11 (DR: VIP .10 on lo)
                  +-- director B .3 (backup, eth0)  --+

Both directors get the same DR service from the real agent (one plan, applied twice). The
client reaches the VIP through a permanent neighbour entry (A's MAC, later B's), as a
gratuitous ARP after a failover would set it: both directors hold the VIP, so ARP alone would
pick either.

The kernel (Linux 6.1 defaults: sync_threshold 3, sync_period 50) syncs a TCP connection when
its third packet in arrives in ESTABLISHED; the master flushes its buffer within 2 s
(IPVS_SYNC_FLUSH_TIME) to 224.0.0.81:8848.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lvs_operator.kernel.errors import NotFound
from lvs_operator.kernel.fake import FakeIPVS
from lvs_operator.kernel.ipvs import LiveConnection, SyncDaemon, daemon_attributes
from lvs_operator.kernel.real_ipvs import NetlinkIPVS
from tests.harness.waiting import wait_until
from tests.unit.builders import rs, vs
from tests.vm.lvslab import LineClient, MakeNetns, line_echo, program
from tests.vm.netlab import Netns, veth

VIP, PORT = "192.0.2.10", 80
CLIENT, RS1 = "192.0.2.100", "192.0.2.11"
SYNC_ID = 7


def _lab(make_netns: MakeNetns) -> dict[str, Netns]:
    switch = make_netns("switch")
    switch.ipr.link("add", ifname="br0", kind="bridge")
    switch.up("br0")
    lab = {"switch": switch}
    for name, host in {"dir-a": 2, "dir-b": 3, "rs1": 11, "client": 100}.items():
        ns = make_netns(name)
        port = f"p-{name}"
        veth(ns, "eth0", switch, port)
        switch.ipr.link("set", index=switch.link_index(port), master=switch.link_index("br0"))
        ns.addr("eth0", f"192.0.2.{host}/24")
        lab[name] = ns
    return lab


def _mac(ns: Netns) -> str:
    return ns.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()


def _route_vip_via(lab: dict[str, Netns], director: str) -> None:
    lab["client"].run(
        ["ip", "neigh", "replace", VIP, "lladdr", _mac(lab[director]), "dev", "eth0",
         "nud", "permanent"]
    )  # fmt: skip


def _ours(conns: list[LiveConnection], client_port: int) -> list[LiveConnection]:
    return [
        c
        for c in conns
        if (c.protocol, c.client, c.client_port, c.virtual, c.virtual_port)
        == ("TCP", CLIENT, client_port, VIP, PORT)
    ]


@pytest.fixture
def tables(make_netns: MakeNetns) -> Iterator[tuple[dict[str, Netns], NetlinkIPVS, NetlinkIPVS]]:
    lab = _lab(make_netns)
    with NetlinkIPVS(lab["dir-a"].name) as a, NetlinkIPVS(lab["dir-b"].name) as b:
        yield lab, a, b


def test_backup_director_receives_the_masters_connections_and_carries_them_on(
    tables: tuple[dict[str, Netns], NetlinkIPVS, NetlinkIPVS], tmp_path: Path
) -> None:
    lab, a, b = tables
    docs = [
        vs("web", VIP, ports=[{"port": PORT}], scheduler={"name": "rr"},
           forwarding={"method": "DR"}),
        rs("rs1", RS1, app="web", nodeName="rs1"),
    ]  # fmt: skip
    for name, director in (("a", "dir-a"), ("b", "dir-b")):
        state_dir = tmp_path / name
        state_dir.mkdir()
        nodes = ("director", "rs1") if name == "a" else ("director",)
        program({"director": lab[director], "rs1": lab["rs1"]}, docs, state_dir, nodes=nodes)
    assert [ls.service.key for ls in a.dump()] == [ls.service.key for ls in b.dump()]

    master, backup = SyncDaemon("master", "eth0", SYNC_ID), SyncDaemon("backup", "eth0", SYNC_ID)
    a.start_daemon(master)
    b.start_daemon(backup)
    assert a.daemons() == [daemon_attributes(master)]
    assert b.daemons() == [daemon_attributes(backup)]
    listed = lab["dir-a"].run(["ipvsadm", "-L", "--daemon"]).stdout
    assert f"master sync daemon (mcast=eth0, syncid={SYNC_ID}" in listed, listed
    listed = lab["dir-b"].run(["ipvsadm", "-L", "--daemon"]).stdout
    assert f"backup sync daemon (mcast=eth0, syncid={SYNC_ID}" in listed, listed
    assert a.connections() == [] and b.connections() == []

    _route_vip_via(lab, "dir-a")
    with line_echo(lab["rs1"], PORT, "rs1"):
        conn = LineClient(lab["client"], VIP, PORT)
        try:
            client_port = conn.sock.getsockname()[1]
            for i in range(5):  # SYN, ACK, then data: the third packet in triggers the sync
                assert conn.ask(f"via A {i}") == "rs1"
            (on_a,) = _ours(a.connections(), client_port)
            assert (on_a.destination, on_a.destination_port, on_a.state) == (
                RS1, PORT, "ESTABLISHED"
            )  # fmt: skip

            synced = wait_until(
                "the connection in director B's table",
                lambda: _ours(b.connections(), client_port),
                timeout=30,
            )
            (on_b,) = synced
            assert on_b._replace(expires=0) == on_a._replace(expires=0)
            ((service_b, (dest_b,)),) = ((ls.service, ls.destinations) for ls in b.dump())
            assert (dest_b.dest.address, dest_b.active_conns) == (RS1, 1)  # bound as active

            # Failover: the client's next hop for the VIP moves to B. Without the synced
            # entry B would not schedule a mid-stream segment (no SYN), its own stack would
            # answer with a reset and the connection would break.
            _route_vip_via(lab, "dir-b")
            for i in range(3):
                assert conn.ask(f"via B {i}") == "rs1"
            wait_until(
                "director B forwarding packets of the connection",
                lambda: next(ls.stats.inpkts for ls in b.dump() if ls.service == service_b),
                timeout=15,
            )
        finally:
            conn.close()


def test_ipvsadm_and_the_adapter_agree_on_sync_daemons(make_netns: MakeNetns) -> None:
    ns = make_netns("sync")
    ns.ipr.link("add", ifname="dummy0", kind="dummy")
    ns.up("dummy0")
    ns.addr("dummy0", "198.51.100.1/24")
    with NetlinkIPVS(ns.name) as table:
        table.start_daemon(SyncDaemon("master", "dummy0", 12, 1000, "239.255.0.9", 9000, 3))
        listed = ns.run(["ipvsadm", "-L", "--daemon"]).stdout
        assert (
            "master sync daemon (mcast=dummy0, syncid=12, maxlen=1000, group=239.255.0.9, "
            "port=9000, ttl=3)" in listed
        ), listed
        ns.run(["ipvsadm", "--start-daemon", "backup", "--mcast-interface", "dummy0",
                "--syncid", "13"])  # fmt: skip
        assert table.daemons()[1] == SyncDaemon("backup", "dummy0", 13, 1472, "224.0.0.81", 8848, 1)
        table.stop_daemon("master")
        table.stop_daemon("backup")
        assert ns.run(["ipvsadm", "-L", "--daemon"]).stdout.strip() == ""


def test_an_interface_the_namespace_lacks_is_not_found_by_both_tables(
    make_netns: MakeNetns,
) -> None:
    """A valid name that is simply not there (ENODEV), and the fake told which exist."""
    ns = make_netns("noif")
    fake = FakeIPVS(interfaces={"lo", "eth0"})
    with NetlinkIPVS(ns.name) as real:
        for table in (real, fake):
            for state in ("master", "backup"):
                with pytest.raises(NotFound, match="'eth9'"):
                    table.start_daemon(SyncDaemon(state, "eth9", SYNC_ID))
            assert table.daemons() == []
