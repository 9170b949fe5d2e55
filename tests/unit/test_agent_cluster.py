"""lvs-agent in cluster mode against the in-memory PlanSource and the fake kernel.

The loop is driven deterministically: a fake clock (the fake API's idle watch "waits" by
advancing it), and `agent.step()` called until what the test expects has happened.
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import pytest

from lvs_operator.agent.cluster import (
    MAX_ENTRIES,
    Backoff,
    ClusterAgent,
    FakePlanSource,
    PlanGone,
    PlanSourceError,
)
from lvs_operator.agent.health_monitor import HealthMonitor
from lvs_operator.agent.main import main as agent_main
from lvs_operator.agent.probes import ProbeResult
from lvs_operator.agent.reconcile import Kernel, reconcile
from lvs_operator.agent.state import AgentState, load_state
from lvs_operator.compiler.plan import NodePlan
from lvs_operator.compiler.shards import PlanSharder, assemble_plan

from .builders import rs, vs
from .test_reconcile import KEY, dests, fake_kernel, plans, web

NODE = "dir-1"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class Rig:
    """An operator side (sharder + fake API), an agent, its kernel and a clock."""

    def __init__(self, interval: float = 10.0, *, kernel: Kernel | None = None,
                 state: AgentState | None = None, dry_run: bool = False,
                 sharder: PlanSharder | None = None, persist=None,
                 health: HealthMonitor | None = None) -> None:
        self.clock = Clock()
        self.api = FakePlanSource(sleep=self.clock.sleep)
        self.kernel = kernel or fake_kernel()
        self.state = state or AgentState()
        self.sharder = sharder or PlanSharder()
        self.reports: list = []
        self.agent = ClusterAgent(
            NODE, self.api, self.kernel, self.state, interval=interval, dry_run=dry_run,
            persist=persist, on_report=self.reports.append, clock=self.clock, wall=self.clock.wall,
            sleep=self.clock.sleep, backoff=lambda: Backoff(0.5, 30.0, jitter=0.0),
            identity="lvs-agent test on host-1", health=health,
        )

    def publish(self, plan: NodePlan) -> None:
        self.api.publish(self.sharder.update(plan))

    def status(self) -> dict:
        return self.api.status(NODE)

    def generation(self) -> int:
        return self.api.objects[NODE]["metadata"]["generation"]

    def condition(self, kind: str) -> dict:
        [cond] = [c for c in self.status()["conditions"] if c["type"] == kind]
        return cond

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.agent.step()

    def until(self, done, limit: int = 50) -> int:
        """Step until done() holds; returns how many steps it took."""
        for i in range(limit):
            if done():
                return i
            self.agent.step()
        raise AssertionError(f"not done after {limit} steps")

    def calls(self, method: str) -> list[str]:
        return [name for m, name in self.api.calls if m == method]

    def patches(self) -> int:
        return len(self.calls("patch_status"))


def kernel_state(kernel: Kernel):
    return (sorted(kernel.ipvs.dump()), sorted(kernel.addresses.list()),
            {k: kernel.sysctls.get(k) for k in ("net.ipv4.ip_forward",)})


def test_a_published_plan_is_applied_and_reported():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))
    rig.agent.step()
    assert dests(rig.kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}
    status = rig.status()
    assert status["observedGeneration"] == rig.generation() == 1
    assert rig.condition("Programmed")["status"] == "True"
    assert rig.condition("Programmed")["reason"] == "Applied"
    assert rig.condition("Programmed")["observedGeneration"] == 1
    assert rig.condition("Degraded")["status"] == "False"
    assert RFC3339.match(rig.condition("Programmed")["lastTransitionTime"])
    assert RFC3339.match(status["lastSyncTime"])
    assert status["agent"] == "lvs-agent test on host-1"
    assert (status["services"], status["destinations"], status["draining"]) == (1, 2, 0)
    assert status["failures"] == [] and status["warnings"] == []
    assert rig.state.owned_services == {KEY}


def test_a_new_generation_is_applied_on_the_watch_event_without_waiting_for_the_timer():
    rig = Rig(interval=10.0)
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    rig.clock.t += 3.0  # in the middle of the interval
    before = rig.clock.t
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))
    rig.agent.step()
    assert rig.clock.t == before  # the event itself triggered the pass: no time passed
    assert dests(rig.kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}
    assert rig.status()["observedGeneration"] == 2
    assert rig.condition("Programmed")["observedGeneration"] == 2


def test_a_shard_with_a_stale_digest_waits_then_applies_when_the_right_one_appears():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    old = kernel_state(rig.kernel)
    # The operator wrote the NodePlan of generation 2 but not yet its shard.
    published = rig.sharder.update(plans(*web("198.51.100.11", "198.51.100.12")))
    assert published.spec is not None and published.shards
    rig.api.put_plan(NODE, published.spec)
    rig.steps(3)
    programmed = rig.condition("Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "WaitingForShards")
    assert "digest" in programmed["message"] and "generation 1 stays applied" in \
        programmed["message"]
    assert programmed["observedGeneration"] == 2
    assert rig.status()["observedGeneration"] == 1  # what the kernel still has
    assert kernel_state(rig.kernel) == old
    for name, spec in published.shards.items():
        rig.api.put_shard(name, spec)
    rig.until(lambda: rig.status()["observedGeneration"] == 2)
    assert rig.condition("Programmed")["reason"] == "Applied"
    assert dests(rig.kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}


def test_a_first_plan_with_a_missing_shard_touches_nothing():
    rig = Rig()
    published = rig.sharder.update(plans(*web("198.51.100.11")))
    rig.api.put_plan(NODE, published.spec)
    rig.steps(3)
    assert rig.kernel.ipvs.dump() == [] and rig.kernel.addresses.list() == []
    assert rig.condition("Programmed")["reason"] == "WaitingForShards"
    assert "is missing" in rig.condition("Programmed")["message"]
    assert "observedGeneration" not in rig.status()


def test_api_errors_keep_the_kernel_and_the_last_plan_and_the_agent_recovers(caplog):
    caplog.set_level(logging.INFO, logger="lvs_operator.agent")
    rig = Rig(interval=5.0)
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    applied = kernel_state(rig.kernel)
    rig.api.down = True
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))  # unseen while down
    rig.kernel.addresses.delete("eth0", "192.0.2.10", 32)  # drift while the API is down
    start = rig.clock.t
    while rig.clock.t - start < 120:
        rig.agent.step()
    assert kernel_state(rig.kernel) == applied  # drift repaired against the last good plan
    assert rig.agent.applied_generation == 1
    lost = [r for r in caplog.records if "the API server failed" in r.getMessage()]
    assert len(lost) == 1, "logged once, not at every retry"
    watch_attempts = rig.calls("watch_plan")
    assert 4 <= len(watch_attempts) <= 20  # bounded exponential backoff, not a busy loop
    rig.api.down = False
    rig.until(lambda: rig.status().get("observedGeneration") == 2)
    assert dests(rig.kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_backoff_grows_to_its_cap_and_resets():
    b = Backoff(0.5, 30.0, jitter=0.0)
    assert [b.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.next() == 0.5
    jittered = Backoff(1.0, 30.0, jitter=0.2, rand=lambda: 1.0)
    assert jittered.next() == pytest.approx(0.8)


def test_no_nodeplan_means_nothing_is_touched(caplog):
    caplog.set_level(logging.INFO, logger="lvs_operator.agent")
    kernel, state = fake_kernel(), AgentState()
    reconcile(plans(*web("198.51.100.11")), kernel, state)  # a previous run's work
    before = kernel_state(kernel)
    rig = Rig(kernel=kernel, state=state)
    rig.steps(10)
    assert kernel_state(kernel) == before
    assert state.owned_services == {KEY}
    waiting = [r for r in caplog.records
               if "waiting for the operator to publish a plan for node dir-1" in r.getMessage()]
    assert len(waiting) == 1
    assert rig.calls("patch_status") == []


def test_a_deleted_nodeplan_changes_nothing_and_a_new_one_is_followed():
    rig = Rig(interval=5.0)
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    applied = kernel_state(rig.kernel)
    rig.api.delete_plan(NODE)
    rig.steps(5)
    assert kernel_state(rig.kernel) == applied
    # The operator publishes again (a new object: generation 1 again, another uid).
    rig.sharder = PlanSharder()
    rig.publish(NodePlan(NODE))  # the empty plan: the operator's way to clean a node
    rig.until(lambda: rig.kernel.ipvs.dump() == [])
    assert rig.status()["observedGeneration"] == 1
    assert rig.condition("Programmed")["status"] == "True"


def test_only_shards_whose_digest_changed_are_fetched():
    docs = []
    for i in range(40):
        docs.append(vs(f"s{i}", f"192.0.2.{i + 1}", selector={"app": f"a{i}"}))
        docs.append(rs(f"r{i}", f"198.51.100.{i + 1}", app=f"a{i}"))
    rig = Rig(sharder=PlanSharder(target_bytes=4096, limit_bytes=16384))
    rig.publish(plans(*docs))
    rig.agent.step()
    shards = rig.api.objects[NODE]["spec"]["shards"]
    assert len(shards) >= 4
    assert sorted(rig.calls("get_shard")) == sorted(s["name"] for s in shards)
    assert len(rig.kernel.ipvs.dump()) == 40
    rig.api.calls.clear()
    docs[1] = rs("r0", "198.51.100.1", app="a0", weight=5)  # one backend changes
    rig.publish(plans(*docs))
    rig.agent.step()
    assert len(rig.calls("get_shard")) == 1
    assert dests(rig.kernel, rig.agent.plan.director.services[0].key) == \
        {("198.51.100.1", 80): 5}
    assert rig.status()["observedGeneration"] == 2


def test_the_cached_assembly_is_the_contracts_assemble_plan():
    docs = []
    for i in range(12):
        docs.append(vs(f"s{i}", f"192.0.2.{i + 1}", selector={"app": f"a{i}"}))
        docs.append(rs(f"r{i}", f"198.51.100.{i + 1}", app=f"a{i}"))
    rig = Rig(sharder=PlanSharder(target_bytes=1024, limit_bytes=16384))
    rig.publish(plans(*docs))
    rig.agent.step()
    spec = rig.api.objects[NODE]["spec"]
    assert rig.agent.plan == assemble_plan(spec, rig.api.shards) == plans(*docs)


def test_status_is_not_patched_again_when_nothing_changed_only_a_heartbeat_per_interval():
    rig = Rig(interval=10.0)
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    assert rig.patches() == 1
    first = dict(rig.status())
    rig.clock.t += 3.0
    rig.api.touch(NODE)  # a label changed, same generation: nothing to apply or say
    rig.agent.step()
    assert rig.clock.t == 1003.0 and rig.patches() == 1
    start = rig.clock.t
    rig.until(lambda: rig.clock.t - start > 35)
    heartbeats = rig.patches() - 1
    assert 2 <= heartbeats <= 4  # about one per interval, never more
    times = [t for m, t in rig.api.calls if m == "patch_status"]
    assert len(times) == heartbeats + 1
    last = rig.status()
    assert last["lastSyncTime"] > first["lastSyncTime"]
    assert {k: v for k, v in last.items() if k != "lastSyncTime"} == \
        {k: v for k, v in first.items() if k != "lastSyncTime"}


def test_heartbeats_are_at_least_an_interval_apart():
    rig = Rig(interval=4.0)
    rig.publish(plans(*web("198.51.100.11")))
    stamps: list[float] = []
    original = rig.api.patch_status

    def recording(node, status):
        stamps.append(rig.clock.t)
        original(node, status)

    rig.api.patch_status = recording  # type: ignore[method-assign]
    start = rig.clock.t
    rig.until(lambda: rig.clock.t - start > 40, limit=200)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps and min(gaps) >= 4.0 - 1e-9
    assert len(stamps) >= 8


def test_an_unsupported_plan_is_refused_and_the_last_one_kept():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    before = kernel_state(rig.kernel)
    spec = dict(rig.api.objects[NODE]["spec"], formatVersion=99)
    rig.api.put_plan(NODE, spec)
    rig.steps(3)
    programmed = rig.condition("Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "UnsupportedPlan")
    assert "formatVersion 99 is not supported" in programmed["message"]
    assert rig.condition("Degraded")["status"] == "True"
    assert rig.status()["observedGeneration"] == 1
    assert kernel_state(rig.kernel) == before
    assert rig.calls("get_shard").count(spec["shards"][0]["name"]) == 1  # not retried


def test_apply_failures_are_reported_bounded():
    kernel = fake_kernel()
    kernel.ipvs.available = False
    rig = Rig(kernel=kernel)
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    programmed = rig.condition("Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "ApplyFailed")
    assert rig.condition("Degraded")["status"] == "True"
    assert any("IPVS is not available" in f for f in rig.status()["failures"])
    assert rig.status()["observedGeneration"] == 1
    transition = programmed["lastTransitionTime"]
    kernel.ipvs.available = True
    rig.clock.t += 5  # a later transition time
    rig.until(lambda: rig.condition("Programmed")["status"] == "True")
    assert rig.condition("Programmed")["lastTransitionTime"] > transition
    assert rig.status()["failures"] == []


def test_failures_and_warnings_are_clipped_to_the_crd_limits():
    from lvs_operator.agent.cluster import MAX_TEXT, _bounded

    items = [f"failure {i} " + "x" * 2000 for i in range(80)]
    out = _bounded(items)
    assert len(out) == MAX_ENTRIES
    assert all(len(i) <= MAX_TEXT for i in out)
    assert out[-1] == "... and 31 more"
    assert _bounded(["short"]) == ["short"]


def test_an_expired_watch_lists_again():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    rig.api.compact()  # the agent's watch position is now too old
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))
    rig.api.compact()
    lists_before = len(rig.calls("get_plan"))
    rig.until(lambda: rig.status()["observedGeneration"] == 2)
    assert len(rig.calls("get_plan")) == lists_before + 1


def test_dry_run_changes_nothing_and_writes_no_status():
    rig = Rig(dry_run=True)
    rig.publish(plans(*web("198.51.100.11")))
    rig.steps(3)
    assert rig.kernel.ipvs.dump() == []
    assert rig.calls("patch_status") == []
    assert rig.reports and rig.reports[0].steps


def test_state_is_persisted_like_standalone(tmp_path: Path):
    from lvs_operator.agent.state import save_state

    path = tmp_path / "dir-1.json"
    rig = Rig(persist=lambda s: save_state(path, s))
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    assert load_state(path).owned_services == {KEY}


def test_stop_during_a_wait_leaves_the_loop_and_the_kernel_alone():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    applied = kernel_state(rig.kernel)

    def signal_arrives(_seconds: float) -> None:  # SIGTERM while the watch blocks
        rig.agent.stop()

    rig.api.sleep = signal_arrives
    rig.agent.run()  # returns instead of blocking forever
    assert rig.agent.stopping
    assert kernel_state(rig.kernel) == applied


def test_status_write_failures_do_not_stop_plans_from_being_followed():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    original = rig.api.patch_status

    def forbidden(node, status):
        raise PlanSourceError("HTTP 403: forbidden")

    rig.api.patch_status = forbidden  # type: ignore[method-assign]
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))
    rig.agent.step()
    assert dests(rig.kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}
    rig.api.patch_status = original  # type: ignore[method-assign]
    rig.until(lambda: rig.status()["observedGeneration"] == 2)


def test_a_status_write_to_a_vanished_nodeplan_does_not_spin():
    rig = Rig()
    rig.publish(plans(*web("198.51.100.11")))

    def gone(node, status):
        raise PlanGone(f"NodePlan {node} not found")

    rig.api.patch_status = gone  # type: ignore[method-assign]
    start = rig.clock.t
    rig.steps(5)
    assert rig.clock.t > start  # each step waited for something
    assert dests(rig.kernel) == {("198.51.100.11", 80): 1}


def test_cli_refuses_a_kubeconfig_with_a_plan_file(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        agent_main(["--node", "n", "--plan", str(tmp_path / "p.json"),
                    "--kubeconfig", str(tmp_path / "kc")])
    assert exc.value.code == 2
    assert "--kubeconfig is for cluster mode" in capsys.readouterr().err


def test_cli_without_a_plan_or_a_cluster_says_what_to_give(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    code = agent_main(["--node", "n", "--state-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no Kubernetes API to read plans from" in err
    assert "--kubeconfig PATH" in err and "--plan FILE" in err


# ---------------------------------------------------------------- health verdicts in the status

A, B = ("198.51.100.11", 80), ("198.51.100.12", 80)
CHECK = {"type": "TCP", "retries": 1, "delayBeforeRetrySeconds": 1, "intervalSeconds": 2}


class CheckedRig(Rig):
    """A Rig whose agent has a HealthMonitor (not started: probe results are fed by hand,
    and a verdict change wakes the agent as in lvs-agent)."""

    def __init__(self, **kwargs) -> None:
        self.monitor = HealthMonitor(clock=lambda: self.clock(), workers=1,
                                     on_change=lambda: self.agent.wake())
        super().__init__(health=self.monitor, **kwargs)

    def probe(self, server: tuple[str, int], ok: bool, detail: str = "") -> None:
        assert self.agent.plan is not None
        [svc] = self.agent.plan.director.services
        assert svc.health is not None
        self.monitor.record(svc.key, svc.health, server,
                            ProbeResult(ok, detail or ("connected" if ok else
                                                       "connection refused"), 0.01))

    def health(self) -> dict:
        report: dict = self.status()["health"]
        return report


def checked_plan(*rips: str, **check) -> NodePlan:
    return plans(*web(*rips, healthCheck={**CHECK, **check}))


def test_health_is_reported_as_counters_while_every_server_is_up():
    rig = CheckedRig()
    rig.publish(checked_plan(A[0], B[0]))
    rig.agent.step()
    assert rig.health() == {"checked": 2, "down": 0, "servers": [], "quorumLost": [],
                            "sorryServer": [], "truncated": False}


def test_a_down_verdict_reaches_the_status_within_one_step_and_recovery_too():
    rig = CheckedRig()
    rig.publish(checked_plan(A[0], B[0]))
    rig.agent.step()
    rig.probe(A, True)
    rig.probe(B, True)
    patches = rig.patches()
    rig.probe(B, False)  # retries 1: the first failure only schedules a retry
    rig.probe(B, False)  # down: the monitor wakes the agent
    before = rig.clock.t
    rig.agent.step()
    assert rig.clock.t == before  # the wake ran the pass: no waiting for the timer
    assert rig.patches() == patches + 1
    assert rig.health() == {
        "checked": 2, "down": 1, "truncated": False, "quorumLost": [], "sorryServer": [],
        "servers": [{"virtualService": "default/web", "realServer": "default/r1",
                     "address": "198.51.100.12", "port": 80, "detail": "connection refused"}],
    }
    assert dests(rig.kernel) == {A: 1}  # the same pass took it out of IPVS
    rig.probe(B, True)
    rig.agent.step()
    assert rig.health()["down"] == 0 and rig.health()["servers"] == []
    assert dests(rig.kernel) == {A: 1, B: 1}


def test_the_health_report_is_stable_while_a_server_stays_down():
    rig = CheckedRig(interval=10.0)
    rig.publish(checked_plan(A[0], B[0]))
    rig.agent.step()
    rig.probe(B, False)  # the first check failing: down at once (keepalived)
    rig.agent.step()
    first = dict(rig.status())
    assert first["health"]["down"] == 1
    patches = rig.patches()
    start = rig.clock.t
    while rig.clock.t - start < 35:
        rig.probe(B, False)  # more failures: the counter grows, the verdict does not change
        rig.probe(A, True)
        rig.agent.step()
    heartbeats = rig.patches() - patches
    assert heartbeats <= 4  # about one per interval: the heartbeat, never a rewrite per probe
    last = rig.status()
    assert {k: v for k, v in last.items() if k != "lastSyncTime"} == \
        {k: v for k, v in first.items() if k != "lastSyncTime"}
    assert rig.agent.status_body() == rig.agent.status_body()


def test_quorum_lost_and_the_sorry_server_are_listed():
    rig = CheckedRig()
    rig.publish(checked_plan(A[0], B[0], quorum={"minimum": 1, "sorryServer": {
        "address": "198.51.100.99"}}))
    rig.agent.step()
    rig.probe(A, False)
    rig.probe(B, False)
    rig.agent.step()
    report = rig.health()
    assert report["down"] == 2
    assert report["quorumLost"] == ["default/web"] and report["sorryServer"] == ["default/web"]
    assert dests(rig.kernel) == {("198.51.100.99", 80): 1}


def test_the_down_list_is_bounded_and_says_it_was_cut(monkeypatch):
    import lvs_operator.agent.cluster as cluster

    monkeypatch.setattr(cluster, "MAX_HEALTH_ITEMS", 1)
    rig = CheckedRig()
    rig.publish(checked_plan(A[0], B[0]))
    rig.agent.step()
    rig.probe(A, False)
    rig.probe(B, False, "x" * 2000)
    rig.agent.step()
    report = rig.health()
    assert report["down"] == 2 and report["truncated"] is True
    assert [s["address"] for s in report["servers"]] == ["198.51.100.11"]
    rig.probe(A, True)
    rig.agent.step()
    [entry] = rig.health()["servers"]
    assert len(entry["detail"]) == cluster.MAX_DETAIL and rig.health()["truncated"] is False


def test_the_report_is_removed_when_nothing_is_checked_any_more():
    rig = CheckedRig()
    rig.publish(checked_plan(A[0], B[0]))
    rig.agent.step()
    assert rig.health()["checked"] == 2
    rig.publish(plans(*web(A[0], B[0])))  # the VirtualService's healthCheck was removed
    rig.agent.step()
    assert rig.status()["health"] is None  # null in a merge patch: the key goes
    patches = rig.patches()
    rig.clock.t += 3.0
    rig.api.touch(NODE)
    rig.agent.step()
    assert rig.patches() == patches  # and stays gone without rewrites


def test_an_agent_without_checks_writes_no_health():
    rig = Rig()
    rig.publish(plans(*web(A[0])))
    rig.agent.step()
    assert "health" not in rig.status()
