"""`lvs-agent` in cluster mode: follow this node's NodePlan in the API and keep the kernel so.

The operator publishes each node's plan as a `NodePlan` (named after the node) plus
`NodePlanShard`s (compiler/shards.py). The agent watches its NodePlan; on a new generation it
fetches only the shards whose digest it has not seen, assembles the plan, reconciles it (the
same passes as standalone `--watch`: a plan change diffs against the cached kernel view, the
`--interval` timer reads the kernel itself, repairs drift and decides drains) and writes what
it did to the NodePlan's status: `observedGeneration`, `Programmed`/`Degraded` conditions,
counts, failures and warnings, the health checks' verdicts (`health`: counters and the down
servers only) and a `lastSyncTime` heartbeat.

Fail static: when the API server is unreachable or answers with errors the kernel stays
exactly as last applied, the timer keeps repairing drift against the last good plan, and the
API is retried with bounded exponential backoff; each change of the API's health is logged
once. A NodePlan that does not exist (never published, or deleted) changes nothing either:
the operator publishes an empty plan to clean a node, it never deletes the NodePlan of a node
that runs an agent.

The API is reached through one narrow seam, `PlanSource`, with a real implementation over the
agent's own API client, agent/kubeapi.py (`KubernetesPlanSource`), and an in-memory one
(`FakePlanSource`) for tests. Client exceptions become `PlanSourceError` at that boundary.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..api.objects import API_GROUP
from ..compiler.plan import PLAN_FORMAT_VERSION, NodePlan, plan_from_dict
from ..compiler.shards import PublishedPlan, ShardError, merge_plans
from ..kernel.ipvs import IPVSOp, IPVSOpKind
from ..observability import AgentMetrics
from .cache import CachingKernel
from .health_monitor import HealthMonitor, apply_health
from .kubeapi import KubeAPI, KubeAPIError, KubeConfigError, load_credentials
from .reconcile import InSync, Kernel, ReconcileReport, reconcile
from .state import AgentState, DrainKey

if TYPE_CHECKING:  # agent/ha.py imports this module (through vip_lease)
    from .ha import LeaseDriver
    from .vrrp import VRRPDriver

__all__ = [
    "Backoff",
    "ClusterAgent",
    "EventType",
    "FakePlanSource",
    "KubernetesPlanSource",
    "PlanEvent",
    "PlanGone",
    "PlanSnapshot",
    "PlanSource",
    "PlanSourceError",
    "PublishedNodePlan",
    "Reason",
    "WatchExpired",
    "agent_identity",
    "drift_kinds",
    "kubernetes_plan_source",
    "step_kinds",
]

log = logging.getLogger("lvs_operator.agent")

VERSION = "v1alpha1"
NODEPLANS = "nodeplans"
NODEPLANSHARDS = "nodeplanshards"
MAX_ENTRIES = 50  # failures / warnings in the status (the CRD's maxItems)
MAX_TEXT = 512  # characters of one failure or warning
MAX_MESSAGE = 1024  # characters of a condition message
MAX_HEALTH_ITEMS = 256  # down servers / VirtualServices listed in status.health (maxItems)
MAX_DETAIL = 256  # characters of a probe's detail there
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds) of every non-watch request


# --------------------------------------------------------------------------- the seam


class PlanSourceError(Exception):
    """The API could not be asked: unreachable, timed out, or it answered with an error."""


class WatchExpired(PlanSourceError):
    """410 Gone: the watch's resourceVersion is too old; list again."""


class PlanGone(PlanSourceError):
    """The NodePlan does not exist (a status write found nothing to write to)."""


@dataclass(frozen=True)
class PublishedNodePlan:
    """One NodePlan object as the API returned it."""

    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PublishedNodePlan:
        meta = obj.get("metadata") or {}
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            spec=dict(obj.get("spec") or {}),
            status=dict(obj.get("status") or {}),
        )


@dataclass(frozen=True)
class PlanSnapshot:
    """A list of the node's NodePlan: the object (None: there is none) and where to watch from."""

    plan: PublishedNodePlan | None
    resource_version: str


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"


@dataclass(frozen=True)
class PlanEvent:
    type: EventType
    resource_version: str
    plan: PublishedNodePlan | None = None  # None for bookmarks


class PlanSource(Protocol):
    """What the agent needs from the API, and nothing more. Every method raises
    PlanSourceError (or a subclass) when the API cannot answer."""

    def get_plan(self, node: str) -> PlanSnapshot:
        """List the NodePlan named `node` (field selector): the object or None, and the list's
        resourceVersion to watch from."""
        ...

    def watch_plan(self, node: str, resource_version: str, timeout: float) -> Iterator[PlanEvent]:
        """Changes of the NodePlan named `node` after `resource_version`, for at most about
        `timeout` seconds. Raises WatchExpired when that version is too old."""
        ...

    def get_shard(self, name: str) -> Mapping[str, Any] | None:
        """The spec of NodePlanShard `name`, or None when there is no such shard."""
        ...

    def patch_status(self, node: str, status: Mapping[str, Any]) -> None:
        """Merge `status` into the NodePlan's status subresource. Raises PlanGone when there is
        no NodePlan named `node`."""
        ...


# --------------------------------------------------------------------------- kubernetes client


_PLANS = ("apis", API_GROUP, VERSION, NODEPLANS)


class KubernetesPlanSource:
    """PlanSource over the agent's own API client (agent/kubeapi.py): JSON requests, one
    streamed watch. KubeAPIError becomes PlanSourceError here (404 PlanGone, 410
    WatchExpired)."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api

    def _call(self, method: str, path: str, doing: str, **kwargs: Any) -> Any:
        try:
            return self.api.call(method, path, doing=doing, timeout=REQUEST_TIMEOUT, **kwargs)
        except KubeAPIError as exc:
            raise _plan_error(exc) from exc

    def get_plan(self, node: str) -> PlanSnapshot:
        data = self._call("GET", KubeAPI.path(*_PLANS, query={
            "fieldSelector": f"metadata.name={node}"}), f"listing NodePlan {node}")
        items = [i for i in (data.get("items") or []) if i.get("metadata", {}).get("name") == node]
        rv = str((data.get("metadata") or {}).get("resourceVersion", ""))
        return PlanSnapshot(PublishedNodePlan.from_object(items[0]) if items else None, rv)

    def watch_plan(self, node: str, resource_version: str, timeout: float) -> Iterator[PlanEvent]:
        seconds = max(1, math.ceil(timeout))
        path = KubeAPI.path(*_PLANS, query={
            "fieldSelector": f"metadata.name={node}", "resourceVersion": resource_version,
            "allowWatchBookmarks": "true", "timeoutSeconds": seconds, "watch": "true"})
        doing = f"watching NodePlan {node}"
        try:
            # the server ends the watch after `seconds`; the read timeout only catches a
            # server that went silent without closing the connection
            lines = self.api.stream(path, doing=doing,
                                    timeout=(REQUEST_TIMEOUT[0], seconds + 15.0))
        except KubeAPIError as exc:
            raise _plan_error(exc) from exc
        return self._events(node, lines)

    @staticmethod
    def _events(node: str, lines: Iterator[str]) -> Iterator[PlanEvent]:
        try:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise PlanSourceError(f"watching NodePlan {node}: not JSON: "
                                          f"{line[:200]!r}") from exc
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    text = f"watching NodePlan {node}: HTTP {obj.get('code')}: {obj.get('message')}"
                    raise (WatchExpired if obj.get("code") == 410 else PlanSourceError)(text)
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if kind == "BOOKMARK":
                    yield PlanEvent(EventType.BOOKMARK, rv)
                elif kind in ("ADDED", "MODIFIED", "DELETED"):
                    yield PlanEvent(EventType(kind), rv, PublishedNodePlan.from_object(obj))
        except KubeAPIError as exc:
            raise _plan_error(exc) from exc
        finally:
            close = getattr(lines, "close", None)
            if close is not None:
                close()

    def get_shard(self, name: str) -> Mapping[str, Any] | None:
        try:
            obj = self._call("GET", KubeAPI.path("apis", API_GROUP, VERSION, NODEPLANSHARDS,
                                                 name), f"reading NodePlanShard {name}")
        except PlanGone:
            return None
        spec: Mapping[str, Any] = obj.get("spec") or {}
        return spec

    def patch_status(self, node: str, status: Mapping[str, Any]) -> None:
        self._call("PATCH", KubeAPI.path(*_PLANS, node, "status"),
                   f"writing the status of NodePlan {node}", body={"status": dict(status)},
                   content_type="application/merge-patch+json")


def _plan_error(exc: KubeAPIError) -> PlanSourceError:
    if exc.status == 410:
        return WatchExpired(str(exc))
    if exc.status == 404:
        return PlanGone(str(exc))
    return PlanSourceError(str(exc))


def kubernetes_plan_source(kubeconfig: Path | None = None) -> KubernetesPlanSource:
    """A PlanSource for the cluster named by `kubeconfig`; without one, the pod's service
    account when KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG or ~/.kube/config.
    Raises PlanSourceError when none of these describes a cluster."""
    try:
        api = KubeAPI(load_credentials(kubeconfig))
    except KubeConfigError as exc:
        where = str(kubeconfig) if kubeconfig else "in-cluster config, $KUBECONFIG, ~/.kube/config"
        raise PlanSourceError(f"no Kubernetes API to read plans from ({where}): {exc}") from exc
    return KubernetesPlanSource(api)


# --------------------------------------------------------------------------- in-memory fake


class FakePlanSource:
    """An in-memory API server for NodePlans and NodePlanShards, for tests.

    `publish()` writes what a PlanSharder says to write the way the operator does (shards
    first, then the NodePlan; a NodePlan's generation grows when its spec changes). `down`
    makes every PlanSource call fail like an unreachable server; `compact()` makes older watch
    positions expire (410). Every PlanSource call is recorded in `calls` as (method, name).
    A watch with nothing to report waits by calling `sleep(timeout)` (pass a fake clock's)."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # NodePlans by name
        self.shards: dict[str, dict[str, Any]] = {}  # NodePlanShard specs by name
        self.down = False
        self.calls: list[tuple[str, str]] = []
        self.sleep = sleep
        self._rv = 0
        self._uids = 0
        self._compacted = 0
        self._events: list[tuple[int, str, PlanEvent]] = []

    # ---- the operator's side (never fails)

    def publish(self, published: PublishedPlan) -> None:
        for name, spec in published.shards.items():
            self.put_shard(name, spec)
        if published.spec is not None:
            self.put_plan(published.node, published.spec)
        for name in published.obsolete:
            self.shards.pop(name, None)

    def put_shard(self, name: str, spec: Mapping[str, Any]) -> None:
        self.shards[name] = json.loads(json.dumps(spec))

    def put_plan(self, node: str, spec: Mapping[str, Any]) -> int:
        """Create or update NodePlan `node`; returns its generation."""
        spec = json.loads(json.dumps(spec))
        obj = self.objects.get(node)
        if obj is None:
            self._uids += 1
            obj = {"metadata": {"name": node, "uid": f"uid-{self._uids}", "generation": 1},
                   "spec": spec, "status": {}}
            self.objects[node] = obj
            self._record(node, EventType.ADDED)
        elif obj["spec"] != spec:
            obj["spec"] = spec
            obj["metadata"]["generation"] += 1
            self._record(node, EventType.MODIFIED)
        generation: int = obj["metadata"]["generation"]
        return generation

    def delete_plan(self, node: str) -> None:
        if node in self.objects:
            self._record(node, EventType.DELETED)
            del self.objects[node]

    def touch(self, node: str) -> None:
        """A change that is not to the spec (a label, an annotation): same generation."""
        self._record(node, EventType.MODIFIED)

    def status(self, node: str) -> dict[str, Any]:
        status: dict[str, Any] = self.objects[node]["status"]
        return status

    def compact(self) -> None:
        self._compacted = self._rv

    def _record(self, node: str, kind: EventType) -> None:
        self._rv += 1
        obj = self.objects[node]
        obj["metadata"]["resourceVersion"] = str(self._rv)
        plan = PublishedNodePlan.from_object(json.loads(json.dumps(obj)))
        self._events.append((self._rv, node, PlanEvent(kind, str(self._rv), plan)))

    def _check(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        if self.down:
            raise PlanSourceError(f"{method} {name}: connection refused (fake API server down)")

    # ---- PlanSource

    def get_plan(self, node: str) -> PlanSnapshot:
        self._check("get_plan", node)
        obj = self.objects.get(node)
        plan = PublishedNodePlan.from_object(json.loads(json.dumps(obj))) if obj else None
        return PlanSnapshot(plan, str(self._rv))

    def watch_plan(self, node: str, resource_version: str, timeout: float) -> Iterator[PlanEvent]:
        self._check("watch_plan", node)
        since = int(resource_version or 0)
        if since < self._compacted:
            raise WatchExpired(f"watching NodePlan {node}: too old resource version {since}")
        events = [e for rv, n, e in self._events if rv > since and n == node]
        if not events:
            self.sleep(timeout)
        return iter(events)

    def get_shard(self, name: str) -> Mapping[str, Any] | None:
        self._check("get_shard", name)
        spec = self.shards.get(name)
        return json.loads(json.dumps(spec)) if spec is not None else None

    def patch_status(self, node: str, status: Mapping[str, Any]) -> None:
        self._check("patch_status", node)
        if node not in self.objects:
            raise PlanGone(f"writing the status of NodePlan {node}: not found")
        self.objects[node]["status"].update(json.loads(json.dumps(dict(status))))
        self._record(node, EventType.MODIFIED)


# --------------------------------------------------------------------------- the agent


class Reason(enum.StrEnum):
    """Condition reasons: short camelCase words, as Kubernetes conditions have them."""

    APPLIED = "Applied"
    APPLY_FAILED = "ApplyFailed"
    WAITING_FOR_SHARDS = "WaitingForShards"
    UNSUPPORTED_PLAN = "UnsupportedPlan"
    WARNINGS = "Warnings"
    AS_EXPECTED = "AsExpected"


class Backoff:
    """Bounded exponential backoff: first, 2*first, ... up to cap; jitter shortens each delay
    by up to that fraction, so a thousand agents do not return to the API in one beat."""

    def __init__(
        self,
        first: float = 0.5,
        cap: float = 30.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.first, self.cap, self.jitter = first, cap, jitter
        self._rand = rand
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * (1.0 - self.jitter * self._rand())

    def reset(self) -> None:
        self._next = self.first


class _Woken(BaseException):
    """Raised inside a blocking wait (from the SIGUSR1 handler) to run a pass now."""


class _Interrupted(BaseException):
    """Raised by stop() into a blocking wait (from a signal handler); never into a pass."""


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded(items: list[str]) -> list[str]:
    """At most MAX_ENTRIES entries of at most MAX_TEXT characters; the last says how many
    more there were."""
    if len(items) <= MAX_ENTRIES:
        return [_clip(i, MAX_TEXT) for i in items]
    kept = [_clip(i, MAX_TEXT) for i in items[: MAX_ENTRIES - 1]]
    return [*kept, f"... and {len(items) - len(kept)} more"]


def step_kinds(report: ReconcileReport) -> list[str]:
    """`layer/verb` of each change of a pass (lvs_agent_operations_total's kind)."""
    return [f"{s.layer}/{s.verb}" for s in report.steps]


def drift_kinds(report: ReconcileReport, draining: Collection[DrainKey]) -> list[str]:
    """The changes of a timer pass over an unchanged, cleanly applied plan that repaired
    drift: every change except deleting a destination that was already draining before the
    pass (`draining`: the drain keys then), which is a drain ending, not drift."""
    out = []
    for s in report.steps:
        t = s.target
        if (isinstance(t, IPVSOp) and t.kind is IPVSOpKind.DEL_DEST and t.dest is not None
                and (t.service.key, t.dest.address, t.dest.port) in draining):
            continue
        out.append(f"{s.layer}/{s.verb}")
    return out


def agent_identity() -> str:
    """`lvs-agent <version> on <hostname>`, for the status' `agent` field."""
    try:
        version = metadata.version("lvs-operator")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"lvs-agent {version} on {socket.gethostname()}"


class ClusterAgent:
    """The cluster-mode loop for one node. Single-threaded and level-triggered: `step()` does
    what is due (list, apply a new generation, the timer's full pass, a status write) and
    then waits for a watch event or the next deadline; `run()` steps until `stop()`.

    Time comes from `clock` (monotonic, for deadlines), `wall` (timestamps in the status) and
    `sleep`, so tests drive the loop without waiting.

    `metrics` (lvs_agent_* series) is advanced after every pass; `liveness()` and
    `readiness()` are the health server's checks (read from its thread)."""

    def __init__(
        self,
        node: str,
        source: PlanSource,
        kernel: Kernel,
        state: AgentState,
        *,
        interval: float = 10.0,
        dry_run: bool = False,
        persist: Callable[[AgentState], None] | None = None,
        on_report: Callable[[ReconcileReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Callable[[], Backoff] = Backoff,
        identity: str | None = None,
        metrics: AgentMetrics | None = None,
        health: HealthMonitor | None = None,
        ha: LeaseDriver | None = None,
        vrrp: VRRPDriver | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.node = node
        self.interval = interval
        self.dry_run = dry_run
        self.identity = identity if identity is not None else agent_identity()
        self._source = source
        self._state = state
        self._persist = persist
        self._on_report = on_report
        self._clock, self._wall, self._sleep_fn = clock, wall, sleep
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self._alive_at = clock()  # when the loop last stepped or a pass started or ended
        self._in_pass = False
        self._caching = CachingKernel(kernel)
        self._in_sync: InSync = {}

        self.plan: NodePlan | None = None  # the last good plan: what the kernel is kept at
        self.applied_generation: int | None = None
        self._applied_key: tuple[str, int] | None = None  # (uid, generation)
        self._report: ReconcileReport | None = None
        self._passed_plan: NodePlan | None = None  # the plan of the last pass (drift metric)
        self._next_full: float | None = None  # None: no pass yet
        self._synced_at: float | None = None  # wall time of the last pass

        self._latest: PublishedNodePlan | None = None  # the newest NodePlan seen
        self._pending = False  # _latest is a generation not applied (nor refused) yet
        self._retry_at = 0.0
        self._problem: tuple[Reason, str, int] | None = None
        self._parts: dict[tuple[str, str], NodePlan] = {}  # parsed shards by (name, digest)
        self._rv: str | None = None  # None: list before watching
        self._absent_logged = False
        self._waiting_logged: int | None = None

        self._api_backoff = backoff()
        self._api_down = False
        self._api_retry_at = 0.0
        self._shard_backoff = backoff()
        self._status_backoff = backoff()
        self._status_down = False
        self._status_retry_at = 0.0
        self._conditions: dict[str, dict[str, Any]] = {}
        self._seeded = False
        self._published: dict[str, Any] | None = None
        self._health_in_status = False  # the NodePlan status may carry a health report
        self._health_snapshot: dict[str, Any] | None = None  # status.health as of the last pass
        self._patched_at: float | None = None
        self._patched_sync: float | None = None

        self._stopping = False
        self._blocking = False
        self._health = health
        self._ha = ha
        self.vrrp = vrrp
        self._woken = False  # a health verdict changed: run a pass at once

    # ---- control

    def stop(self) -> None:
        """End the loop (safe to call from a signal handler): the pass in progress finishes,
        a blocking wait is cut short, and the kernel is left as it is."""
        self._stopping = True
        if self._blocking:
            self._blocking = False
            raise _Interrupted()

    def wake(self) -> None:
        """Ask for a pass now (thread-safe; the health monitor calls it on a transition). A
        blocking wait is cut short by `interrupt()`, which the SIGUSR1 handler calls."""
        self._woken = True

    def interrupt(self) -> None:
        """From a signal handler: end a blocking wait if one is in progress."""
        if self._blocking and self._woken:
            self._blocking = False
            raise _Woken()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> None:
        try:
            while not self._stopping:
                self.step()
        except _Interrupted:
            pass
        log.info("stopping; the kernel is left as it is")

    def liveness(self) -> tuple[bool, str]:
        """Healthy while the loop steps, or a pass runs, within max(3 x interval, 60 s)."""
        limit = max(3 * self.interval, 60.0)
        idle = self._clock() - self._alive_at
        if idle > limit:
            what = "a reconcile pass has been running" if self._in_pass else (
                "the agent loop has not run")
            return False, f"{what} for {idle:.0f} s (limit {limit:.0f} s)"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready after the first completed pass, or when there is no NodePlan to apply."""
        if self._report is not None:
            return True, f"generation {self.applied_generation} applied"
        latest = self._latest
        if latest is not None:
            return False, f"generation {latest.generation} not applied yet"
        if self._rv is not None:
            return True, f"no NodePlan for node {self.node} yet"
        return False, f"NodePlan {self.node} not read yet"

    def step(self) -> None:
        self._alive_at = self._clock()
        if self._rv is None and self._clock() >= self._api_retry_at:
            self._list()
        if self._pending and self._clock() >= self._retry_at:
            self._apply_latest()
        if self._next_full is not None and self._clock() >= self._next_full:
            self._pass(full=True)
        elif self._woken:
            self._woken = False
            self._pass(full=False)
        self._publish_status()
        if not self._stopping:
            self._wait()

    # ---- reading the API

    def _list(self) -> None:
        try:
            snapshot = self._source.get_plan(self.node)
        except PlanSourceError as exc:
            self._api_failed("listing the NodePlan", exc)
            return
        self._api_ok()
        self._rv = snapshot.resource_version
        self._observe(snapshot.plan)

    def _observe(self, published: PublishedNodePlan | None) -> None:
        if published is None:
            if not self._absent_logged:
                kept = "; the kernel is kept as last applied" if self.plan is not None else ""
                log.info("waiting for the operator to publish a plan for node %s%s", self.node,
                         kept)
                self._absent_logged = True
            self._latest, self._pending = None, False
            self._published = None  # a NodePlan created anew gets the whole status again
            return
        self._absent_logged = False
        if not self._seeded:  # keep the transition times a previous run wrote
            for cond in published.status.get("conditions") or []:
                if isinstance(cond, dict) and "type" in cond:
                    self._conditions[str(cond["type"])] = dict(cond)
            self._health_in_status = bool(published.status.get("health"))
            self._seeded = True
        before = self._latest
        if before is not None and before.uid != published.uid:
            self._published = None  # another object (deleted and created again)
        self._latest = published
        key = (published.uid, published.generation)
        if (before is None or (before.uid, before.generation) != key) and key != self._applied_key:
            self._pending = True
            self._retry_at = self._clock()
            self._shard_backoff.reset()

    def _on_event(self, event: PlanEvent) -> None:
        if event.resource_version:
            self._rv = event.resource_version
        if event.type is EventType.BOOKMARK:
            return
        self._observe(None if event.type is EventType.DELETED else event.plan)
        if self._pending:  # a new generation: apply it now, not at the next deadline
            self._apply_latest()
            if not self._pending:
                # Applied: report at once. Still waiting for shards: the event was probably
                # one of a backlog the operator has already moved past; reporting each of
                # them would cost a round trip (and another event) apiece.
                self._publish_status()

    def _api_failed(self, doing: str, exc: PlanSourceError) -> None:
        self._api_retry_at = self._clock() + self._api_backoff.next()
        if not self._api_down:
            self._api_down = True
            kept = (
                f"generation {self.applied_generation}, repairing drift against it"
                if self.plan is not None
                else "nothing applied yet"
            )
            log.warning(
                "the API server failed while %s (%s); keeping the kernel as last applied (%s) "
                "and retrying with backoff up to %.0fs",
                doing, exc, kept, self._api_backoff.cap,
                extra={"node": self.node, "object": {"kind": "NodePlan", "name": self.node}},
            )

    def _api_ok(self) -> None:
        if self._api_down:
            log.info("the API server answers again")
        self._api_down = False
        self._api_backoff.reset()

    # ---- applying a new generation

    def _apply_latest(self) -> None:
        latest = self._latest
        if latest is None:
            self._pending = False
            return
        try:
            plan = self._assemble(latest)
        except ShardError as exc:
            self._retry_at = self._clock() + self._shard_backoff.next()
            kept = (
                f"; generation {self.applied_generation} stays applied"
                if self.plan is not None else ""
            )
            self._problem = (Reason.WAITING_FOR_SHARDS, f"{exc}{kept}", latest.generation)
            if self._waiting_logged != latest.generation:
                log.info("generation %d: %s; waiting for the operator to finish writing it",
                         latest.generation, exc)
                self._waiting_logged = latest.generation
            return
        except PlanSourceError as exc:
            self._api_failed("reading NodePlanShards", exc)
            self._retry_at = self._api_retry_at
            return
        except ValueError as exc:  # never becomes valid: wait for the next generation
            self._pending = False
            kept = (
                f"; generation {self.applied_generation} stays applied"
                if self.plan is not None else ""
            )
            self._problem = (Reason.UNSUPPORTED_PLAN, f"{exc}{kept}", latest.generation)
            log.error("generation %d cannot be applied: %s%s", latest.generation, exc, kept,
                      extra={"node": self.node, "generation": latest.generation,
                             "object": {"kind": "NodePlan", "name": latest.name}})
            return
        self._pending = False
        self._problem = None
        self.plan = plan
        if self._ha is not None:
            self._ha.update(plan)
        self._applied_key = (latest.uid, latest.generation)
        self.applied_generation = latest.generation
        log.info("applying generation %d of NodePlan %s", latest.generation, latest.name,
                 extra={"node": self.node, "generation": latest.generation,
                        "object": {"kind": "NodePlan", "name": latest.name}})
        self._pass(full=self._next_full is None)
        if self._health is not None:
            # after the pass: a DR/TUN probe needs its health-path service in the kernel
            self._health.update(plan)
            self._health_snapshot = self._health_status()

    def _assemble(self, latest: PublishedNodePlan) -> NodePlan:
        """The whole plan from the NodePlan and its shards, fetching only shards whose
        (name, digest) is not cached. Same result and errors as shards.assemble_plan, but an
        unchanged shard is neither fetched nor parsed again (parsing costs seconds per
        100,000 destinations)."""
        spec = latest.spec
        version = spec.get("formatVersion")
        if version != PLAN_FORMAT_VERSION:
            raise ValueError(
                f"NodePlan formatVersion {version!r} is not supported (this agent reads "
                f"{PLAN_FORMAT_VERSION}); upgrade the agent or the operator so they match"
            )
        try:
            root = plan_from_dict(dict(spec["plan"]))
            refs = [(str(r["name"]), str(r["digest"])) for r in spec.get("shards") or []]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"NodePlan spec is malformed: {exc}") from exc
        if spec.get("node") != self.node or root.node != self.node:
            raise ValueError(
                f"NodePlan {latest.name} holds a plan for node {spec.get('node')!r}, "
                f"not {self.node!r}"
            )
        problems: list[str] = []
        fetched = False
        for name, digest in refs:
            if (name, digest) in self._parts:
                continue
            body = self._source.get_shard(name)
            fetched = True
            if body is None:
                problems.append(f"NodePlanShard {name} is missing")
                break
            got = str(body.get("digest"))
            try:
                # cached under the digest it carries: one written for a newer plan is the one
                # the next NodePlan will ask for
                self._parts[(name, got)] = plan_from_dict(dict(body["plan"]))
            except (KeyError, TypeError) as exc:
                if got == digest:
                    raise ValueError(f"NodePlanShard {name} is malformed: {exc}") from exc
            if got != digest:
                problems.append(
                    f"NodePlanShard {name} has digest {got!r}, the NodePlan expects {digest!r}"
                )
                break  # this generation is already stale: fetching the rest is wasted
        if fetched:
            self._api_ok()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ShardError(problems[0] + more)
        wanted = set(refs)
        self._parts = {k: v for k, v in self._parts.items() if k in wanted}
        return merge_plans(root, [self._parts[r] for r in refs])

    # ---- kernel passes

    def _pass(self, *, full: bool) -> None:
        plan = self.plan
        if plan is None:
            return
        now = self._clock()
        began = time.monotonic()
        # A timer pass of the plan the last clean pass applied: whatever it changes, apart
        # from drains ending, is drift.
        drift_check = (full and not self.dry_run and plan is self._passed_plan
                       and self._report is not None and not self._report.failures)
        draining = set(self._state.drains) if drift_check else set()
        self._alive_at, self._in_pass = now, True
        try:
            if full:
                self._caching.refresh()
                self._in_sync.clear()
                due = (self._next_full if self._next_full is not None else now) + self.interval
                self._next_full = due if due > now else now + self.interval
            started = time.monotonic()
            effective, dead = plan, frozenset[DrainKey]()
            self._woken = False  # this pass reads verdicts and held Leases as they are now
            if self._health is not None:
                effective, dead = apply_health(plan, self._health.overlay())
            # keepalived first: a VIP moving from VRRP to Lease mode is released before the
            # reconciler may add it
            vrrp_failures = (self.vrrp.apply(effective)
                             if self.vrrp is not None and not self.dry_run else [])
            report = reconcile(
                effective,
                self._caching.view,
                self._state,
                dry_run=self.dry_run,
                persist=None if self.dry_run else self._persist,
                in_sync=self._in_sync,
                dead=dead,
                held=self._ha.held() if self._ha is not None else frozenset(),
            )
            report.failures.extend(vrrp_failures)
        finally:
            self._alive_at, self._in_pass = self._clock(), False
        self.metrics.observe_pass(full=full, seconds=time.monotonic() - began,
                                  failed=bool(report.failures),
                                  generation=self.applied_generation,
                                  operations=() if self.dry_run else step_kinds(report),
                                  errors=len(report.failures),
                                  drift=drift_kinds(report, draining) if drift_check else ())
        self._passed_plan = plan
        if report.steps or report.failures:
            log.log(logging.WARNING if report.failures else logging.INFO,
                    "%s pass of generation %d: %s in %.2f s", "full" if full else "cached",
                    self.applied_generation, report.summary(), time.monotonic() - started,
                    extra={"node": self.node, "generation": self.applied_generation,
                           "changes": len(report.steps), "failures": len(report.failures),
                           "warnings": len(report.warnings),
                           "draining": report.waiting_drains})
        if report.failures:  # read again next time rather than trust what we think we wrote
            self._caching.refresh()
            self._in_sync.clear()
        if full and self._next_full is not None and self._next_full <= self._clock():
            # The pass took longer than the interval (a big table on a slow machine): the next
            # full pass counts from its end, or back-to-back passes would starve the watch.
            self._next_full = self._clock() + self.interval
        self._report = report
        self._health_snapshot = self._health_status()  # the verdicts this pass applied
        self._synced_at = self._wall()
        if (report.steps or report.failures) and self._on_report is not None:
            self._on_report(report)

    # ---- status

    def _condition(
        self, kind: str, ok: bool, reason: Reason, message: str, generation: int | None
    ) -> dict[str, Any]:
        status = "True" if ok else "False"
        before = self._conditions.get(kind) or {}
        since = before.get("lastTransitionTime")
        if before.get("status") != status or not since:
            since = _rfc3339(self._wall())
        cond: dict[str, Any] = {
            "type": kind,
            "status": status,
            "reason": str(reason),
            "message": _clip(message, MAX_MESSAGE),
            "lastTransitionTime": since,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        self._conditions[kind] = cond
        return cond

    def status_body(self) -> dict[str, Any] | None:
        """The status this agent would write now (without lastSyncTime); None when it has
        nothing to say yet."""
        report, problem, applied = self._report, self._problem, self.applied_generation
        if report is None and problem is None:
            return None
        plan = self.plan
        counts = ""
        if plan is not None:
            services = len(plan.director.services)
            destinations = sum(len(s.destinations) for s in plan.director.services)
            counts = f"{services} service(s), {destinations} destination(s)"
        if problem is not None:
            programmed = self._condition("Programmed", False, problem[0], problem[1], problem[2])
        elif report is not None and report.failures:
            programmed = self._condition(
                "Programmed", False, Reason.APPLY_FAILED,
                f"generation {applied}: {len(report.failures)} failure(s), the first: "
                f"{report.failures[0]}",
                applied,
            )
        else:
            programmed = self._condition(
                "Programmed", True, Reason.APPLIED, f"generation {applied} programmed: {counts}",
                applied,
            )
        if report is not None and report.failures:
            degraded = self._condition(
                "Degraded", True, Reason.APPLY_FAILED, "; ".join(report.failures[:3]), applied
            )
        elif problem is not None and problem[0] is Reason.UNSUPPORTED_PLAN:
            degraded = self._condition("Degraded", True, problem[0], problem[1], problem[2])
        elif report is not None and report.warnings:
            degraded = self._condition(
                "Degraded", True, Reason.WARNINGS, "; ".join(report.warnings[:3]), applied
            )
        else:
            degraded = self._condition(
                "Degraded", False, Reason.AS_EXPECTED, "no failures or warnings", applied
            )
        body: dict[str, Any] = {"conditions": [programmed, degraded], "agent": self.identity}
        if applied is not None:
            body["observedGeneration"] = applied
        if plan is not None:
            body["services"] = len(plan.director.services)
            body["destinations"] = sum(len(s.destinations) for s in plan.director.services)
        if report is not None:
            body["draining"] = report.waiting_drains
            body["failures"] = _bounded(report.failures)
            body["warnings"] = _bounded(report.warnings)
        health = self._health_snapshot
        if health is not None:
            body["health"] = health
        elif self._health_in_status or (self._published is not None
                                        and "health" in self._published):
            body["health"] = None  # a merge patch removes the last run's report
        return body

    def _health_status(self) -> dict[str, Any] | None:
        """status.health: what the checks say, bounded for a million backends (only the down
        servers are listed) and stable while no verdict changes (no times, no counters that
        grow while a server stays down). Taken after each pass, so it is what the pass applied
        (a verdict change wakes the loop for a pass at once). None: nothing is checked here."""
        monitor = self._health
        if monitor is None or not monitor.active:
            return None
        reports = monitor.report()
        down = sorted({(r.owner, r.real_server, r.address, r.port, _clip(r.detail, MAX_DETAIL))
                       for r in reports if not r.up})
        owners = {s.key: s.owner for s in self.plan.director.services} if self.plan else {}
        lost: set[str] = set()
        sorry: set[str] = set()
        for key, (quorum_ok, sorry_active) in monitor.quorum().items():
            owner = owners.get(key)
            if owner is None:
                continue
            if not quorum_ok:
                lost.add(owner)
            if sorry_active:
                sorry.add(owner)
        truncated = max(len(down), len(lost), len(sorry)) > MAX_HEALTH_ITEMS
        return {
            "checked": len(reports),
            "down": len(down),
            "servers": [
                {"virtualService": vs, "realServer": rs, "address": address, "port": port,
                 "detail": detail}
                for vs, rs, address, port, detail in down[:MAX_HEALTH_ITEMS]
            ],
            "quorumLost": sorted(lost)[:MAX_HEALTH_ITEMS],
            "sorryServer": sorted(sorry)[:MAX_HEALTH_ITEMS],
            # always written: the status is merge-patched, an absent key would keep its value
            "truncated": truncated,
        }

    def _status_due(self, body: dict[str, Any] | None) -> float:
        """When the status should next be written (inf: not until something changes)."""
        if self.dry_run or self._latest is None or body is None:
            return math.inf
        if body != self._published:
            return self._status_retry_at
        if self._patched_at is None or self._synced_at == self._patched_sync:
            return math.inf
        return max(self._patched_at + self.interval, self._status_retry_at)  # heartbeat

    def _publish_status(self) -> None:
        body = self.status_body()
        now = self._clock()
        if now < self._status_due(body):
            return
        assert body is not None
        patch = dict(body)
        if self._synced_at is not None:
            patch["lastSyncTime"] = _rfc3339(self._synced_at)
        try:
            self._source.patch_status(self.node, patch)
        except PlanGone:  # deleted meanwhile: the watch says so next
            self._status_retry_at = now + self._status_backoff.next()
            return
        except PlanSourceError as exc:
            self._status_retry_at = now + self._status_backoff.next()
            if not self._status_down:
                self._status_down = True
                if not self._api_down:
                    log.warning("cannot write the NodePlan status (%s); retrying with backoff",
                                exc)
            return
        if self._status_down:
            self._status_down = False
            self._status_backoff.reset()
        self._published = body
        self._health_in_status = body.get("health") is not None
        self._patched_at = now
        self._patched_sync = self._synced_at

    # ---- waiting

    def _deadline(self) -> float:
        """The next moment step() has something to do, API retries aside."""
        now = self._clock()
        if self._woken:
            return now
        deadlines = [now + self.interval, self._status_due(self.status_body())]
        if self._next_full is not None:
            deadlines.append(self._next_full)
        if self._pending:
            deadlines.append(self._retry_at)
        return min(deadlines)

    def _wait(self) -> None:
        """Until the next deadline: watch the NodePlan (handling each event as it comes), or
        sleep while the API is to be left alone (backoff) or there is no watch position."""
        deadline = self._deadline()
        now = self._clock()
        if deadline <= now:
            return
        if self._rv is None or (self._api_down and now < self._api_retry_at):
            with contextlib.suppress(_Woken):
                self._sleep(min(deadline, max(self._api_retry_at, now)) - now)
            return
        events: Iterator[PlanEvent] | None = None
        try:
            events = self._source.watch_plan(self.node, self._rv, deadline - now)
            for event in self._interruptible(events):
                self._api_ok()
                self._on_event(event)
                if self._stopping or self._clock() >= deadline:
                    break
            else:
                self._api_ok()
        except _Woken:
            pass  # the watch resumes from the same resourceVersion after the pass
        except WatchExpired:
            log.info("the watch position expired; listing the NodePlan again")
            self._rv = None
            self._api_retry_at = self._clock()
        except PlanSourceError as exc:
            self._api_failed("watching the NodePlan", exc)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def _interruptible(self, events: Iterator[PlanEvent]) -> Iterator[PlanEvent]:
        while not self._stopping:
            self._blocking = True
            if self._woken:
                self._blocking = False
                return
            try:
                event = next(events, None)
            finally:
                self._blocking = False
            if event is None:
                return
            yield event

    def _sleep(self, seconds: float) -> None:
        self._blocking = True
        try:
            if not self._stopping and not self._woken:
                self._sleep_fn(seconds)
        finally:
            self._blocking = False
