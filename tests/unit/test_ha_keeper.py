"""Lease-mode HA with the VIP keeper (agent/ha.py) on fake kernels sharing one fake clock:
the VIP's valid lifetime ends before a standby may take the Lease (a SIGKILLed holder leaves
nothing behind), a holder whose VIP device loses its carrier gives the VIP up, and a release
always comes after the VIP is gone."""

from __future__ import annotations

import dataclasses

import pytest

from lvs_operator.agent.cache import CachingKernel
from lvs_operator.agent.ha import LIFETIME_MARGIN, LeaseDriver, VIPKeeper, lease_groups
from lvs_operator.agent.reconcile import Kernel, reconcile
from lvs_operator.agent.state import AgentState
from lvs_operator.agent.vip_lease import VIPElection
from lvs_operator.compiler.plan import NodePlan
from lvs_operator.kernel.fake import FakeAddresses

from .builders import rs, vs
from .test_reconcile import fake_kernel, plans, web
from .test_vip_lease import NS, Server
from .test_vip_lease import Clock as LeaseClock

VIP = "192.0.2.10"
RIP = "198.51.100.11"


class Director:
    def __init__(self, name: str, server: Server, clock: LeaseClock, plan: NodePlan) -> None:
        self.name, self.plan, self.alive = name, plan, True
        self.addresses = FakeAddresses("eth0", clock=clock)
        election = VIPElection(name, lambda grp: server.client(name, grp), clock=clock,
                               wall=clock, rand=lambda: 0.5)
        self.driver = LeaseDriver(election, NS, clock=clock, keeper=VIPKeeper(self.addresses))
        self.kernel = dataclasses.replace(fake_kernel(), addresses=self.addresses,
                                          lease_lifetime=self.driver.lifetime)
        self.state = AgentState()
        self.driver.update(plan)

    def tick(self) -> None:
        if self.alive:
            self.driver.step()
            reconcile(self.plan, self.kernel, self.state, held=self.driver.held())

    def holds(self) -> bool:
        return VIP in {a.address for a in self.addresses.list()}


def lab(ha: dict | None = None) -> tuple[LeaseClock, Server, dict[str, Director]]:
    clock = LeaseClock()
    server = Server(clock)
    plan = plans(*web(RIP, ha=ha or {"mode": "Lease"}))
    return clock, server, {n: Director(n, server, clock, plan) for n in ("dir-a", "dir-b")}


def run(clock: LeaseClock, directors: dict[str, Director], seconds: float,
        until: str | None = None) -> float | None:
    """Tick every 50 ms; never two holders; the time `until` became the only holder."""
    for _ in range(int(seconds / 0.05)):
        clock.advance(0.05)
        for d in directors.values():
            d.tick()
        holders = {n for n, d in directors.items() if d.holds()}
        assert len(holders) <= 1, f"both directors hold {VIP} at {clock.t:.2f}"
        if until is not None and holders == {until}:
            return clock.t
    return None


def active(directors: dict[str, Director]) -> tuple[Director, Director]:
    a, b = directors.values()
    return (a, b) if a.holds() else (b, a)


def test_a_killed_holders_vip_runs_out_before_the_standby_takes_it() -> None:
    clock, _server, directors = lab()
    run(clock, directors, 1.0)
    holder, standby = active(directors)
    assert holder.holds()
    [entry] = [a for a in holder.addresses.list() if a.address == VIP]
    assert entry.lifetime == 1  # 2 s lease - 1.5 s deadline ... see test_lifetime_* below
    run(clock, directors, 3.0)  # renewals keep extending it
    assert holder.holds() and not standby.holds()
    holder.alive = False  # SIGKILL: no release, no delete, no more refreshes
    killed = clock.t
    gone = None
    for _ in range(100):
        clock.advance(0.05)
        standby.tick()
        if not holder.holds() and gone is None:
            gone = clock.t
        if standby.holds():
            break
        assert gone is None or not holder.holds()
    assert gone is not None and standby.holds()
    assert gone <= clock.t - LIFETIME_MARGIN + 0.05  # the dead VIP went first, with margin
    assert clock.t - killed <= 2 + 0.6 + 0.1  # lease duration + one jittered retry period


def test_a_holder_whose_vip_device_loses_carrier_hands_over() -> None:
    clock, server, directors = lab()
    run(clock, directors, 1.0)
    holder, standby = active(directors)
    holder.addresses.set_link("eth0", False)
    cut = clock.t
    moved = run(clock, directors, 3.0, until=standby.name)
    assert moved is not None and moved - cut <= 0.5 * 1.2 * 2 + 0.1  # release, then one poll
    assert not holder.holds()
    holder.addresses.set_link("eth0", True)  # back: a standby now, the VIP stays where it is
    run(clock, directors, 3.0)
    assert standby.holds() and not holder.holds()
    lease = server.spec("lvs-ha-192.0.2.10")
    assert lease["holderIdentity"] == standby.name


def test_shutdown_deletes_the_vip_before_releasing() -> None:
    clock, server, directors = lab()
    run(clock, directors, 1.0)
    holder, standby = active(directors)
    order: list[str] = []
    keeper_drop = holder.driver._keeper.drop  # type: ignore[union-attr]

    def drop(group: str) -> None:
        order.append("drop")
        keeper_drop(group)

    holder.driver._election.before_release = drop
    holder.driver.stop()
    assert order == ["drop"] and not holder.holds()
    assert server.spec("lvs-ha-192.0.2.10").get("holderIdentity") in ("", None)
    holder.alive = False
    assert run(clock, directors, 2.0, until=standby.name) is not None


@pytest.mark.parametrize(("lease", "lifetime"), [
    ({}, 1),  # defaults 2 s / 1.5 s / 0.5 s: floor(1.5 + 0.5 - 0.5)
    ({"durationSeconds": 3, "renewDeadlineMilliseconds": 2000,
      "retryPeriodMilliseconds": 1000}, 2),  # floor(2 + 1 - 0.5)
    ({"durationSeconds": 10, "renewDeadlineMilliseconds": 9000}, 9),
])
def test_lifetime_ends_before_a_standby_may_take_the_lease(lease: dict, lifetime: int) -> None:
    clock, _server, directors = lab({"mode": "Lease", "lease": lease} if lease else None)
    d = directors["dir-a"]
    d.driver.step()
    [group] = d.driver.held()
    assert d.driver.lifetime(group) == lifetime
    ha = d.plan.director.vips[0].ha
    assert ha is not None
    renewed = clock.t
    while d.driver.lifetime(group) is not None:  # no more stepping: how long may it add?
        clock.advance(0.05)
        left = d.driver.lifetime(group)
        if left is not None:  # the VIP would run out before the standby's earliest take
            assert clock.t + left <= renewed + ha.lease_duration - LIFETIME_MARGIN + 1e-9
    assert clock.t <= renewed + ha.renew_deadline
    assert d.driver.lifetime("no-such-group") is None


def test_a_take_skipped_when_the_lease_ran_out_is_a_warning() -> None:
    clock, _server, directors = lab()
    d = directors["dir-a"]
    d.driver.step()
    held = d.driver.held()
    clock.advance(1.45)  # still held, but too late to add for a whole second safely
    report = reconcile(d.plan, d.kernel, d.state, held=held)
    assert not report.failures and not d.holds()
    assert any("no longer held" in w for w in report.warnings), report.warnings


def test_cached_addresses_with_a_lifetime_are_always_read_again() -> None:
    clock = LeaseClock()
    addresses = FakeAddresses("eth0", clock=clock)
    base = fake_kernel()
    kernel = CachingKernel(Kernel(base.ipvs, base.ipsets, base.chains, addresses,
                                  base.sysctls, base.tunnels))
    addresses.add("eth0", VIP, 32, lifetime=1)
    assert VIP in {a.address for a in kernel.view.addresses.list()}
    clock.advance(1.0)  # the kernel deletes it by itself: no write through the cache
    assert VIP not in {a.address for a in kernel.view.addresses.list()}
    addresses.add("eth0", "192.0.2.20", 32)
    assert kernel.view.addresses.list() == kernel.view.addresses.list()


def test_a_holder_cut_off_from_the_api_keeps_its_vip_to_the_bound_then_drops_it() -> None:
    """Renewals failing: the VIP's lifetime is extended once more a second before the bound,
    so it stays until about the renew deadline (not one second after the last renewal), and
    is gone before the standby may take the Lease."""
    clock, server, directors = lab()
    run(clock, directors, 2.0)
    holder, standby = active(directors)
    server.down.add(holder.name)
    [until] = holder.driver._until.values()
    renewed = until - 1.5  # the start of the last renewal that succeeded
    gone = None
    for _ in range(100):
        clock.advance(0.05)
        for d in directors.values():
            d.tick()
        if gone is None and not holder.holds():
            gone = clock.t
        assert not (holder.holds() and standby.holds())
        if standby.holds():
            break
    assert gone is not None and standby.holds()
    # without the late extension it would go 1 s after the refresh that followed `renewed`
    assert gone - renewed >= 1.5 - 0.2, "the VIP went long before the renew deadline"
    assert gone - renewed <= 1.5 + 0.1


def _grouped_lab(group: str | None, vips: int) -> tuple[LeaseClock, Server, dict[str, Director],
                                                         list[str]]:
    """`vips` VirtualServices on VIPs 192.0.2.1.. (one real server each), all in
    spec.ha.group `group` (None: each VIP its own group, the default)."""
    ha: dict = {"mode": "Lease", **({"group": group} if group else {})}
    docs = []
    addresses = [f"192.0.2.{i}" for i in range(1, vips + 1)]
    for i, address in enumerate(addresses):
        docs += [vs(f"web-{i}", address, ha=ha, selector={"app": f"web-{i}"}),
                 rs(f"r{i}", f"198.51.100.{i + 1}", app=f"web-{i}")]
    plan = plans(*docs)
    clock = LeaseClock()
    server = Server(clock)
    return clock, server, {n: Director(n, server, clock, plan) for n in ("dir-a", "dir-b")}, \
        addresses


def _held(director: Director, addresses: list[str]) -> set[str]:
    return {a.address for a in director.addresses.list()} & set(addresses)


def test_a_named_group_is_one_election_for_all_its_vips_and_moves_together() -> None:
    clock, server, directors, addresses = _grouped_lab("edge", 40)
    run(clock, directors, 1.0)
    a, b = directors.values()
    holder, standby = (a, b) if _held(a, addresses) else (b, a)
    assert _held(holder, addresses) == set(addresses) and not _held(standby, addresses)
    assert {name for _, name in server.leases} == {"lvs-ha-g-edge"}
    calls = len(server.calls)
    run(clock, directors, 10.0)
    grouped = len(server.calls) - calls
    assert grouped <= 2 * 2 * 10 / 0.5 + 4  # two directors, one Lease, every retry period

    holder.alive = False  # killed: every VIP of the group goes to the standby at once
    for _ in range(int(4.0 / 0.05)):
        clock.advance(0.05)
        standby.tick()
        held = _held(standby, addresses)
        assert held in (set(), set(addresses)), "a group moves whole"
    assert _held(standby, addresses) == set(addresses)

    # Beside it, the same VIPs each in a group of their own: one Lease each.
    clock, server, directors, addresses = _grouped_lab(None, 40)
    run(clock, directors, 1.0)
    calls = len(server.calls)
    run(clock, directors, 10.0)
    assert len(server.calls) - calls >= 30 * grouped
    assert len(server.leases) == 40


def test_a_group_is_held_only_where_every_vip_of_it_can_be_served() -> None:
    plan = plans(vs("a", "192.0.2.1", ha={"mode": "Lease", "group": "edge"}),
                 vs("b", "192.0.2.2", ha={"mode": "Lease", "group": "edge"},
                    selector={"app": "a"}),
                 vs("c", "192.0.2.3", ha={"mode": "Lease"}, selector={"app": "a"}),
                 rs("r", "198.51.100.1", app="a"))
    [own, edge] = sorted(lease_groups(plan, NS), key=lambda g: g.name)
    assert (edge.name, edge.lease_name) == ("lvs-ha-g-edge", "lvs-ha-g-edge")
    assert edge.virtual_services == ("default/a", "default/b")
    assert own.name == "lvs-ha-192.0.2.3" and own.virtual_services == ("default/c",)
    down = {"192.0.2.2": "device eth1 of VIP 192.0.2.2 is down or has no carrier"}
    [own, edge] = sorted(lease_groups(plan, NS, lambda v: down.get(v.address, "")),
                         key=lambda g: g.name)
    assert not edge.can_hold and edge.why_not == down["192.0.2.2"]
    assert own.can_hold
