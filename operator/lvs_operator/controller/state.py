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

Health checks: each director's agent reports in its NodePlan status (status.health) which
checked real servers are down, which VirtualServices lost quorum and which use their sorry
server; only the down ones, bounded, so a healthy node's report is a few counters. The
controller turns that into RealServer `status.health` (Up/Down/Unknown) and a `Healthy`
condition on RealServers and health-checked VirtualServices, with Events on transitions.
A change in one node's report recomputes only the objects the old and new reports name.
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
    "DownServer",
    "EventRecord",
    "NodeHealth",
    "NodeReport",
    "StatusWrite",
]

FINALIZER = f"{API_GROUP}/kernel-cleanup"
OWN_KINDS = ("VirtualService", "RealServer")
MAX_NODES_IN_STATUS = 64
MAX_MESSAGE = 2000
MAX_LISTED = 5  # servers or nodes named in one condition message


def _now_text(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class DownServer:
    """One checked real server a director's agent reports down (NodePlan status.health)."""

    virtual_service: ObjectRef
    real_server: ObjectRef | None
    address: str
    port: int
    detail: str = ""

    @property
    def where(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class NodeHealth:
    """A director's health report: counters, the down servers (bounded: `truncated` says the
    agent left some out), and the VirtualServices with quorum lost / on their sorry server."""

    checked: int = 0
    down: int = 0
    servers: tuple[DownServer, ...] = ()
    truncated: bool = False
    quorum_lost: frozenset[ObjectRef] = frozenset()
    sorry: frozenset[ObjectRef] = frozenset()
    by_vs: Mapping[ObjectRef, tuple[DownServer, ...]] = field(
        default_factory=dict, compare=False, repr=False)
    by_rs: Mapping[ObjectRef, tuple[DownServer, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, doc: Any) -> NodeHealth | None:
        """status.health as the agent wrote it; None when there is none (no checks there)."""
        if not isinstance(doc, Mapping):
            return None
        servers = []
        for entry in doc.get("servers") or ():
            if not isinstance(entry, Mapping):
                continue
            vs_ref = _ref("VirtualService", entry.get("virtualService"))
            if vs_ref is None:
                continue
            try:
                port = int(entry.get("port") or 0)
            except (TypeError, ValueError):
                port = 0
            servers.append(DownServer(vs_ref, _ref("RealServer", entry.get("realServer")),
                                      str(entry.get("address") or ""), port,
                                      str(entry.get("detail") or "")))
        by_vs: dict[ObjectRef, list[DownServer]] = {}
        by_rs: dict[ObjectRef, list[DownServer]] = {}
        for d in servers:
            by_vs.setdefault(d.virtual_service, []).append(d)
            if d.real_server is not None:
                by_rs.setdefault(d.real_server, []).append(d)

        def refs(key: str) -> frozenset[ObjectRef]:
            found = (_ref("VirtualService", v) for v in doc.get(key) or ())
            return frozenset(r for r in found if r is not None)

        def count(key: str) -> int:
            try:
                return int(doc.get(key) or 0)
            except (TypeError, ValueError):
                return 0

        return cls(
            checked=count("checked"),
            down=count("down"),
            servers=tuple(servers),
            truncated=bool(doc.get("truncated")),
            quorum_lost=refs("quorumLost"),
            sorry=refs("sorryServer"),
            by_vs={k: tuple(v) for k, v in by_vs.items()},
            by_rs={k: tuple(v) for k, v in by_rs.items()},
        )

    def named(self) -> set[ObjectRef]:
        """Every VirtualService and RealServer this report says something about."""
        return {*self.by_vs, *self.by_rs, *self.quorum_lost, *self.sorry}


def _ref(kind: str, text: Any) -> ObjectRef | None:
    """`namespace/name` as the agent writes it."""
    if not isinstance(text, str) or "/" not in text:
        return None
    ns, name = text.split("/", 1)
    return ObjectRef(kind, ns or "default", name) if name else None


@dataclass
class NodeReport:
    """What one node's NodePlan says: the generation published, and what the agent applied."""

    generation: int = 0  # metadata.generation of the NodePlan as last written/seen
    applied: int = 0  # status.observedGeneration, written by the agent
    failures: tuple[str, ...] = ()
    last_sync: float | None = None
    health: NodeHealth | None = None  # status.health (None: the agent checks nothing)


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
    # VirtualServices with checks: director -> the first NodePlan generation that carried
    # this object's checks there (the agent's health report covers it from then on)
    health_since: dict[str, int] = field(default_factory=dict)


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
        # health checks: VirtualService -> the RealServers its directors probe, and back
        self._checked_rs: dict[ObjectRef, frozenset[ObjectRef]] = {}
        self._checked_by: dict[ObjectRef, set[ObjectRef]] = {}
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
        old_health = report.health
        report.generation = max(report.generation, int(meta.get("generation") or 0))
        report.applied = int(status.get("observedGeneration") or 0)
        report.failures = tuple(str(f) for f in status.get("failures") or ())
        report.last_sync = _parse_time(status.get("lastSyncTime"))
        report.health = NodeHealth.parse(status.get("health"))
        self._published_nodes.add(node)
        if (report.applied, report.failures) != before:
            self._status_dirty |= self._refs_by_node.get(node, set())
        if report.health != old_health:
            self._health_changed(node, old_health, report.health)

    def _health_changed(self, node: str, old: NodeHealth | None, new: NodeHealth | None) -> None:
        """Recompute what the old and the new report name (a down server, quorum); only when
        the report appears, goes or its truncation changes, everything checked on the node."""
        if old is None or new is None or old.truncated != new.truncated:
            on_node = self._refs_by_node.get(node, set())
            self._status_dirty |= on_node
            for ref in on_node:
                self._status_dirty |= self._checked_rs.get(ref, frozenset())
        for h in (old, new):
            if h is not None:
                self._status_dirty |= h.named()

    def nodeplan_gone(self, node: str) -> None:
        self._published_nodes.discard(node)
        self._report_gone(node)
        self._nodes_to_publish.add(node)

    def _report_gone(self, node: str) -> None:
        report = self.reports.pop(node, None)
        if report is not None and report.health is not None:
            self._health_changed(node, report.health, None)

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
        self._report_gone(node)
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
                self._set_checked(ref, frozenset())
                continue
            frag = self.compiler.fragment(ref)
            active = frag is not None and self.compiler.is_active(ref)
            nodes = frag.nodes if (frag is not None and active) else frozenset()
            if nodes & failed:
                continue
            checked = _checked_real_servers(frag) if (frag is not None and active) else frozenset()
            self._set_checked(ref, checked)
            if checked and frag is not None:
                own.health_since = {
                    n: own.health_since.get(n, self.reports.get(n, NodeReport()).generation)
                    for n in frag.directors
                }
            else:
                own.health_since = {}
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

    def _set_checked(self, ref: ObjectRef, checked: frozenset[ObjectRef]) -> None:
        """Record which RealServers the directors of VirtualService `ref` probe."""
        old = self._checked_rs.get(ref, frozenset())
        if old == checked:
            return
        for rs_ref in old - checked:
            by = self._checked_by.get(rs_ref)
            if by is not None:
                by.discard(ref)
                if not by:
                    del self._checked_by[rs_ref]
        for rs_ref in checked - old:
            self._checked_by.setdefault(rs_ref, set()).add(ref)
        if checked:
            self._checked_rs[ref] = checked
        else:
            self._checked_rs.pop(ref, None)
        self._status_dirty |= old ^ checked

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
        # VirtualServices first: one that becomes programmed (or stops being) changes what
        # its checked RealServers can say, so those are looked at in the same round.
        vss = sorted(r for r in dirty if r.kind == "VirtualService")
        rss = {r for r in dirty if r.kind == "RealServer"}
        for ref in vss:
            own = self._own.get(ref)
            if own is None or own.deleting:
                continue
            status = self._status_of(own, issues.get(ref, ()), now)
            if _condition_status(status, "Programmed") != _condition_status(own.status,
                                                                            "Programmed"):
                rss |= self._checked_rs.get(ref, frozenset())
            if _same_status(status, own.status):
                continue
            events.extend(self._events(own, status))
            own.status = status
            writes.append(StatusWrite(ref, status))
        for ref in sorted(rss):
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
        conds: list[tuple[str, bool | None, str, str]] = []  # type, status, reason, message
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
            health = self._vs_health(own, frag) if (frag is not None and active) else None
            if frag is not None:
                ready_backends = frag.backends_total - frag.backends_draining
                backends = {
                    "total": frag.backends_total,
                    "ready": ready_backends,
                    "draining": frag.backends_draining,
                }
                if health is not None:
                    # down servers take no new connections: not ready
                    ready_backends -= _down_in_rotation(frag, health.down)
                    backends["ready"] = ready_backends
                    backends["down"] = len(health.down)
                status["backends"] = backends
            conds.append(("Programmed", *programmed))
            if programmed[0] and ready_backends > 0:
                conds.append(("Ready", True, "Ready",
                              f"{ready_backends} ready real server(s) behind a programmed VIP"))
            elif programmed[0]:
                why = ("programmed, but no real server takes new connections"
                       + (": every one fails its health checks"
                          if health is not None and health.down else ""))
                conds.append(("Ready", False, "NoReadyBackends", why))
            else:
                conds.append(("Ready", False, "NotProgrammed", programmed[2]))
            if health is not None:
                conds.append(("Healthy", *health.condition))
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
            verdict, condition = self._rs_health(own)
            status["health"] = verdict
            if condition is not None:
                conds.append(("Healthy", *condition))
        status["conditions"] = _conditions(conds, own, now)
        return status

    # ------------------------------------------------------------------ health

    def _tracks(self, own: _Own, node: str) -> bool:
        """Whether `node`'s health report covers VirtualService `own` (its agent has applied
        a generation that carries the checks)."""
        rep = self.reports.get(node)
        since = own.health_since.get(node, 0)
        return (rep is not None and rep.health is not None and since > 0
                and rep.applied >= since)

    def _programmed_on(self, own: _Own, node: str) -> bool:
        gen = own.required.get(node, (0, 0))[0]
        rep = self.reports.get(node)
        return rep is not None and gen > 0 and rep.applied >= gen and not rep.failures

    def _vs_health(self, own: _Own, frag: Fragment) -> _VSHealth | None:
        """The Healthy condition of a health-checked VirtualService (None: no checks)."""
        checked = self._checked_rs.get(own.ref)
        if not checked:
            return None
        tracked = [n for n in sorted(frag.directors) if self._tracks(own, n)]
        down: dict[object, tuple[DownServer, list[str]]] = {}
        lost, sorry, truncated = [], [], []
        for node in tracked:
            rep = self.reports[node]
            assert rep.health is not None
            for d in rep.health.by_vs.get(own.ref, ()):
                if d.real_server is not None and d.real_server not in checked:
                    continue  # left the pool; the node has not applied that yet
                key: object = d.real_server if d.real_server is not None else d.where
                down.setdefault(key, (d, []))[1].append(node)
            if own.ref in rep.health.quorum_lost:
                lost.append(node)
            if own.ref in rep.health.sorry:
                sorry.append(node)
            if rep.health.truncated:
                truncated.append(node)
        total = len(checked)
        listed = "; ".join(
            f"{d.where} ({d.detail or 'failed'}) on {_names(sorted(set(nodes)))}"
            for d, nodes in list(down.values())[:MAX_LISTED]
        ) + (f"; and {len(down) - MAX_LISTED} more" if len(down) > MAX_LISTED else "")
        condition: tuple[bool | None, str, str]
        if lost:
            serving = (f"the sorry server serves on {_names(sorry)}" if sorry
                       else "no live real server and no sorry server")
            condition = (False, "QuorumLost",
                         _clip(f"quorum lost on {_names(lost)}: {serving}"
                               + (f"; {len(down)} of {total} real server(s) fail their health "
                                  f"checks: {listed}" if down else "")))
        elif down:
            condition = (False, "BackendsDown",
                         _clip(f"{len(down)} of {total} real server(s) fail their health "
                               f"checks: {listed}"))
        elif not tracked:
            condition = (None, "Pending", "waiting for the health reports of the directors")
        elif truncated:
            condition = (None, "ReportTruncated",
                         f"the health reports of {_names(truncated)} list only the first down "
                         "servers: this object's may be among those left out")
        else:
            condition = (True, "AllBackendsHealthy",
                         f"all {total} real server(s) pass their health checks on "
                         f"{_names(tracked)}")
        return _VSHealth(frozenset(k for k in down if isinstance(k, ObjectRef)), condition)

    def _rs_health(self, own: _Own) -> tuple[str, tuple[bool | None, str, str] | None]:
        """A RealServer's `health` and Healthy condition: Down if a director reports it
        down, Up if the directors of a health-checked VirtualService it backs have it in
        their checked pool and nobody reports it down, otherwise Unknown (no condition when
        nothing checks it)."""
        vss = self._checked_by.get(own.ref)
        if not vss:
            return "Unknown", None
        known = own.status.get("health") in ("Up", "Down")
        down: list[tuple[str, DownServer]] = []
        up: set[str] = set()
        truncated: set[str] = set()
        for vs_ref in sorted(vss):
            vs_own = self._own.get(vs_ref)
            frag = self.compiler.fragment(vs_ref)
            if vs_own is None or frag is None:
                continue
            for node in sorted(frag.directors):
                if not self._tracks(vs_own, node):
                    continue
                health = self.reports[node].health
                assert health is not None
                mine = [d for d in health.by_rs.get(own.ref, ()) if d.virtual_service == vs_ref]
                if mine:
                    down.extend((node, d) for d in mine)
                elif health.truncated:
                    truncated.add(node)
                elif known or self._programmed_on(vs_own, node):
                    up.add(node)
        names = _names([f"{r.namespace}/{r.name}" for r in sorted(vss)])
        if down:
            nodes = sorted({n for n, _ in down})
            seen: dict[tuple[str, str], DownServer] = {}
            for _node, d in down:
                seen.setdefault((d.where, d.detail), d)
            probes = "; ".join(f"{d.where}: {d.detail or 'failed'}"
                               for d in list(seen.values())[:MAX_LISTED])
            return "Down", (False, "HealthCheckFailed",
                            _clip(f"fails the health checks of {names} on {_names(nodes)} "
                                  f"({probes})"))
        if up:
            return "Up", (True, "HealthCheckPassed",
                          f"passes the health checks of {names} on {_names(sorted(up))}")
        if truncated:
            return "Unknown", (None, "ReportTruncated",
                               f"the health reports of {_names(sorted(truncated))} list only "
                               "the first down servers")
        return "Unknown", (None, "Pending", "waiting for the health reports of its directors")

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
            if c["type"] == "Healthy":
                # a failure, and the recovery after one (not every first Up: at a million
                # real servers that would be a million Events)
                rs = own.ref.kind == "RealServer"
                if c["status"] == "False":
                    out.append(EventRecord(own.ref, own.uid, "Warning",
                                           "HealthCheckFailed" if rs else c["reason"],
                                           c["message"]))
                elif c["status"] == "True" and prev is not None and prev["status"] == "False":
                    out.append(EventRecord(own.ref, own.uid, "Normal",
                                           "HealthCheckPassed" if rs else "BackendsHealthy",
                                           c["message"]))
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


@dataclass(frozen=True, slots=True)
class _VSHealth:
    down: frozenset[ObjectRef]  # RealServers some director reports down
    condition: tuple[bool | None, str, str]  # Healthy: status (None: Unknown), reason, message


def _checked_real_servers(frag: Fragment) -> frozenset[ObjectRef]:
    """The RealServers the directors probe for this VirtualService."""
    out = set()
    for svc in frag.services:
        if svc.health is None:
            continue
        for d in svc.destinations:
            if svc.checked(d):
                ref = _ref("RealServer", d.source.removeprefix("RealServer "))
                if ref is not None:
                    out.add(ref)
    return frozenset(out)


def _down_in_rotation(frag: Fragment, down: frozenset[ObjectRef]) -> int:
    """How many of the servers counted as ready (first port, not draining) are down."""
    if not down or not frag.services:
        return 0
    n = 0
    for d in frag.services[0].destinations:
        if not d.draining and d.source.startswith("RealServer "):
            ref = _ref("RealServer", d.source.removeprefix("RealServer "))
            n += ref in down
    return n


def _names(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _condition_status(status: Mapping[str, Any], ctype: str) -> str | None:
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == ctype:
            return str(c.get("status"))
    return None


def _conditions(
    conds: list[tuple[str, bool | None, str, str]], own: _Own, now: float
) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in own.status.get("conditions") or ()}
    out = []
    for ctype, ok, reason, message in conds:
        value = "Unknown" if ok is None else "True" if ok else "False"
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
    return all(new.get(k) == old.get(k) for k in set(new) | set(old))

