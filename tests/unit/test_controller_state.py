"""The operator without an API server: watched objects in, plan writes, status and Events out.

Each test is state_in -> events -> state_out, with the agent's reports played by hand."""

from __future__ import annotations

import copy
from typing import Any

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
    w = World()
    w.apply(node("dir-1", **DIRECTOR_LABELS))
    w.apply(node("node-1"))
    w.apply(vs("web", "192.0.2.10"))
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


def test_a_restarted_operator_writes_nothing_when_nothing_changed():
    w = small_world()
    w.agent_applies("dir-1")
    w.round()
    fresh = World(ControllerState(sharder=PlanSharder(), clock=lambda: NOW))
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
