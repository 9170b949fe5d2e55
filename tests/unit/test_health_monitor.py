"""Health checks wired into the agent: the plan carries the check, the monitor turns probe
results into an overlay, and the same reconciler applies it (fake kernel, fake probes)."""

from __future__ import annotations

from lvs_operator.agent.health_monitor import HealthMonitor, ProbeVia, apply_health
from lvs_operator.agent.probes import ProbeResult
from lvs_operator.agent.reconcile import reconcile
from lvs_operator.agent.state import AgentState
from lvs_operator.compiler.nodeplan import health_path_marks
from lvs_operator.compiler.plan import (
    HEALTH_PATH_MARK_COUNT,
    HEALTH_PATH_MARK_FIRST,
    HealthCheckPlan,
    HealthPath,
    NodePlan,
    is_health_path,
    plan_from_dict,
    plan_to_dict,
)
from lvs_operator.kernel.fake_announce import FakeAnnouncer

from .builders import vs
from .test_reconcile import KEY, dests, fake_kernel, plans, web

A, B = ("198.51.100.11", 80), ("198.51.100.12", 80)
CHECK = {"type": "TCP", "retries": 1, "delayBeforeRetrySeconds": 1, "intervalSeconds": 2}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def checked_plan(**check: object) -> NodePlan:
    return plans(*web(A[0], B[0], healthCheck={**CHECK, **check}))


def monitor(clock: Clock, changes: list[int] | None = None) -> HealthMonitor:
    sink = changes if changes is not None else []
    return HealthMonitor(clock=clock, on_change=lambda: sink.append(1), workers=1)


def feed(m: HealthMonitor, plan: NodePlan, server: tuple[str, int], ok: bool) -> None:
    [svc] = plan.director.services
    assert svc.health is not None
    m.record(svc.key, svc.health, server, ProbeResult(ok, "probe", 0.01))


def test_plan_carries_the_check_and_round_trips():
    plan = checked_plan(onFailure="Inhibit", quorum={"minimum": 2, "sorryServer": {
        "address": "198.51.100.99", "port": 8080}})
    [svc] = plan.director.services
    assert svc.health == HealthCheckPlan(
        "TCP", retries=1, delay_before_retry=1, interval=2, inhibit=True, quorum=2,
        sorry_address="198.51.100.99", sorry_port=8080)
    assert all(svc.checked(d) for d in svc.destinations)
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plans(*web(A[0])).director.services[0].health is None


def test_endpoint_slice_backends_are_not_probed():
    plan = checked_plan()
    [svc] = plan.director.services
    other = svc.destinations[0]._replace(source="EndpointSlice default/web-abc")
    assert not svc._replace(destinations=(other,)).checked(other)


def test_down_server_leaves_the_table_at_once_and_returns():
    clock, changes = Clock(), []
    plan, kernel, state = checked_plan(), fake_kernel(), AgentState()
    m = monitor(clock, changes)
    m.update(plan)
    assert reconcile(*apply_health(plan, m.overlay())[:1], kernel, state).ok
    feed(m, plan, A, True)
    feed(m, plan, B, True)
    assert dests(kernel) == {A: 1, B: 1}
    # retries 1: two consecutive failures mark A down (the first schedules a retry)
    feed(m, plan, A, False)
    assert m.overlay().weights[KEY][A] == 1
    feed(m, plan, A, False)
    assert changes, "a transition must wake the agent loop"
    effective, dead = apply_health(plan, m.overlay())
    assert dead == {(KEY, *A)}
    report = reconcile(effective, kernel, state, dead=dead)
    assert dests(kernel) == {B: 1}  # deleted, not drained at weight 0
    assert any("out by health checks" in str(s) for s in report.steps)
    assert not state.drains
    feed(m, plan, A, True)
    effective, dead = apply_health(plan, m.overlay())
    assert not dead
    reconcile(effective, kernel, state, dead=dead)
    assert dests(kernel) == {A: 1, B: 1}
    [a] = [r for r in m.report() if (r.address, r.port) == A]
    assert a.up and a.owner == "default/web"


def test_inhibit_keeps_the_server_at_weight_zero():
    clock, plan = Clock(), checked_plan(onFailure="Inhibit", retries=1)
    m = monitor(clock)
    m.update(plan)
    feed(m, plan, A, False)  # first check failing: down at once (keepalived)
    effective, dead = apply_health(plan, m.overlay())
    assert not dead
    kernel = fake_kernel()
    reconcile(effective, kernel, AgentState())
    assert dests(kernel) == {A: 0, B: 1}


def test_quorum_loss_switches_to_the_sorry_server_and_back():
    clock = Clock()
    plan = checked_plan(quorum={"minimum": 2, "sorryServer": {"address": "198.51.100.99"}})
    m = monitor(clock)
    m.update(plan)
    kernel, state = fake_kernel(), AgentState()
    reconcile(*apply_health(plan, m.overlay())[:1], kernel, state)
    assert dests(kernel) == {A: 1, B: 1}
    feed(m, plan, A, False)
    effective, dead = apply_health(plan, m.overlay())
    assert m.quorum()[KEY] == (False, True)
    reconcile(effective, kernel, state, dead=dead)
    assert dests(kernel) == {("198.51.100.99", 80): 1}  # B is set aside as keepalived does
    feed(m, plan, A, True)
    effective, dead = apply_health(plan, m.overlay())
    assert dead == {(KEY, "198.51.100.99", 80)}  # deleted at once, even with connections
    reconcile(effective, kernel, state, dead=dead)
    assert dests(kernel) == {A: 1, B: 1}


def test_a_changed_check_starts_over_and_a_removed_one_is_forgotten():
    clock, plan = Clock(), checked_plan()
    m = monitor(clock)
    m.update(plan)
    feed(m, plan, A, False)
    assert m.overlay().weights[KEY][A] is None
    changed = checked_plan(intervalSeconds=5)
    m.update(changed)
    assert m.overlay().weights[KEY][A] == 1
    feed(m, plan, A, False)  # a result of the old check arriving late: ignored
    assert m.overlay().weights[KEY][A] == 1
    m.update(plans(*web(A[0], B[0])))
    assert not m.active and m.overlay().weights == {}


def test_due_probes_run_in_the_pool_and_report_back():
    clock, plan, seen = Clock(), checked_plan(), []

    def probe(check: HealthCheckPlan, address: str, port: int,
              via: ProbeVia | None) -> ProbeResult:
        assert via is None  # NAT: the real server's own address
        seen.append((address, port))
        return ProbeResult(address != A[0], "refused" if address == A[0] else "ok", 0.0)

    m = HealthMonitor(clock=clock, probe=probe, workers=1)
    m.update(plan)
    m.tick()
    m.tick()  # in flight: not started twice
    m._pool.shutdown(wait=True)
    assert sorted(seen) == [A, B]
    assert m.overlay().weights[KEY] == {A: None, B: 1}


def test_ha_vip_is_added_only_while_its_lease_is_held_and_announced():
    plan = plans(vs("web", ha={"mode": "Lease"}), *web(A[0])[1:])
    [vip] = plan.director.vips
    assert vip.ha is not None and vip.ha.group == "lvs-ha-192.0.2.10"
    kernel, state = fake_kernel(), AgentState()
    announcer = FakeAnnouncer()
    kernel = kernel.__class__(**{**kernel.__dict__, "announcer": announcer})

    def vips() -> set[str]:
        return {a.address for a in kernel.addresses.list()}

    reconcile(plan, kernel, state)
    assert "192.0.2.10" not in vips()  # standby: IPVS programmed, VIP absent
    assert dests(kernel) == {A: 1}
    reconcile(plan, kernel, state, held=frozenset({vip.ha.group}))
    assert "192.0.2.10" in vips()
    assert [a[:2] for a in announcer.announcements] == [("eth0", "192.0.2.10")]
    reconcile(plan, kernel, state)
    assert "192.0.2.10" not in vips()


# --------------------------------------------------------------------------- Lease HA


def test_two_directors_one_vip_lease_driver_moves_it_without_overlap():
    """LeaseDriver (agent/ha.py) + the real reconciler on two fake kernels: one holds the
    VIP, the holder's API goes away -> it drops the VIP by its own clock before the standby
    (which waits out the lease) adds it; never both at a tick."""
    from lvs_operator.agent.ha import LeaseDriver, lease_groups
    from lvs_operator.agent.vip_lease import VIPElection

    from .test_vip_lease import NS, Server
    from .test_vip_lease import Clock as LeaseClock

    clock = LeaseClock()
    server = Server(clock)
    plan = plans(vs("web", ha={"mode": "Lease"}), *web(A[0])[1:])
    [g] = lease_groups(plan, NS)
    assert (g.name, g.lease_name, g.lease_duration) == ("lvs-ha-192.0.2.10",) * 2 + (2,)
    directors = {}
    for name in ("dir-a", "dir-b"):
        election = VIPElection(name, lambda grp, n=name: server.client(n, grp), clock=clock,
                               wall=clock, rand=lambda: 0.5)
        driver = LeaseDriver(election, NS, clock=clock)
        driver.update(plan)
        directors[name] = (driver, fake_kernel(), AgentState())

    def tick() -> set[str]:
        holders = set()
        for name, (driver, kernel, state) in directors.items():
            driver.step()
            reconcile(plan, kernel, state, held=driver.held())
            if "192.0.2.10" in {a.address for a in kernel.addresses.list()}:
                holders.add(name)
        assert len(holders) <= 1, f"both directors hold the VIP at {clock.t}"
        return holders

    seen = [tick() for _ in range(5)]
    clock.advance(0.05)
    first = next(h for h in seen if h)
    (active,) = first
    standby = "dir-b" if active == "dir-a" else "dir-a"
    for _driver, kernel, _state in directors.values():
        assert dests(kernel) == {A: 1}  # both programmed hot
    server.down.add(active)
    down_at = clock.t
    moved_at = None
    for _ in range(200):
        clock.advance(0.05)
        holders = tick()
        if holders == {standby}:
            moved_at = clock.t
            break
    assert moved_at is not None, "the standby never took over"
    # lease duration 2 s from the standby's last sight of a renewal (<= one jittered retry
    # period of 0.5 s ago)
    assert moved_at - down_at <= 2 + 0.6 + 0.1


def test_connection_sync_runs_master_and_backup_daemons_and_stops_only_its_own():
    from lvs_operator.kernel.ipvs import SyncDaemon

    ha = {"mode": "Lease", "connectionSync": {"enabled": True, "syncID": 7}}
    plan = plans(vs("web", ha=ha), *web(A[0])[1:])
    kernel, state = fake_kernel(), AgentState()
    report = reconcile(plan, kernel, state)
    assert report.ok, report.failures
    assert {(d.state, d.interface, d.sync_id) for d in kernel.ipvs.daemons()} == {
        ("master", "eth0", 7), ("backup", "eth0", 7)}
    assert state.sync_daemons == {"master", "backup"}
    assert not reconcile(plan, kernel, state).steps  # in sync: nothing to do
    kernel.ipvs.stop_daemon("backup")  # drift
    assert [str(s) for s in reconcile(plan, kernel, state).steps] == [
        "sync start backup on eth0 syncid 7"]
    reconcile(plans(*web(A[0])), kernel, state)  # no HA any more
    assert kernel.ipvs.daemons() == [] and not state.sync_daemons
    kernel.ipvs.start_daemon(SyncDaemon("master", "eth0", 3))  # keepalived's, say
    report = reconcile(plan, kernel, state)
    assert any("not started by lvs-agent" in w for w in report.warnings)
    assert {(d.state, d.sync_id) for d in kernel.ipvs.daemons()} == {
        ("master", 3), ("backup", 7)}


def test_the_check_is_plan_only_data_never_a_kernel_difference():
    # The real kernel reads back health=None: a checked service must not look edited (the
    # vm tier's equivalence test caught an edit-service on every pass).
    from lvs_operator.kernel.ipvs import service_attributes

    [svc] = checked_plan().director.services
    assert svc.health is not None
    assert service_attributes(svc) == service_attributes(svc._replace(health=None))


def test_verdicts_are_exported_as_lvs_health_series():
    from lvs_operator.agent.main import _watch_health
    from lvs_operator.observability import AgentMetrics

    clock, plan = Clock(), checked_plan()
    m = monitor(clock)
    m.update(plan)
    feed(m, plan, A, False)
    metrics = AgentMetrics(version="1")
    _watch_health(metrics, m)
    svc = {"protocol": KEY.protocol, "address": KEY.address, "port": str(KEY.port)}

    def value(series: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(series, labels)

    [owner] = {s.owner for s in plan.director.services}
    namespace, name = owner.split("/")
    svc = {"namespace": namespace, "name": name, **svc}
    down = {**svc, "backend_address": A[0], "backend_port": str(A[1])}
    up = {**svc, "backend_address": B[0], "backend_port": str(B[1])}
    assert value("lvs_health_backend_up", **down) == 0.0
    assert value("lvs_health_backend_up", **up) == 1.0
    assert value("lvs_health_backend_consecutive_failures", **up) == 0.0
    assert (value("lvs_health_backend_consecutive_failures", **down) or 0) >= 1
    assert value("lvs_health_quorum_up", **svc) == 1.0
    assert value("lvs_health_sorry_server_active", **svc) == 0.0


# ---- DR/TUN: probes take the forwarding path


def _paths(plan: NodePlan) -> dict[int, tuple[str, str]]:
    return {s.key.fwmark: (s.destinations[0].address, s.destinations[0].forward)
            for s in plan.director.services if is_health_path(s.key)}


def test_dr_servers_get_one_health_path_service_each_and_accept_local():
    plan = plans(*web(A[0], B[0], method="DR", healthCheck=CHECK),
                 {**web(A[0], method="DR", healthCheck=CHECK)[0],
                  "metadata": {"name": "web2", "namespace": "default"},
                  "spec": {**web(A[0], method="DR")[0]["spec"], "address": "192.0.2.20"}})
    paths = _paths(plan)
    assert sorted(paths.values()) == [(A[0], "route"), (B[0], "route")]  # A shared by both VIPs
    assert all(HEALTH_PATH_MARK_FIRST <= m < HEALTH_PATH_MARK_FIRST + HEALTH_PATH_MARK_COUNT
               for m in paths)
    for svc in plan.director.services:
        if is_health_path(svc.key):
            assert svc.health is None and svc.destinations[0].port == 0
            assert svc.destinations[0].weight == 1
    assert ("net.ipv4.conf.all.accept_local", "1") in plan.director.sysctls
    keys = [s.key for s in plan.director.services]
    assert keys == sorted(keys, key=lambda k: (k.fwmark, k.address, k.port))  # ipvsadm order


def test_no_health_path_without_a_check_for_nat_or_for_fwmark_services():
    for plan in (plans(*web(A[0], method="DR")), plans(*web(A[0], healthCheck=CHECK)),
                 plans(vs("web", ports=(), firewallMark={"mark": 7, "ports": [{"port": 80}]},
                          forwarding={"method": "DR"}, healthCheck=CHECK),
                       *web(A[0])[1:])):
        assert _paths(plan) == {}
        assert ("net.ipv4.conf.all.accept_local", "1") not in plan.director.sysctls


def test_a_virtualservice_may_not_use_a_health_path_mark():
    from lvs_operator.compiler.engine import compile_cluster

    from .builders import cluster
    result = compile_cluster(cluster(
        vs("web", ports=(), firewallMark={"mark": HEALTH_PATH_MARK_FIRST + 5,
                                          "ports": [{"port": 80}]}), *web(A[0])[1:]))
    [issue] = [i for i in result.all_issues() if i.reason == "MarkReserved"]
    assert issue.severity == "Error" and issue.field == "spec.firewallMark.mark"
    assert f"{HEALTH_PATH_MARK_FIRST + 5:#x}" in issue.message


def test_health_path_marks_are_stable_as_paths_come_and_go():
    paths = [HealthPath(4, f"198.51.100.{i}", "route") for i in range(1, 200)]
    before = health_path_marks(paths)
    assert len(set(before.values())) == len(paths)
    after = health_path_marks([*paths[:50], *paths[51:], HealthPath(4, "192.0.2.99", "tunnel",
                                                                     "ipip")])
    moved = [p for p in paths if p in after and after[p] != before[p]]
    assert len(moved) <= 2, moved  # only a collision chain can move a mark
    full = health_path_marks(HealthPath(4, f"10.{i >> 8}.{i & 255}.1", "route")
                             for i in range(HEALTH_PATH_MARK_COUNT + 10))
    assert len(full) == HEALTH_PATH_MARK_COUNT  # the rest are probed at their own address


def test_dr_probes_go_to_the_vip_with_the_servers_mark():
    clock, seen = Clock(), []
    plan = plans(*web(A[0], B[0], method="DR", healthCheck=CHECK))
    marks = {addr: m for m, (addr, _) in _paths(plan).items()}

    def probe(check: HealthCheckPlan, address: str, port: int,
              via: ProbeVia | None) -> ProbeResult:
        seen.append((address, port, via))
        return ProbeResult(True, "ok", 0.0)

    m = HealthMonitor(clock=clock, probe=probe, workers=1)
    m.update(plan)
    m.tick()
    m._pool.shutdown(wait=True)
    assert sorted(seen) == [(A[0], 80, ProbeVia("192.0.2.10", marks[A[0]])),
                            (B[0], 80, ProbeVia("192.0.2.10", marks[B[0]]))]
