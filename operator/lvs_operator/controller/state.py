"""The operator's brain without the I/O: watched objects in, writes to make out.

`ControllerState` feeds every watched object to the incremental compiler, cuts changed node
plans into NodePlan/NodePlanShard writes, follows what each node's agent reports, and derives
each VirtualService's and RealServer's status from that. The kopf handlers and the API writer
around it (`controller/operator.py`) only move data in and out, so everything here is tested
without an API server, and restarts are safe: status already on an object and plans already
published are taken as the starting point, so an unchanged world writes nothing.

How "programmed" is decided: when a VirtualService's compiled form changes, the next publish
of each of its nodes gets a NodePlan generation; the VirtualService is programmed on that node
once the node's agent reports (NodePlan status.observedGeneration) that generation or a later
one, without failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..api.objects import API_GROUP, ObjectRef, parse_manifest
from ..api.schema import SpecError
from ..api.types import LabelSelector
from ..compiler.engine import Compiler
from ..compiler.fragment import Fragment, Issue
from ..compiler.shards import PlanSharder, PublishedPlan

__all__ = [
    "FINALIZER",
    "ControllerState",
    "EventRecord",
    "NodeReport",
    "StatusWrite",
]

FINALIZER = f"{API_GROUP}/kernel-cleanup"
OWN_KINDS = ("VirtualService", "RealServer")
MAX_NODES_IN_STATUS = 64
MAX_MESSAGE = 2000


def _now_text(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass
class NodeReport:
    """What one node's NodePlan says: the generation published, and what the agent applied."""

    generation: int = 0  # metadata.generation of the NodePlan as last written/seen
    applied: int = 0  # status.observedGeneration, written by the agent
    failures: tuple[str, ...] = ()
    last_sync: float | None = None


@dataclass(frozen=True)
class StatusWrite:
    ref: ObjectRef
    status: dict[str, Any]


@dataclass(frozen=True)
class EventRecord:
    ref: ObjectRef
    uid: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class _Own:
    """What the controller remembers about one VirtualService or RealServer."""

    ref: ObjectRef
    uid: str = ""
    generation: int = 1
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    invalid: str = ""  # the spec error, if the object could not be parsed
    status: dict[str, Any] = field(default_factory=dict)  # as on the object now
    # node -> (NodePlan generation that carries this object's current form, its generation)
    required: dict[str, tuple[int, int]] = field(default_factory=dict)
    pending: bool = True  # its current form has not been published yet


class ControllerState:
    def __init__(
        self,
        agent_node_selector: LabelSelector | None = None,
        *,
        sharder: PlanSharder | None = None,
        stale_agent_after: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.compiler = Compiler()
        self.sharder = sharder or PlanSharder()
        self.agent_node_selector = agent_node_selector
        self.stale_agent_after = stale_agent_after
        self.clock = clock
        self.synced = False
        self._seen: dict[ObjectRef, object] = {}  # parsed objects, to skip no-op events
        self._own: dict[ObjectRef, _Own] = {}
        self._node_labels: dict[str, Mapping[str, str]] = {}
        self.reports: dict[str, NodeReport] = {}
        self._published_nodes: set[str] = set()  # nodes with a NodePlan in the API
        self._nodes_to_publish: set[str] = set()
        self._status_dirty: set[ObjectRef] = set()
        self._refs_by_node: dict[str, set[ObjectRef]] = {}
        self._nodes_of: dict[ObjectRef, frozenset[str]] = {}
        self._pending: set[ObjectRef] = set()  # VirtualServices whose new form is unpublished
        # metrics: ("full" | "incremental", seconds) of the last plans_to_publish that
        # compiled something (None: it had nothing to do), and the condition counts
        self.last_compile: tuple[str, float] | None = None
        self._compiled_once = False
        self._condition_counts: dict[tuple[str, str, str], int] | None = None

    # ------------------------------------------------------------------ input

    def observe(self, doc: Mapping[str, Any]) -> None:
        """An object as a watch or list returned it (added or modified)."""
        kind = str(doc.get("kind") or "")
        meta = doc.get("metadata") or {}
        if kind in OWN_KINDS:
            self._observe_own(kind, doc, meta)
            return
        try:
            obj = parse_manifest(doc)
        except SpecError:
            return  # built-in objects the API server accepted; nothing LVS can use
        if obj is None:
            return
        if kind == "Node":
            self._node_labels[obj.ref.name] = dict(meta.get("labels") or {})
            self._update_agent_nodes()
        if self._seen.get(obj.ref) == obj:
            return  # e.g. a Node's heartbeat: nothing the compiler reads has changed
        self._seen[obj.ref] = obj
        self.compiler.upsert(obj)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """An object is gone from the API."""
        ref = ObjectRef(kind, "" if kind == "Node" else (namespace or "default"), name)
        self._forget_ref(ref)
        if kind in OWN_KINDS:
            own = self._own.pop(ref, None)
            if own is not None:
                self._status_dirty.discard(ref)
                self._condition_counts = None
        if kind == "Node":
            self._node_labels.pop(name, None)
            self._update_agent_nodes()

    def _forget_ref(self, ref: ObjectRef) -> None:
        self._seen.pop(ref, None)
        self.compiler.delete(ref)

    def _observe_own(self, kind: str, doc: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        ref = ObjectRef(kind, str(meta.get("namespace") or "default"), str(meta.get("name")))
        own = self._own.get(ref)
        if own is None or own.uid != str(meta.get("uid") or ""):
            own = self._own[ref] = _Own(ref)
        own.uid = str(meta.get("uid") or "")
        own.generation = int(meta.get("generation") or 1)
        own.finalizers = tuple(meta.get("finalizers") or ())
        own.status = dict(doc.get("status") or {})
        own.deleting = bool(meta.get("deletionTimestamp"))
        self._status_dirty.add(ref)
        self._condition_counts = None
        if own.deleting:
            own.invalid = ""
            if ref in self._seen:
                self._forget_ref(ref)
            return
        try:
            obj = parse_manifest(doc)
        except SpecError as exc:
            own.invalid = str(exc)
            if ref in self._seen:
                self._forget_ref(ref)
            return
        own.invalid = ""
        if obj is None or self._seen.get(ref) == obj:
            return
        self._seen[ref] = obj
        self.compiler.upsert(obj)

    def observe_nodeplan(self, doc: Mapping[str, Any]) -> None:
        """A NodePlan as listed or watched: its generation and what the agent reported."""
        meta = doc.get("metadata") or {}
        node = str(meta.get("name"))
        status = doc.get("status") or {}
        report = self.reports.setdefault(node, NodeReport())
        before = (report.applied, report.failures)
        report.generation = max(report.generation, int(meta.get("generation") or 0))
        report.applied = int(status.get("observedGeneration") or 0)
        report.failures = tuple(str(f) for f in status.get("failures") or ())
        report.last_sync = _parse_time(status.get("lastSyncTime"))
        self._published_nodes.add(node)
        if (report.applied, report.failures) != before:
            self._status_dirty |= self._refs_by_node.get(node, set())

    def nodeplan_gone(self, node: str) -> None:
        self._published_nodes.discard(node)
        self.reports.pop(node, None)
        self._nodes_to_publish.add(node)

    def _update_agent_nodes(self) -> None:
        sel = self.agent_node_selector
        if sel is None:
            return
        self.compiler.set_agent_nodes(
            n for n, labels in self._node_labels.items() if sel.matches(dict(labels))
        )

    # ------------------------------------------------------------------ publishing

    def plans_to_publish(self) -> tuple[list[PublishedPlan], list[str]]:
        """NodePlan/shard writes for every node whose plan changed, and nodes whose NodePlan
        must go (the Node is gone or has no agent any more)."""
        began = time.perf_counter()
        changed = self.compiler.take_changed_nodes()
        refs = self.compiler.take_changed_refs()
        for ref in refs:
            own = self._own.get(ref)
            if own is not None:
                own.pending = True
                self._pending.add(ref)
            self._status_dirty.add(ref)
        agent_nodes = set(self.compiler.nodes())
        wanted = (changed | self._nodes_to_publish | (agent_nodes - self._published_nodes))
        self._nodes_to_publish = set()
        writes = []
        for node in sorted(wanted & agent_nodes):
            out = self.sharder.update(self.compiler.plan(node))
            if out.spec is not None or node not in self._published_nodes:
                if out.spec is None:  # known to the sharder but not in the API: write again
                    self.sharder.forget(node)
                    out = self.sharder.update(self.compiler.plan(node))
                writes.append(out)
        gone = sorted(self._published_nodes - agent_nodes)
        self.last_compile = None
        if changed or refs or writes:
            kind = "incremental" if self._compiled_once else "full"
            self.last_compile = (kind, time.perf_counter() - began)
            self._compiled_once = True
        return writes, gone

    def published(self, node: str, generation: int) -> None:
        """A NodePlan write succeeded with this metadata.generation."""
        report = self.reports.setdefault(node, NodeReport())
        report.generation = generation
        self._published_nodes.add(node)

    def publish_failed(self, node: str) -> None:
        """Write it again next round (the sharder must not believe it was written)."""
        self.sharder.forget(node)
        self._nodes_to_publish.add(node)

    def removed(self, node: str) -> None:
        self._published_nodes.discard(node)
        self.reports.pop(node, None)
        self.sharder.forget(node)

    def known_plan(self, node: str, spec: Mapping[str, Any],
                   shards: Mapping[str, Mapping[str, Any]]) -> None:
        """Seed the sharder with what is already published (operator restart)."""
        self.sharder.known(node, spec, shards)

    def after_publish(self, failed_nodes: Iterable[str] = ()) -> None:
        """Record, for each VirtualService whose form changed, the NodePlan generation on
        each of its nodes that carries it. Objects on a node whose write failed stay pending."""
        failed = set(failed_nodes)
        for ref in sorted(self._pending):
            own = self._own.get(ref)
            if own is None or ref.kind != "VirtualService":
                self._pending.discard(ref)
                continue
            frag = self.compiler.fragment(ref)
            active = frag is not None and self.compiler.is_active(ref)
            nodes = frag.nodes if (frag is not None and active) else frozenset()
            if nodes & failed:
                continue
            old_nodes = self._nodes_of.get(ref, frozenset())
            for n in old_nodes - nodes:
                self._refs_by_node.get(n, set()).discard(ref)
            for n in nodes:
                self._refs_by_node.setdefault(n, set()).add(ref)
            # deleting: wait for the nodes it was on to apply a plan without it
            watch = nodes | (old_nodes if own.deleting else frozenset())
            own.required = {
                n: (self.reports.get(n, NodeReport()).generation, own.generation) for n in watch
            }
            self._nodes_of[ref] = nodes
            own.pending = False
            self._pending.discard(ref)
            self._status_dirty.add(ref)

    # ------------------------------------------------------------------ status

    def _agent_alive(self, node: str, now: float) -> bool:
        rep = self.reports.get(node)
        return (
            rep is not None and rep.last_sync is not None
            and now - rep.last_sync <= self.stale_agent_after
        )

    def finalizable(self) -> list[tuple[ObjectRef, str]]:
        """Deleted VirtualServices/RealServers whose kernel state is gone from every node with
        a live agent: their finalizer can be removed. (ref, warning or "")."""
        out: list[tuple[ObjectRef, str]] = []
        now = self.clock()
        for ref, own in self._own.items():
            if not own.deleting or FINALIZER not in own.finalizers:
                continue
            if ref.kind == "RealServer":
                out.append((ref, ""))
                continue
            if own.pending:
                continue
            waiting, skipped = [], []
            for node, (gen, _) in sorted(own.required.items()):
                rep = self.reports.get(node)
                if rep is None or rep.applied >= gen:
                    continue
                if self._agent_alive(node, now):
                    waiting.append(node)
                else:
                    skipped.append(node)
            if not waiting:
                note = ""
                if skipped:
                    note = (f"removed without confirmation from nodes whose agent is not "
                            f"reporting: {', '.join(skipped)}")
                out.append((ref, note))
        return out

    def needs_finalizer(self) -> list[ObjectRef]:
        """VirtualServices only: their deletion must wait for the kernel state to go. A
        RealServer's removal is an ordinary plan change (its destinations drain)."""
        return [
            ref for ref, own in self._own.items()
            if ref.kind == "VirtualService" and not own.deleting and not own.invalid
            and FINALIZER not in own.finalizers
        ]

    def status_writes(self) -> tuple[list[StatusWrite], list[EventRecord]]:
        """Status for every object whose inputs changed, only where it differs from what the
        object carries; Events for condition changes."""
        if not self._status_dirty:
            return [], []
        dirty, self._status_dirty = self._status_dirty, set()
        issues = self.compiler.issues()
        now = self.clock()
        writes, events = [], []
        for ref in sorted(dirty):
            own = self._own.get(ref)
            if own is None or own.deleting:
                continue
            status = self._status_of(own, issues.get(ref, ()), now)
            if _same_status(status, own.status):
                continue
            events.extend(self._events(own, status))
            own.status = status
            writes.append(StatusWrite(ref, status))
        if writes:
            self._condition_counts = None
        return writes, events

    def virtualservice_conditions(self) -> dict[tuple[str, str, str], int]:
        """(condition type, status, reason) -> how many VirtualServices (not being deleted)
        carry it, for lvs_operator_virtualservices; recounted only after a change."""
        if self._condition_counts is None:
            counts: dict[tuple[str, str, str], int] = {}
            for ref, own in self._own.items():
                if ref.kind != "VirtualService" or own.deleting:
                    continue
                for c in own.status.get("conditions") or ():
                    if isinstance(c, Mapping) and c.get("type"):
                        key = (str(c["type"]), str(c.get("status", "")), str(c.get("reason", "")))
                        counts[key] = counts.get(key, 0) + 1
            self._condition_counts = counts
        return self._condition_counts

    def _status_of(self, own: _Own, issues: tuple[Issue, ...], now: float) -> dict[str, Any]:
        conds: list[tuple[str, bool, str, str]] = []  # type, status, reason, message
        errors = [i for i in issues if i.severity == "Error"]
        warnings = [i for i in issues if i.severity != "Error"]
        if own.invalid:
            errors = [Issue(own.ref, "InvalidSpec", own.invalid)]
        accepted = not errors
        conds.append(
            ("Accepted", True, "Accepted", "the spec is valid and compiled")
            if accepted
            else ("Accepted", False, errors[0].reason, _join(errors))
        )
        status: dict[str, Any] = {"observedGeneration": own.generation}
        if own.ref.kind == "VirtualService":
            frag = None if own.invalid else self.compiler.fragment(own.ref)
            active = accepted and frag is not None and self.compiler.is_active(own.ref)
            nodes_status, programmed = self._programmed(own, frag, active, now)
            ready_backends = 0
            if frag is not None:
                ready_backends = frag.backends_total - frag.backends_draining
                status["backends"] = {
                    "total": frag.backends_total,
                    "ready": ready_backends,
                    "draining": frag.backends_draining,
                }
            conds.append(("Programmed", *programmed))
            if programmed[0] and ready_backends > 0:
                conds.append(("Ready", True, "Ready",
                              f"{ready_backends} ready real server(s) behind a programmed VIP"))
            elif programmed[0]:
                conds.append(("Ready", False, "NoReadyBackends",
                              "programmed, but no real server takes new connections"))
            else:
                conds.append(("Ready", False, "NotProgrammed", programmed[2]))
            failing = [n for n in nodes_status if n.get("message")]
            if nodes_status:
                status["nodes"] = nodes_status[:MAX_NODES_IN_STATUS]
            degraded = warnings or failing
            if warnings:
                conds.append(("Degraded", True, warnings[0].reason, _join(warnings)))
            elif failing:
                conds.append(("Degraded", True, "NodeFailures", "; ".join(
                    f"{n['name']}: {n['message']}" for n in failing[:5])))
            if not degraded:
                conds.append(("Degraded", False, "AsExpected", "no warnings"))
        else:
            if warnings:
                conds.append(("Degraded", True, warnings[0].reason, _join(warnings)))
            else:
                conds.append(("Degraded", False, "AsExpected", "no warnings"))
            status["health"] = own.status.get("health", "Unknown")
        status["conditions"] = _conditions(conds, own, now)
        return status

    def _programmed(
        self, own: _Own, frag: Fragment | None, active: bool, now: float
    ) -> tuple[list[dict[str, Any]], tuple[bool, str, str]]:
        if not active or frag is None:
            return [], (False, "NotAccepted", "not programmed: see the Accepted condition")
        if not frag.nodes:
            return [], (False, "NoNodes", "no node with an agent matches directors.nodeSelector")
        if own.pending:
            return [], (False, "Pending", "the new plan is being published")
        nodes_status = []
        waiting, failing = [], []
        for node in sorted(frag.nodes):
            role = "Director" if node in frag.directors else "Backend"
            gen, vs_gen = own.required.get(node, (0, own.generation))
            rep = self.reports.get(node)
            entry: dict[str, Any] = {"name": node, "role": role}
            done = rep is not None and rep.applied >= gen and gen > 0
            if done and rep is not None and rep.failures:
                entry["message"] = _clip("; ".join(rep.failures[:3]))
                failing.append(node)
                done = False
            entry["programmed"] = done
            if done:
                entry["observedGeneration"] = vs_gen
            elif node not in failing:
                waiting.append(node)
            nodes_status.append(entry)
        if failing:
            return nodes_status, (False, "ProgrammingFailed",
                                  f"agent errors on {', '.join(failing[:5])}")
        if waiting:
            return nodes_status, (False, "Pending",
                                  f"waiting for the agent on {', '.join(waiting[:5])}"
                                  + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""))
        return nodes_status, (True, "Programmed", f"programmed on {len(nodes_status)} node(s)")

    def _events(self, own: _Own, status: dict[str, Any]) -> list[EventRecord]:
        old = {c["type"]: c for c in own.status.get("conditions") or ()}
        out = []
        for c in status["conditions"]:
            prev = old.get(c["type"])
            if prev is not None and (prev["status"], prev["reason"]) == (c["status"], c["reason"]):
                continue
            bad = (c["type"] in ("Accepted", "Programmed") and c["status"] == "False"
                   and c["reason"] not in ("Pending", "NotAccepted")) or (
                c["type"] == "Degraded" and c["status"] == "True")
            good = c["type"] == "Programmed" and c["status"] == "True"
            if bad or good:
                out.append(EventRecord(own.ref, own.uid, "Warning" if bad else "Normal",
                                       c["reason"], c["message"]))
        return out

    def status_write_failed(self, ref: ObjectRef) -> None:
        """Compute and write it again next round."""
        own = self._own.get(ref)
        if own is not None:
            own.status = {}
            self._status_dirty.add(ref)
            self._condition_counts = None

    def uid_of(self, ref: ObjectRef) -> str:
        own = self._own.get(ref)
        return own.uid if own is not None else ""


def _join(issues: Iterable[Issue]) -> str:
    parts = []
    for i in issues:
        parts.append(f"{i.field}: {i.message}" if i.field else i.message)
    return _clip("; ".join(dict.fromkeys(parts)))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _conditions(
    conds: list[tuple[str, bool, str, str]], own: _Own, now: float
) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in own.status.get("conditions") or ()}
    out = []
    for ctype, ok, reason, message in conds:
        value = "True" if ok else "False"
        prev = old.get(ctype)
        since = _now_text(now)
        if prev is not None and prev.get("status") == value and prev.get("lastTransitionTime"):
            since = prev["lastTransitionTime"]
        out.append({
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": own.generation,
        })
    return out


def _same_status(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    keys = set(new) | {k for k in old if k != "health"}
    return all(new.get(k) == old.get(k) for k in keys)

