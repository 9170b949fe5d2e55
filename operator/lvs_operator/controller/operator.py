"""The kopf side of the operator: watch events into `ControllerState`, its writes out to the API.

Handlers are thin: each watch event is one `observe`/`forget` call and a wake-up of the
publisher. The publisher batches whatever changed since its last round (a burst of 1,000
EndpointSlice updates is one round), writes shards before the NodePlan that lists them, then
finalizers, status and Events. Nothing is written before the initial list of every watched
kind is in (a plan compiled from half the objects would tear down the other half's VIPs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import kopf

from ..api.objects import API_GROUP, ObjectRef
from ..observability import OperatorMetrics
from .kube import ApiError, KubeAPI, quote
from .state import FINALIZER, ControllerState, EventRecord, StatusWrite

__all__ = ["WATCHED", "Operator", "register_handlers"]

log = logging.getLogger("lvs_operator")

VERSION = "v1alpha1"
PLANS = f"/apis/{API_GROUP}/{VERSION}/nodeplans"
SHARDS = f"/apis/{API_GROUP}/{VERSION}/nodeplanshards"

# (group, version, plural, kind, list path)
WATCHED: list[tuple[str, str, str, str, str]] = [
    ("", "v1", "nodes", "Node", "/api/v1/nodes"),
    ("", "v1", "services", "Service", "/api/v1/services"),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice",
     "/apis/discovery.k8s.io/v1/endpointslices"),
    (API_GROUP, VERSION, "realservers", "RealServer", f"/apis/{API_GROUP}/{VERSION}/realservers"),
    (API_GROUP, VERSION, "virtualservices", "VirtualService",
     f"/apis/{API_GROUP}/{VERSION}/virtualservices"),
]
LEGACY_ENDPOINTS = ("", "v1", "endpoints", "Endpoints", "/api/v1/endpoints")


def _own_path(ref: ObjectRef) -> str:
    plural = "virtualservices" if ref.kind == "VirtualService" else "realservers"
    return (f"/apis/{API_GROUP}/{VERSION}/namespaces/{quote(ref.namespace)}/{plural}/"
            f"{quote(ref.name)}")


class Operator:
    def __init__(
        self,
        state: ControllerState,
        api: KubeAPI,
        *,
        debounce: float = 0.05,
        retry_interval: float = 2.0,
        concurrency: int = 8,
        legacy_endpoints: bool = False,
        metrics: OperatorMetrics | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        """`fence`, when given, is asked before every API call: False (this replica is not
        the leader any more) refuses the call."""
        self.state = state
        self.api = api
        self.debounce = debounce
        self.retry_interval = retry_interval
        self.legacy_endpoints = legacy_endpoints
        self.wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self.rounds = 0
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self.fence = fence
        self.publisher: asyncio.Task[None] | None = None  # run(), once started
        self._orphan_shards: set[str] = set()  # shards no NodePlan lists (an interrupted write)

    def watched(self) -> list[tuple[str, str, str, str, str]]:
        return [*WATCHED, LEGACY_ENDPOINTS] if self.legacy_endpoints else list(WATCHED)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._limit:
            # Asked after the wait for a slot, right before the call: a call queued while
            # this replica led must not go out after it stopped leading.
            if self.fence is not None and not self.fence():
                raise ApiError(0, "this replica is not the leader (any more): not calling the API")
            return await asyncio.to_thread(fn, *args)

    # ------------------------------------------------------------------ start-up

    async def initial_sync(self) -> None:
        """List every watched kind and the published plans before writing anything."""
        for group, version, _plural, kind, path in self.watched():
            api_version = f"{group}/{version}" if group else version
            items, _ = await self._call(self.api.list_all, path, kind, api_version)
            for item in items:
                self.state.observe(item)
            log.info("initial list: %d %s", len(items), kind)
        plans, _ = await self._call(self.api.list_all, PLANS, "NodePlan", f"{API_GROUP}/{VERSION}")
        shards, _ = await self._call(
            self.api.list_all, SHARDS, "NodePlanShard", f"{API_GROUP}/{VERSION}"
        )
        by_name = {s["metadata"]["name"]: s.get("spec") or {} for s in shards}
        for plan in plans:
            self.state.observe_nodeplan(plan)
            self.state.known_plan(plan["metadata"]["name"], plan.get("spec") or {}, by_name)
        self._orphan_shards = {
            s["metadata"]["name"] for s in shards
        } - {r["name"] for p in plans for r in (p.get("spec") or {}).get("shards") or ()}
        self.state.synced = True
        log.info("initial list: %d NodePlans, %d shards; publishing", len(plans), len(shards))
        self.wake.set()

    # ------------------------------------------------------------------ publisher

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.retry_interval)
            self.wake.clear()
            await asyncio.sleep(self.debounce)  # let a burst of events land in one round
            try:
                await self.round()
            except Exception:  # one bad round must not stop the publisher
                log.exception("publisher round failed; retrying")
                await asyncio.sleep(self.retry_interval)

    async def round(self) -> None:
        if not self.state.synced:
            return
        self.rounds += 1
        self.metrics.publish_rounds.inc()
        writes, gone = self.state.plans_to_publish()
        if self.state.last_compile is not None:
            kind, seconds = self.state.last_compile
            self.metrics.compile_duration.labels(kind).observe(seconds)
        results = await asyncio.gather(*(self._publish(w) for w in writes))
        failed = [w.node for w, ok in zip(writes, results, strict=True) if not ok]
        for node in gone:
            await self._remove_node(node)
        orphans, self._orphan_shards = self._orphan_shards, set()
        for name in sorted(orphans):
            await self._call(self.api.delete, f"{SHARDS}/{quote(name)}")
        self.state.after_publish(failed)
        await asyncio.gather(*(self._add_finalizer(r) for r in self.state.needs_finalizer()))
        statuses, events = self.state.status_writes()
        self.metrics.set_virtualservices(self.state.virtualservice_conditions())
        await asyncio.gather(*(self._write_status(s) for s in statuses))
        await asyncio.gather(*(self._post_event(e) for e in events))
        await asyncio.gather(
            *(self._remove_finalizer(ref, note) for ref, note in self.state.finalizable())
        )
        if failed:
            log.warning("could not publish plans for %s; retrying", ", ".join(failed),
                        extra={"nodes": failed})

    async def _publish(self, out: Any) -> bool:
        node = out.node
        try:
            await asyncio.gather(
                *(self._upsert(SHARDS, name, spec) for name, spec in out.shards.items())
            )
            plan = await self._upsert(PLANS, node, out.spec)
            self.metrics.nodeplans_written.inc()
            self.state.published(node, int(plan["metadata"].get("generation") or 0))
            for name in out.obsolete:
                await self._call(self.api.delete, f"{SHARDS}/{quote(name)}")
        except ApiError as exc:
            log.warning("publishing the plan of node %s failed: %s", node, exc,
                        extra={"node": node, "object": {"kind": "NodePlan", "name": node}})
            self.state.publish_failed(node)
            return False
        return True

    async def _upsert(self, base: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        kind = "NodePlan" if base == PLANS else "NodePlanShard"
        body = {
            "apiVersion": f"{API_GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "lvs-operator"}},
            "spec": spec,
        }
        try:
            result: dict[str, Any] = await self._call(
                self.api.merge_patch, f"{base}/{quote(name)}", {"spec": spec}
            )
            return result
        except ApiError as exc:
            if exc.status != 404:
                raise
        created: dict[str, Any] = await self._call(self.api.create, base, body)
        return created

    async def _remove_node(self, node: str) -> None:
        try:
            await self._call(self.api.delete, f"{PLANS}/{quote(node)}")
            for name in self.state.sharder.forget(node):
                await self._call(self.api.delete, f"{SHARDS}/{quote(name)}")
            self.state.removed(node)
            log.info("node %s is gone or has no agent: its NodePlan was removed", node,
                     extra={"node": node, "object": {"kind": "NodePlan", "name": node}})
        except ApiError as exc:
            log.warning("removing the NodePlan of node %s failed: %s", node, exc,
                        extra={"node": node, "object": {"kind": "NodePlan", "name": node}})

    async def _add_finalizer(self, ref: ObjectRef) -> None:
        await self._edit_finalizers(ref, add=True)

    async def _remove_finalizer(self, ref: ObjectRef, note: str) -> None:
        if await self._edit_finalizers(ref, add=False) and note:
            await self._post_event(EventRecord(ref, self.state.uid_of(ref), "Warning",
                                               "CleanupUnconfirmed", note))

    async def _edit_finalizers(self, ref: ObjectRef, *, add: bool) -> bool:
        path = _own_path(ref)
        try:
            current = await self._call(self.api.get, path)
            meta = current.get("metadata") or {}
            finalizers = list(meta.get("finalizers") or ())
            if add == (FINALIZER in finalizers):
                return True
            if add:
                finalizers.append(FINALIZER)
            else:
                finalizers = [f for f in finalizers if f != FINALIZER]
            await self._call(self.api.merge_patch, path, {"metadata": {
                "finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}})
            return True
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("finalizer on %s: %s", ref, exc, extra={"object": ref})
            if exc.status == 409:  # changed under us: read it again next round
                self.wake.set()
            return False

    async def _write_status(self, write: StatusWrite) -> None:
        try:
            await self._call(
                self.api.json_patch,
                _own_path(write.ref) + "/status",
                [{"op": "add", "path": "/status", "value": write.status}],
            )
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status of %s: %s", write.ref, exc, extra={"object": write.ref})
                self.state.status_write_failed(write.ref)

    async def _post_event(self, ev: EventRecord) -> None:
        ref = ev.ref
        # Each Event is a status change (or a warning): in the log too, naming the object.
        log.log(logging.WARNING if ev.type == "Warning" else logging.INFO, "%s: %s: %s",
                ref, ev.reason, ev.message, extra={"object": ref, "reason": ev.reason})
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{VERSION}",
                "kind": ref.kind,
                "namespace": ref.namespace,
                "name": ref.name,
                "uid": ev.uid,
            },
            "type": ev.type,
            "reason": ev.reason,
            "message": ev.message[:1024],
            "source": {"component": "lvs-operator"},
            "reportingComponent": "lvs.dev/operator",
            "reportingInstance": "lvs-operator",
            "count": 1,
            "firstTimestamp": _event_time(),
            "lastTimestamp": _event_time(),
        }
        try:
            await self._call(
                self.api.create, f"/api/v1/namespaces/{quote(ref.namespace)}/events", body
            )
        except ApiError as exc:
            log.info("event for %s not posted: %s", ref, exc, extra={"object": ref})


def _event_time() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_handlers(op: Operator) -> None:
    """Wire kopf's handlers (in kopf's default registry) to the operator."""
    task: list[asyncio.Task[None]] = []

    @kopf.on.login()
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup()
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        await op.initial_sync()
        op.publisher = asyncio.create_task(op.run())
        task.append(op.publisher)

    @kopf.on.cleanup()
    async def cleanup(**_: Any) -> None:
        for t in task:
            t.cancel()

    for group, version, plural, _kind, _path in op.watched():

        @kopf.on.event(group, version, plural)
        async def on_object(event: kopf.RawEvent, **_: Any) -> None:
            obj = event["object"]
            meta = obj.get("metadata") or {}
            if event["type"] == "DELETED":
                op.state.forget(str(obj.get("kind")), str(meta.get("namespace") or ""),
                                str(meta.get("name")))
            else:
                op.state.observe(obj)
            op.wake.set()

    @kopf.on.event(API_GROUP, VERSION, "nodeplans")
    async def on_nodeplan(event: kopf.RawEvent, **_: Any) -> None:
        obj = event["object"]
        if event["type"] == "DELETED":
            op.state.nodeplan_gone(str((obj.get("metadata") or {}).get("name")))
        else:
            op.state.observe_nodeplan(obj)
        op.wake.set()
