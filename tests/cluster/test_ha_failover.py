"""Director HA in Lease mode, end to end: two directors, each with its agent (in the qemu
guest, real IPVS) against the real API server, one VIP that exactly one of them holds.

Site (tests/harness/hasite.py, guest side tests.harness.guestlab ha_up), LVS-DR on one
Ethernet segment, 203.0.113.0/24:

    client .2 --+-- director ha-a .3 --+-- rs1 .11, rs2 .12 (VIP on lo)
                +-- director ha-b .4 --+

The VirtualService asks for `ha: {mode: Lease, group: ha-e2e, connectionSync: {enabled: true}}`
(a named group: its Lease is lvs-ha-g-ha-e2e) with timings
an emulated guest sustains (hasite.LEASE; the defaults are measured at hardware speed by
bench/ha_lease_host.py). In each scenario the client side runs three witnesses while the
active director is taken away:
- `arpwatch`: a who-has for the VIP every 0.2 s, straight from a raw socket (the client's
  neighbour table cannot hide a second answer); no probe may get two answers;
- `hold`: one TCP connection opened before the failover, a line every 0.5 s; it must keep
  exchanging data through the new director (IPVS connection sync);
- `probe`: a new connection every 0.2 s (one line echoed); the outage it sees must end.

Bounds here are for correctness under TCG emulation (generous); the timings themselves are
measured by `make bench-ha`. Tests run in file order on one site.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.harness.controlplane import LocalControlPlane
from tests.harness.hasite import LAB, NODES, NS, PREFIX, VIP, Site, cluster_objects
from tests.harness.lvs_install import HostOperator, install
from tests.harness.vm import GuestVM
from tests.harness.waiting import wait_until

RECOVERY_BOUND = 60.0  # s, under TCG with hasite.LEASE; the target (< 3 s) is bench-ha's to show


@pytest.fixture(scope="module")
def site(control_plane: LocalControlPlane, guest: GuestVM,
         guest_kubeconfig: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    cp = control_plane
    op_kubeconfig = install(cp)
    lab = guest.spawn([*LAB, "ha-up", "--prefix", PREFIX], name="ha-site")
    guest.wait_for_log(lab, "READY", timeout=180)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(cluster_objects()))
    operator = HostOperator(op_kubeconfig, tmp_path_factory.mktemp("ha-op") / "op.log",
                            ["--agent-node-selector", "lvs.dev/ha-agent=true"])
    operator.start()
    s = Site(cp, guest, {n: guest_kubeconfig(agent_node=n) for n in NODES})
    for node in NODES:
        s.start_agent(node)
    try:
        yield s
    finally:
        for node in list(s.agents):
            s.kill_agent(node)
        operator.stop()
        keep = tmp_path_factory.getbasetemp() / "ha-logs"
        keep.mkdir(exist_ok=True)
        for node, text in s.logs.items():
            (keep / f"{node}.log").write_text(text)
        (keep / "operator.log").write_text(operator.log(10**7))
        print(f"logs kept in {keep}")
        for node, text in s.logs.items():
            print(f"--- agent {node} (tail):\n{text[-2500:]}")
        cp.kubectl("delete", "namespace", NS, "--wait=false")
        cp.kubectl("delete", "node", *NODES, "--wait=false")
        guest.kill(lab)


def _failover(site: Site, take_away: Callable[[str], None]) -> dict[str, Any]:
    """Witnesses on, the active director taken away, the VIP on the other one; verdicts."""
    wait_until("exactly one director holds the VIP", lambda: len(site.holders()) == 1,
               timeout=60)
    (active,) = site.holders()
    standby = next(n for n in NODES if n != active)
    witnesses = site.witnesses()
    time.sleep(3)  # the held connection is synced to the standby (3rd packet, 2 s flush)
    started = time.monotonic()
    take_away(active)
    wait_until(f"{standby} holds the VIP", lambda: site.holders() == {standby},
               timeout=RECOVERY_BOUND)
    moved = time.monotonic() - started
    time.sleep(3)  # the held connection exchanges a few more lines through the new director
    verdicts = site.verdicts(witnesses)
    verdicts.update(active=active, standby=standby, moved=moved)
    print(f"VIP moved from {active} to {standby} in {moved:.1f} s (as polled from the host)")
    return verdicts


def _check(v: dict[str, Any]) -> None:
    probe, arp = v["probe"], v["arp"]
    assert arp["split"] == 0, f"two directors answered ARP for {VIP}: {arp}"
    assert arp["probes"] > 20, arp
    macs = [span["macs"] for span in arp["spans"] if span["macs"]]
    assert len({tuple(m) for m in macs}) == 2, f"the VIP did not move to another MAC: {arp}"
    assert not probe["failing_at_end"], f"clients did not recover: {probe}"
    # under TCG one probe costs ~1.5 s of the guest's single CPU (witnesses, agents, servers)
    assert probe["ok"] >= 3 and set(probe["servers"]) <= {"rs1", "rs2"}, probe
    assert all(end - start < RECOVERY_BOUND for start, end in probe["outages"]), probe
    hold = v["hold"]
    assert "failed=0" in hold, f"the connection opened before the failover broke:\n{hold}"


def test_one_director_holds_the_vip_and_both_are_programmed(site: Site) -> None:
    wait_until("both directors programmed",
               lambda: all(site.programmed(n) for n in NODES), timeout=240)
    wait_until("exactly one director holds the VIP", lambda: len(site.holders()) == 1,
               timeout=60)
    (holder,) = site.holders()
    assert site.lease_holder().startswith(f"{holder}_")
    print(f"{holder} holds {VIP}; the other director is programmed and stands by")


def test_killing_the_active_agent_moves_the_vip_and_keeps_connections(site: Site) -> None:
    v = _failover(site, lambda node: site.kill_agent(node, signal.SIGKILL))
    _check(v)
    # the killed agent's VIP went by its lifetime; restarted, it stands by
    site.start_agent(v["active"])
    site.guest.wait_for_log(site.agents[v["active"]], "applying generation", timeout=240)
    time.sleep(8)  # its first (full) pass: seconds of the guest's one CPU under TCG
    assert site.holders() == {v["standby"]}
    assert site.lease_holder().startswith(f"{v['standby']}_")


def test_cutting_the_active_directors_link_moves_the_vip_and_keeps_connections(
        site: Site) -> None:
    def cut(node: str) -> None:
        site.guest.run(["ip", "-n", f"{PREFIX}-lan", "link", "set", f"p-{node[-1]}", "down"],
                       timeout=30)

    v = _failover(site, cut)
    _check(v)
    site.guest.run(["ip", "-n", f"{PREFIX}-lan", "link", "set", f"p-{v['active'][-1]}", "up"],
                   timeout=30)
    time.sleep(4)  # back on the segment, it stays a standby: the VIP does not flap back
    assert site.holders() == {v["standby"]}
