"""Leader election over a `coordination.k8s.io/v1` Lease, with client-go's semantics, so that
of several operator replicas exactly one writes at a time.

- A candidate takes the Lease when it does not exist (create), when it has no holder (a
  holder released it), or when it has not changed for `leaseDurationSeconds` *as observed by
  this process's monotonic clock*: the time of the first sight of each new record is noted,
  and the holder's own renewTime is never compared with our wall clock (clocks of different
  machines disagree; the timestamps written are for people).
- Every write carries the resourceVersion read just before it (optimistic concurrency): of
  two candidates racing for an expired Lease one gets 409 Conflict and stays a candidate.
- The holder renews every `retry_period`. If it has not renewed successfully for
  `renew_deadline` seconds it has lost leadership, whatever the reason (API unreachable, the
  event loop stalled), and `is_leader()` turns false at that moment by the clock alone, so a
  write fence built on it needs no renewal to have run. The margin between the renew deadline
  and the lease duration is what keeps two writers apart.
- Losing is final for this elector: the process stops its controllers and exits, and comes
  back as a fresh candidate (state is rebuilt from the API).
- On graceful shutdown the holder releases the Lease (no holder, leaseDurationSeconds 1),
  like client-go's ReleaseOnCancel, so a standby takes over within one retry period instead
  of waiting out the lease.

The API is reached through `LeaseClient` (get/create/replace of the Lease object as JSON);
`KubeLeaseClient` implements it over controller/kube.py, tests use an in-memory store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from .kube import ApiError, KubeAPI, quote

__all__ = [
    "KubeLeaseClient",
    "LeaseClient",
    "LeaseConflict",
    "LeaseElector",
    "LeaseError",
    "LeaseRecord",
]

log = logging.getLogger("lvs_operator.leader")

JITTER = 0.2  # a standby waits retry_period * (1 + JITTER * random) between attempts


class LeaseError(Exception):
    """The Lease could not be read or written (unreachable, forbidden, ...)."""


class LeaseConflict(LeaseError):
    """409: another writer got there first (resourceVersion changed, or it already exists)."""


class LeaseClient(Protocol):
    """The one Lease an elector competes for, as JSON objects."""

    def describe(self) -> str:
        """`namespace/name`, for messages."""
        ...

    def get(self) -> dict[str, Any] | None:
        """The Lease object, None when it does not exist; LeaseError otherwise."""
        ...

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create it; LeaseConflict when it exists already."""
        ...

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Write it whole (PUT), conditional on obj's metadata.resourceVersion; LeaseConflict
        when the stored object has another one."""
        ...


class KubeLeaseClient:
    """LeaseClient over the project's JSON REST client."""

    def __init__(self, api: KubeAPI, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self._base = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases"
        self._path = f"{self._base}/{quote(name)}"

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    def get(self) -> dict[str, Any] | None:
        try:
            return self.api.get(self._path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise LeaseError(str(exc)) from exc

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.api.create(self._base, obj)
        except ApiError as exc:
            raise (LeaseConflict if exc.status == 409 else LeaseError)(str(exc)) from exc

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.api.request("PUT", self._path, body=obj)
        except ApiError as exc:
            raise (LeaseConflict if exc.status == 409 else LeaseError)(str(exc)) from exc


def micro_time(timestamp: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec: who holds it, for how long, since when, how many handovers."""

    holder: str
    lease_duration: int
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


Outcome = Literal["acquired", "renewed", "held", "conflict", "error"]


class LeaseElector:
    """One candidate (`identity`) for the Lease behind `client`.

    `step()` is one attempt to acquire or renew, with the transitions it implies (became
    leader, lost, standing by) and their log lines; it blocks on the API. `acquire()` and
    `hold()` drive it from asyncio on a private one-thread executor (so a busy default
    executor cannot delay a renewal). Time comes from `clock` (monotonic: every decision) and
    `wall` (only the timestamps written into the Lease)."""

    def __init__(
        self,
        client: LeaseClient,
        identity: str,
        *,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not identity:
            raise ValueError("the leader-election identity must not be empty")
        if lease_duration < 1 or int(lease_duration) != lease_duration:
            raise ValueError("the lease duration must be a whole number of seconds >= 1")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "want 0 < retry period < renew deadline < lease duration, got "
                f"{retry_period} / {renew_deadline} / {lease_duration}"
            )
        self.client = client
        self.identity = identity
        self.lease_duration = int(lease_duration)
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock, self._wall, self._rand = clock, wall, rand

        self.observed: LeaseRecord | None = None  # the Lease's spec as last read or written
        self.observed_at = 0.0  # clock() when that record was first seen
        self._observed_obj: dict[str, Any] | None = None  # ... and the object (resourceVersion)
        self.renewed_at: float | None = None  # clock() at the start of the last good write
        self.last_error: str | None = None  # the last attempt's API failure, None if it read
        self.lost_reason: str | None = None
        self._leader = False
        self._lost = False
        self._standby_logged: str | None = None
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # ---- state

    def is_leader(self) -> bool:
        """True while this process holds the Lease and its last successful renewal started
        less than the renew deadline ago (by the clock: no renewal needs to run for this to
        turn false). The write fence."""
        renewed = self.renewed_at
        return (self._leader and renewed is not None
                and self._clock() - renewed < self.renew_deadline)

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def holder(self) -> str:
        """The holder as last observed ("" when none or not read yet)."""
        return self.observed.holder if self.observed is not None else ""

    # ---- one attempt

    def _observe(self, obj: dict[str, Any], record: LeaseRecord, now: float) -> None:
        if record != self.observed:
            self.observed, self.observed_at = record, now
        self._observed_obj = obj

    def _body(self, base: Mapping[str, Any] | None, record: LeaseRecord) -> dict[str, Any]:
        if base is None:
            namespace, _, name = self.client.describe().partition("/")
            return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": record.to_spec()}
        body = copy.deepcopy(dict(base))
        body["spec"] = record.to_spec()
        return body

    def try_acquire_or_renew(self) -> Outcome:
        """One read and at most one write, client-go's tryAcquireOrRenew; no transitions."""
        now = self._clock()
        stamp = micro_time(self._wall())
        try:
            obj = self.client.get()
        except LeaseError as exc:
            self.last_error = f"reading Lease {self.client.describe()}: {exc}"
            return "error"
        if obj is None:
            record = LeaseRecord(self.identity, self.lease_duration, stamp, stamp, 0)
            try:
                created = self.client.create(self._body(None, record))
            except LeaseConflict:  # another candidate created it first: read it next time
                self.last_error = None
                return "conflict"
            except LeaseError as exc:
                self.last_error = f"creating Lease {self.client.describe()}: {exc}"
                return "error"
            self.last_error = None
            self._observe(created, record, now)
            return "acquired"
        self.last_error = None
        current = LeaseRecord.from_object(obj)
        self._observe(obj, current, now)
        mine = current.holder == self.identity
        if current.holder and not mine and now < self.observed_at + current.lease_duration:
            return "held"
        if mine:
            record = replace(current, lease_duration=self.lease_duration, renew_time=stamp)
        else:  # no holder (released) or expired as seen from here: take it over
            record = LeaseRecord(self.identity, self.lease_duration, stamp, stamp,
                                 current.transitions + 1)
        try:
            written = self.client.replace(self._body(obj, record))
        except LeaseConflict:  # someone wrote since our read: they won this round
            return "conflict"
        except LeaseError as exc:
            self.last_error = f"writing Lease {self.client.describe()}: {exc}"
            return "error"
        self._observe(written, record, now)
        return "renewed" if mine else "acquired"

    def step(self) -> bool:
        """One attempt plus the transition it implies; returns whether we lead now."""
        if self._lost:
            return False
        started = self._clock()
        before = self.observed
        outcome = self.try_acquire_or_renew()
        with self._lock:
            if self._lost:  # declared lost meanwhile (a timed-out renewal): stays lost
                return False
            if outcome in ("acquired", "renewed"):
                self.renewed_at = started
                if not self._leader:
                    self._leader = True
                    took = (f" from {before.holder}" if before is not None and before.holder
                            and before.holder != self.identity else "")
                    log.info("became leader: Lease %s is held by %s%s (transitions: %d)",
                             self.client.describe(), self.identity, took,
                             self.observed.transitions if self.observed else 0)
                return True
            if self._leader:
                holder = self.holder
                if outcome in ("held", "conflict") and holder and holder != self.identity:
                    self._lose(f"lost the lease to {holder}")
                elif self._clock() - (self.renewed_at or started) >= self.renew_deadline:
                    self._lose(f"lost the lease: not renewed within the renew deadline of "
                               f"{self.renew_deadline:g} s ({self.last_error or outcome})")
                return self.is_leader()
        if outcome == "held" and self._standby_logged != self.holder:
            self._standby_logged = self.holder
            log.info("standing by: lease %s held by %s", self.client.describe(), self.holder)
        elif outcome == "error" and self._standby_logged != "\0error":
            self._standby_logged = "\0error"
            log.warning("standing by: %s; retrying", self.last_error)
        return False

    def _lose(self, reason: str) -> None:
        self._leader = False
        self._lost = True
        self.lost_reason = reason
        log.error("%s; stopping", reason)

    def declare_lost(self, reason: str) -> None:
        """From outside a step (a renewal that did not return in time)."""
        with self._lock:
            if not self._lost:
                self._lose(reason)

    def release(self) -> bool:
        """Give the Lease up (no holder, leaseDurationSeconds 1) if we hold it; the fence
        closes first. Returns whether the Lease was released."""
        with self._lock:
            if not self.is_leader() or self._lost:
                return False
            self._leader = False
            self._lost = True  # nothing more from this elector
            self.lost_reason = "released"
        obj, current = self._observed_obj, self.observed
        for _ in range(2):
            if obj is None or current is None or current.holder != self.identity:
                return False
            stamp = micro_time(self._wall())
            record = LeaseRecord("", 1, stamp, stamp, current.transitions)
            try:
                self.client.replace(self._body(obj, record))
            except LeaseConflict:  # changed since our last write: look again once
                try:
                    obj = self.client.get()
                except LeaseError:
                    break
                current = LeaseRecord.from_object(obj) if obj is not None else None
                continue
            except LeaseError as exc:
                log.warning("could not release Lease %s (%s); a successor takes over when "
                            "it expires", self.client.describe(), exc)
                return False
            log.info("released Lease %s", self.client.describe())
            return True
        log.warning("could not release Lease %s: it changed under us", self.client.describe())
        return False

    # ---- asyncio drivers

    def _run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """fn on the private executor. A future, not a coroutine: awaiting it (also through
        wait_for) creates no task, and kopf counts tasks created while it runs as its own."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="lease")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def acquire(self) -> None:
        """Return once this process leads (standby until then)."""
        while not await self._run(self.step):
            await asyncio.sleep(self.retry_period * (1 + JITTER * self._rand()))

    async def hold(self) -> str:
        """Renew every retry period while leading; return why leadership ended."""
        while True:
            await asyncio.sleep(self.retry_period)
            if not self.is_leader() and not self._lost:
                self.declare_lost(f"lost the lease: not renewed within the renew deadline of "
                                  f"{self.renew_deadline:g} s (the event loop was stalled?)")
            if self._lost:
                return self.lost_reason or "lost the lease"
            remaining = (self.renewed_at or 0.0) + self.renew_deadline - self._clock()
            try:
                await asyncio.wait_for(self._run(self.step), timeout=max(remaining, 0.0))
            except TimeoutError:
                self.declare_lost(f"lost the lease: the renewal did not return within the "
                                  f"renew deadline of {self.renew_deadline:g} s")
            if self._lost:
                return self.lost_reason or "lost the lease"

    async def release_async(self, timeout: float | None = None) -> bool:
        try:
            released: bool = await asyncio.wait_for(
                self._run(self.release), timeout=timeout or self.renew_deadline)
        except TimeoutError:
            log.warning("releasing Lease %s timed out", self.client.describe())
            return False
        return released

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
