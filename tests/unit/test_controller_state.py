"""The operator without an API server: watched objects in, plan writes, status and Events out.

Each test is state_in -> events -> state_out, with the agent's reports played by hand."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from lvs_operator.api.objects import ObjectRef
from lvs_operator.compiler.shards import PlanSharder, assemble_plan
from lvs_operator.controller.state import FINALIZER, ControllerState

from .builders import DIRECTOR_LABELS, node, rs, vs

NOW = 1_800_000_000.0
SYNC_TEXT = "2027-01-15T08:00:00Z"  # == NOW


class World:
    """A ControllerState plus the API it writes to, reduced to dicts."""

    def __init__(self, state: ControllerState | None = None) -> None:
        self.clock = NOW
        self.state = state or ControllerState(clock=lambda: self.clock)
        self.plans: dict[str, dict[str, Any]] = {}  # name -> NodePlan object
        self.shards: dict[str, dict[str, Any]] = {}
        self.objects: dict[ObjectRef, dict[str, Any]] = {}
        self.events: list[Any] = []
        self.written_plans = 0
        self.written_status = 0

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        meta = doc["metadata"]
        meta.setdefault("uid", "uid-" + meta["name"])
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        if doc["kind"] in ("VirtualService", "RealServer"):
            meta.setdefault("namespace", "default")
            ref = ObjectRef(doc["kind"], meta["namespace"], meta["name"])
            old = self.objects.get(ref)
            if old is not None:
                doc["status"] = old.get("status", {})
                meta["finalizers"] = old["metadata"].get("finalizers", [])
            self.objects[ref] = doc
        self.state.observe(doc)
        return doc

    def round(self) -> None:
        """What Operator.round does, against the dicts."""
        writes, gone = self.state.plans_to_publish()
        for out in writes:
            self.written_plans += 1
            for name, spec in out.shards.items():
                self.shards[name] = spec
            plan = self.plans.setdefault(out.node, {"metadata": {"name": out.node,
                                                                 "generation": 0}})
            plan["metadata"]["generation"] += 1
            plan["spec"] = out.spec
            for name in out.obsolete:
                self.shards.pop(name, None)
            self.state.published(out.node, plan["metadata"]["generation"])
        for n in gone:
            self.plans.pop(n, None)
            self.state.removed(n)
        self.state.after_publish()
        for ref in self.state.needs_finalizer():
            self.objects[ref]["metadata"].setdefault("finalizers", []).append(FINALIZER)
            self.state.observe(self.objects[ref])
        statuses, events = self.state.status_writes()
        for w in statuses:
            self.written_status += 1
            self.objects[w.ref]["status"] = w.status
            self.state.observe(self.objects[w.ref])
        self.events.extend(events)

    def agent_applies(self, node_name: str, failures: tuple[str, ...] = ()) -> None:
        plan = self.plans[node_name]
        plan["status"] = {"observedGeneration": plan["metadata"]["generation"],
                          "lastSyncTime": SYNC_TEXT, "failures": list(failures)}
        self.state.observe_nodeplan(plan)

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        obj = self.objects[ObjectRef("VirtualService", "default", name)]
        return {c["type"]: c for c in obj["status"]["conditions"]}[ctype]


def small_world() -> World:
    return populated(World())


W = TypeVar("W", bound="World")


def populated(w: W, directors: tuple[str, ...] = ("dir-1",), **vs_spec: Any) -> W:
    """`w` with director node(s), node-1, VirtualService web (192.0.2.10) and RealServers
    web-1/web-2, after one round."""
    for d in directors:
        w.apply(node(d, **DIRECTOR_LABELS))
    w.apply(node("node-1"))
    w.apply(vs("web", "192.0.2.10", **vs_spec))
    w.apply(rs("web-1", "198.51.100.11", app="web"))
    w.apply(rs("web-2", "198.51.100.12", app="web"))
    w.state.synced = True
    w.round()
    return w


def test_first_round_publishes_every_agent_node_and_waits_for_agents():
    w = small_world()
    assert set(w.plans) == {"dir-1", "node-1"}
    assert w.condition("web", "Accepted")["status"] == "True"
    programmed = w.condition("web", "Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "Pending")
    assert "dir-1" in programmed["message"]
    obj = w.objects[ObjectRef("VirtualService", "default", "web")]
    assert obj["status"]["backends"] == {"total": 2, "ready": 2, "draining": 0}
    assert FINALIZER in obj["metadata"]["finalizers"]


def test_agent_report_turns_programmed_and_ready_true_with_an_event():
    w = small_world()
    w.agent_applies("dir-1")
    w.round()
    assert w.condition("web", "Programmed")["status"] == "True"
    assert w.condition("web", "Ready")["status"] == "True"
    obj = w.objects[ObjectRef("VirtualService", "default", "web")]
    assert obj["status"]["nodes"] == [
        {"name": "dir-1", "role": "Director", "programmed": True, "observedGeneration": 1}
    ]
    assert [(e.type, e.reason) for e in w.events] == [("Normal", "Programmed")]


def test_a_new_backend_is_pending_until_the_agent_applies_the_new_generation():
    w = small_world()
    w.agent_applies("dir-1")
    w.round()
    w.apply(rs("web-3", "198.51.100.13", app="web"))
    w.round()
    assert w.plans["dir-1"]["metadata"]["generation"] == 2
    assert w.condition("web", "Programmed")["reason"] == "Pending"
    w.agent_applies("dir-1")
    w.round()
    assert w.condition("web", "Programmed")["status"] == "True"


def test_agent_failures_show_as_programming_failed_and_degraded():
    w = small_world()
    w.agent_applies("dir-1", failures=("add service tcp/192.0.2.10:80: no such module",))
    w.round()
    assert w.condition("web", "Programmed")["reason"] == "ProgrammingFailed"
    degraded = w.condition("web", "Degraded")
    assert degraded["status"] == "True" and "no such module" in degraded["message"]
    assert ("Warning", "ProgrammingFailed") in [(e.type, e.reason) for e in w.events]


def test_port_conflict_rejects_the_younger_object_and_leaves_the_older_working():
    w = small_world()
    w.agent_applies("dir-1")
    w.round()
    w.apply(vs("web-copy", "192.0.2.10", created="2026-06-01T00:00:00Z", selector={"app": "web"}))
    w.round()
    accepted = w.condition("web-copy", "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "PortConflict")
    assert "default/web" in accepted["message"]
    assert w.condition("web", "Programmed")["status"] == "True"
    assert w.condition("web", "Degraded")["reason"] == "ConflictRejected"
    assert ("Warning", "PortConflict") in [(e.type, e.reason) for e in w.events]


def test_a_spec_the_model_rejects_is_reported_not_compiled():
    w = small_world()
    bad = vs("broken", "192.0.2.99")
    bad["spec"]["scheduler"] = {"name": "no-such"}
    w.apply(bad)
    w.round()
    accepted = w.condition("broken", "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "scheduler" in accepted["message"]


def test_node_heartbeat_recompiles_nothing():
    w = small_world()
    before = w.written_plans
    heartbeat = node("node-1")
    heartbeat["metadata"]["resourceVersion"] = "999"
    heartbeat["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    w.apply(heartbeat)
    w.round()
    assert w.written_plans == before
    assert not w.state.compiler.take_changed_refs()


def programmed_then_deleted() -> tuple[World, ObjectRef]:
    """`web` programmed on dir-1, then `kubectl delete`d (deletionTimestamp set, finalizer
    still on), and the plan without it published."""
    w = small_world()
    w.agent_applies("dir-1")
    w.round()
    ref = ObjectRef("VirtualService", "default", "web")
    doc = copy.deepcopy(w.objects[ref])
    doc["metadata"]["deletionTimestamp"] = "2026-11-21T00:00:00Z"
    w.apply(doc)
    w.round()
    return w, ref


def test_deletion_waits_for_the_agent_to_remove_the_kernel_state():
    w, ref = programmed_then_deleted()
    assert w.plans["dir-1"]["metadata"]["generation"] == 2
    assert assemble_plan(w.plans["dir-1"]["spec"], w.shards).director.services == ()
    assert w.state.finalizable() == []  # the agent has not applied it yet
    w.agent_applies("dir-1")
    assert w.state.finalizable() == [(ref, "")]


def test_deletion_does_not_wait_forever_for_a_dead_agent():
    w, ref = programmed_then_deleted()
    w.clock += 3600  # no report for an hour
    [(done, note)] = w.state.finalizable()
    assert done == ref and "dir-1" in note


def restarted(w: World, world: type[World]) -> World:
    """A new operator that lists what `w`'s left in the API (plans, shards, objects) and runs
    one round."""
    fresh = world(ControllerState(sharder=PlanSharder(), clock=lambda: NOW))
    for name, plan in w.plans.items():
        fresh.state.observe_nodeplan(plan)
        fresh.state.known_plan(name, plan["spec"], w.shards)
    fresh.plans = copy.deepcopy(w.plans)
    fresh.apply(node("dir-1", **DIRECTOR_LABELS))
    fresh.apply(node("node-1"))
    for doc in w.objects.values():
        fresh.apply(doc)
    fresh.state.synced = True
    fresh.round()
    return fresh


def test_a_restarted_operator_writes_nothing_when_nothing_changed():
    w = small_world()
    w.agent_applies("dir-1")
    w.round()
    fresh = restarted(w, World)
    assert fresh.written_plans == 0
    assert fresh.written_status == 0
    assert fresh.events == []


def test_a_node_without_agent_label_gets_no_plan_when_a_selector_is_set():
    from lvs_operator.api.types import LabelSelector

    w = World(ControllerState(LabelSelector(match_labels={"lvs.dev/agent": "true"}),
                              clock=lambda: NOW))
    w.apply(node("dir-1", **DIRECTOR_LABELS, **{"lvs.dev/agent": "true"}))
    w.apply(node("dir-2", **DIRECTOR_LABELS))
    w.apply(vs("web", "192.0.2.10"))
    w.state.synced = True
    w.round()
    assert set(w.plans) == {"dir-1"}


# ---------------------------------------------------------------- health checks

CHECK = {"type": "TCP", "retries": 1, "intervalSeconds": 2}


def health(*down: tuple[str, str, str, int, str], checked: int = 2,
           quorum_lost: tuple[str, ...] = (), sorry: tuple[str, ...] = (),
           truncated: bool = False) -> dict[str, Any]:
    """A director's status.health as ClusterAgent.status_body writes it."""
    return {
        "checked": checked,
        "down": len(down),
        "servers": [{"virtualService": v, "realServer": r, "address": a, "port": p,
                     "detail": d} for v, r, a, p, d in down],
        "quorumLost": list(quorum_lost),
        "sorryServer": list(sorry),
        "truncated": truncated,
    }


WEB2_DOWN = ("default/web", "default/web-2", "198.51.100.12", 80, "connection refused")


class HealthWorld(World):
    def report(self, node_name: str, report: dict[str, Any] | None) -> None:
        """The agent on `node_name` applied the current generation and says this about its
        checks (a new NodePlan status)."""
        plan = self.plans[node_name]
        plan["status"] = {"observedGeneration": plan["metadata"]["generation"],
                          "lastSyncTime": SYNC_TEXT, "failures": []}
        if report is not None:
            plan["status"]["health"] = report
        self.state.observe_nodeplan(plan)

    def rs_status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.objects[ObjectRef("RealServer", "default", name)]["status"]
        return status

    def rs_condition(self, name: str, ctype: str = "Healthy") -> dict[str, Any] | None:
        return {c["type"]: c for c in self.rs_status(name)["conditions"]}.get(ctype)

    def events_of(self, name: str) -> list[tuple[str, str, str]]:
        return [(e.ref.kind, e.type, e.reason) for e in self.events if e.ref.name == name]


def checked_world(*directors: str, check: dict[str, Any] | None = CHECK) -> HealthWorld:
    extra = {"healthCheck": check} if check is not None else {}
    return populated(HealthWorld(), directors or ("dir-1",), **extra)


def test_checked_real_servers_go_from_unknown_to_up_once_programmed_without_events():
    w = checked_world()
    assert w.rs_status("web-1")["health"] == "Unknown"
    assert w.rs_condition("web-1")["status"] == "Unknown"  # type: ignore[index]
    assert w.condition("web", "Healthy")["status"] == "Unknown"
    w.report("dir-1", health())
    w.round()
    for name in ("web-1", "web-2"):
        assert w.rs_status(name)["health"] == "Up"
        cond = w.rs_condition(name)
        assert cond is not None
        assert (cond["status"], cond["reason"]) == ("True", "HealthCheckPassed")
        assert "default/web" in cond["message"] and "dir-1" in cond["message"]
    healthy = w.condition("web", "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("True", "AllBackendsHealthy")
    obj = w.objects[ObjectRef("VirtualService", "default", "web")]
    assert obj["status"]["backends"] == {"total": 2, "ready": 2, "draining": 0, "down": 0}
    # a first Up is no Event (a million real servers would mean a million Events)
    assert [(e.type, e.reason) for e in w.events] == [("Normal", "Programmed")]


def test_a_down_report_marks_the_real_server_down_and_the_virtualservice_unhealthy():
    w = checked_world()
    w.report("dir-1", health())
    w.round()
    written, w.events = w.written_status, []
    w.report("dir-1", health(WEB2_DOWN))
    w.round()
    assert w.written_status - written == 2  # web-2 and web; web-1 is not rewritten
    assert w.rs_status("web-2")["health"] == "Down"
    cond = w.rs_condition("web-2")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False",
                                                                     "HealthCheckFailed")
    for part in ("dir-1", "198.51.100.12:80", "connection refused"):
        assert part in cond["message"], cond["message"]
    assert w.rs_status("web-1")["health"] == "Up"
    healthy = w.condition("web", "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "BackendsDown")
    assert healthy["message"] == ("1 of 2 real server(s) fail their health checks: "
                                  "198.51.100.12:80 (connection refused) on dir-1")
    obj = w.objects[ObjectRef("VirtualService", "default", "web")]
    assert obj["status"]["backends"] == {"total": 2, "ready": 1, "draining": 0, "down": 1}
    assert w.condition("web", "Ready")["status"] == "True"  # web-1 still takes connections
    assert sorted(w.events_of("web-2") + w.events_of("web")) == [
        ("RealServer", "Warning", "HealthCheckFailed"),
        ("VirtualService", "Warning", "BackendsDown"),
    ]
    # the same report again (a heartbeat): nothing to write, no Event
    written, w.events = w.written_status, []
    w.report("dir-1", health(WEB2_DOWN))
    w.round()
    assert w.written_status == written and w.events == []


def test_recovery_turns_up_again_with_normal_events():
    w = checked_world()
    w.report("dir-1", health())
    w.round()
    w.report("dir-1", health(WEB2_DOWN))
    w.round()
    since = w.rs_condition("web-2")["lastTransitionTime"]  # type: ignore[index]
    w.events = []
    w.clock += 60
    w.report("dir-1", health())
    w.round()
    assert w.rs_status("web-2")["health"] == "Up"
    assert w.rs_condition("web-2")["lastTransitionTime"] > since  # type: ignore[index]
    assert w.condition("web", "Healthy")["reason"] == "AllBackendsHealthy"
    assert sorted((k, t, r) for k, t, r in w.events_of("web-2") + w.events_of("web")) == [
        ("RealServer", "Normal", "HealthCheckPassed"),
        ("VirtualService", "Normal", "BackendsHealthy"),
    ]


def test_one_director_of_two_seeing_a_server_down_is_enough_and_is_named():
    w = checked_world("dir-1", "dir-2")
    w.report("dir-1", health())
    w.report("dir-2", health(WEB2_DOWN))
    w.round()
    assert w.rs_status("web-2")["health"] == "Down"
    message = w.rs_condition("web-2")["message"]  # type: ignore[index]
    assert "dir-2" in message and "dir-1" not in message
    assert w.rs_status("web-1")["health"] == "Up"
    assert "dir-1, dir-2" in w.rs_condition("web-1")["message"]  # type: ignore[index]
    healthy = w.condition("web", "Healthy")
    assert healthy["reason"] == "BackendsDown" and healthy["message"].endswith("on dir-2")


def test_a_truncated_report_leaves_unlisted_servers_unknown():
    w = checked_world()
    w.report("dir-1", health())
    w.round()
    w.report("dir-1", health(WEB2_DOWN, truncated=True))
    w.round()
    assert w.rs_status("web-2")["health"] == "Down"
    assert w.rs_status("web-1")["health"] == "Unknown"
    cond = w.rs_condition("web-1")
    assert cond is not None and (cond["status"], cond["reason"]) == ("Unknown",
                                                                     "ReportTruncated")
    assert w.condition("web", "Healthy")["reason"] == "BackendsDown"
    assert not [e for e in w.events if e.ref.name == "web-1" and e.type == "Warning"]


def test_quorum_lost_is_reported_with_its_own_reason_and_no_ready_backend():
    w = checked_world(check={**CHECK, "quorum": {
        "minimum": 1, "sorryServer": {"address": "198.51.100.99"}}})
    w.report("dir-1", health())
    w.round()
    w.events = []
    web1_down = ("default/web", "default/web-1", "198.51.100.11", 80, "timed out")
    w.report("dir-1", health(web1_down, WEB2_DOWN, quorum_lost=("default/web",),
                             sorry=("default/web",)))
    w.round()
    healthy = w.condition("web", "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "QuorumLost")
    assert "sorry server serves on dir-1" in healthy["message"]
    assert "2 of 2 real server(s)" in healthy["message"]
    ready = w.condition("web", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoReadyBackends")
    assert ("VirtualService", "Warning", "QuorumLost") in w.events_of("web")
    assert {w.rs_status(n)["health"] for n in ("web-1", "web-2")} == {"Down"}


def test_without_a_health_check_there_is_no_healthy_condition_and_health_is_unknown():
    w = checked_world(check=None)
    w.report("dir-1", None)
    w.round()
    assert w.condition("web", "Programmed")["status"] == "True"
    vs_status = w.objects[ObjectRef("VirtualService", "default", "web")]["status"]
    assert "Healthy" not in {c["type"] for c in vs_status["conditions"]}
    assert "down" not in vs_status["backends"]
    assert w.rs_status("web-1")["health"] == "Unknown"
    assert w.rs_condition("web-1") is None


def test_a_stale_down_report_of_a_server_that_left_the_pool_is_ignored():
    w = checked_world()
    w.report("dir-1", health())
    w.round()
    w.apply(rs("web-2", "198.51.100.12", app="other"))  # web-2 leaves web's pool
    w.round()
    w.report("dir-1", health(WEB2_DOWN))  # what dir-1 says about the generation it has
    w.round()
    assert w.rs_status("web-2")["health"] == "Unknown"
    assert w.rs_condition("web-2") is None
    assert w.condition("web", "Healthy")["reason"] == "AllBackendsHealthy"


def test_a_new_generation_does_not_flap_the_health_of_servers_already_known():
    w = checked_world()
    w.report("dir-1", health())
    w.round()
    written = w.written_status
    w.apply(rs("web-3", "198.51.100.13", app="web"))
    w.round()  # generation 2 published, not applied yet
    assert w.condition("web", "Programmed")["reason"] == "Pending"
    assert w.rs_status("web-1")["health"] == "Up"
    assert w.rs_status("web-3")["health"] == "Unknown"
    assert w.written_status - written == 2  # web (Pending) and the new web-3
    w.report("dir-1", health(checked=3))
    w.round()
    assert w.rs_status("web-3")["health"] == "Up"
    assert w.rs_status("web-1")["health"] == "Up"


def test_a_restarted_operator_writes_nothing_when_health_is_unchanged():
    w = checked_world()
    w.report("dir-1", health(WEB2_DOWN))
    w.round()
    fresh = restarted(w, HealthWorld)
    assert (fresh.written_plans, fresh.written_status, fresh.events) == (0, 0, [])


def test_a_health_report_change_recomputes_only_what_it_names():
    w = HealthWorld()
    w.apply(node("dir-1", **DIRECTOR_LABELS))
    for i in range(20):
        w.apply(vs(f"s{i}", f"192.0.2.{i + 1}", selector={"app": f"a{i}"}, healthCheck=CHECK))
        w.apply(rs(f"r{i}", f"198.51.100.{i + 1}", app=f"a{i}"))
    w.state.synced = True
    w.round()
    w.report("dir-1", health(checked=20))
    w.round()
    assert w.rs_status("r7")["health"] == "Up"
    w.round()  # the written objects come back through the watch: nothing left to do
    assert not w.state._status_dirty
    w.report("dir-1", health(("default/s7", "default/r7", "198.51.100.8", 80, "refused"),
                             checked=20))
    assert w.state._status_dirty == {ObjectRef("VirtualService", "default", "s7"),
                                     ObjectRef("RealServer", "default", "r7")}
    w.round()
    assert w.rs_status("r7")["health"] == "Down"
