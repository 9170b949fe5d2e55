"""Leader election over a `coordination.k8s.io/v1` Lease, with client-go's semantics: the
synchronous, client-agnostic core that the operator (one Lease for the active replica,
controller/leader.py) and the node agent (one Lease per director HA group,
agent/vip_lease.py) both drive.

- A candidate takes the Lease when it does not exist (create), when it has no holder (a
  holder released it), or when it has not changed for `leaseDurationSeconds` *as observed by
  this process's monotonic clock*: the time of the first sight of each new record is noted
  (when the read that returned it came back, so the record was written before it), and the
  holder's own renewTime is never compared with our wall clock (clocks of different machines
  disagree; the timestamps written are for people).
- Every write carries the resourceVersion read just before it (optimistic concurrency): of
  two candidates racing for an expired Lease one gets 409 Conflict and stays a candidate.
- The holder renews every `retry_period`. If it has not renewed successfully for
  `renew_deadline` seconds it has lost leadership, whatever the reason (API unreachable, the
  loop stalled), and `is_leader()` turns false at that moment by the clock alone, so a
  fence built on it needs no renewal to have run. The renew deadline counts from the start of
  the last good write, a standby's lease duration from after the read that showed it: the
  margin between the two is what keeps two holders apart.
- Losing is final for one `Elector`: its owner stops what leadership allowed and, to compete
  again, starts a fresh one (the operator restarts; the agent replaces the elector).
- The holder can release the Lease (no holder, leaseDurationSeconds 1), like client-go's
  ReleaseOnCancel, so a standby takes over within one retry period instead of waiting out
  the lease.

An `Elector` has no thread and no timer of its own: `step()` makes at most one read and one
write and blocks only in them; `next_step_at()` says when the next step is due and
`leader_until()` when leadership ends unless a renewal succeeds, so one loop can drive many
electors (one per Lease). The API is reached through `LeaseClient` (get/create/replace of one
Lease object as JSON); errors come back as `LeaseError`, 409 as `LeaseConflict`.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = [
    "JITTER",
    "Elector",
    "LeaseClient",
    "LeaseConflict",
    "LeaseError",
    "LeaseRecord",
    "Outcome",
    "check_timings",
    "micro_time",
]

JITTER = 0.2  # a standby waits retry_period * (1 + JITTER * random) between attempts


class LeaseError(Exception):
    """The Lease could not be read or written (unreachable, forbidden, timed out, ...)."""


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


def micro_time(timestamp: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_timings(lease_duration: float, renew_deadline: float, retry_period: float) -> None:
    """ValueError unless 0 < retry period < renew deadline < lease duration, the last a whole
    number of seconds (leaseDurationSeconds is an integer)."""
    if lease_duration < 1 or int(lease_duration) != lease_duration:
        raise ValueError("the lease duration must be a whole number of seconds >= 1")
    if not 0 < retry_period < renew_deadline < lease_duration:
        raise ValueError(
            "want 0 < retry period < renew deadline < lease duration, got "
            f"{retry_period} / {renew_deadline} / {lease_duration}"
        )


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


class Elector:
    """One candidate (`identity`) for the Lease behind `client`.

    `step()` is one attempt to acquire or renew, with the transitions it implies (became
    leader, lost, standing by); it blocks on the API and nowhere else. Time comes from `clock`
    (monotonic: every decision) and `wall` (only the timestamps written into the Lease).
    `metadata` (labels, annotations) is merged into every Lease this elector writes. Log lines
    go to `logger`; without one the elector is silent and its owner reports transitions."""

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
        metadata: Mapping[str, Mapping[str, str]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not identity:
            raise ValueError("the leader-election identity must not be empty")
        check_timings(lease_duration, renew_deadline, retry_period)
        self.client = client
        self.identity = identity
        self.lease_duration = int(lease_duration)
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.metadata: dict[str, dict[str, str]] = {
            k: dict(v) for k, v in (metadata or {}).items()}
        self._clock, self._wall, self._rand = clock, wall, rand
        self._log = logger

        self.observed: LeaseRecord | None = None  # the Lease's spec as last read or written
        self.observed_at = 0.0  # clock() when that record was first seen
        self._observed_obj: dict[str, Any] | None = None  # ... and the object (resourceVersion)
        self.renewed_at: float | None = None  # clock() at the start of the last good write
        self.last_error: str | None = None  # the last attempt's API failure, None if it read
        self.lost_reason: str | None = None
        self._leader = False
        self._lost = False
        self._standby_logged: str | None = None
        self._next_at = clock()  # the first step is due at once
        self._lock = threading.Lock()

    # ---- state

    def is_leader(self) -> bool:
        """True while this process holds the Lease and its last successful renewal started
        less than the renew deadline ago (by the clock: no renewal needs to run for this to
        turn false). The fence."""
        renewed = self.renewed_at
        return (self._leader and renewed is not None
                and self._clock() - renewed < self.renew_deadline)

    def leader_until(self) -> float | None:
        """clock() time at which is_leader() turns false unless a renewal succeeds first;
        None when not leading (lost or standing by)."""
        if not self._leader or self._lost or self.renewed_at is None:
            return None
        return self.renewed_at + self.renew_deadline

    def next_step_at(self) -> float:
        """clock() time the next step() is due: a retry period after the start of the last one
        while leading; a jittered retry period as a standby, or the moment the observed
        holder's lease runs out as seen from here when that is sooner (so a takeover happens
        then, not up to a retry period later); infinity once lost."""
        return float("inf") if self._lost else self._next_at

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
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace},
                "spec": record.to_spec()}
        else:
            body = copy.deepcopy(dict(base))
            body["spec"] = record.to_spec()
        if self.metadata:
            meta = body.setdefault("metadata", {})
            for key, values in self.metadata.items():
                meta[key] = {**(meta.get(key) or {}), **values}
        return body

    def try_acquire_or_renew(self) -> Outcome:
        """One read and at most one write, client-go's tryAcquireOrRenew; no transitions."""
        stamp = micro_time(self._wall())
        try:
            obj = self.client.get()
        except LeaseError as exc:
            self.last_error = f"reading Lease {self.client.describe()}: {exc}"
            return "error"
        seen = self._clock()  # after the read: the record it returned was written before now
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
            self._observe(created, record, self._clock())
            return "acquired"
        self.last_error = None
        current = LeaseRecord.from_object(obj)
        self._observe(obj, current, seen)
        mine = current.holder == self.identity
        if current.holder and not mine and seen < self.observed_at + current.lease_duration:
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
        self._observe(written, record, self._clock())
        return "renewed" if mine else "acquired"

    def step(self) -> bool:
        """One attempt plus the transition it implies; returns whether we lead now."""
        if self._lost:
            return False
        started = self._clock()
        before = self.observed
        outcome = self.try_acquire_or_renew()
        with self._lock:
            self._schedule(started, outcome)
            if self._lost:  # declared lost meanwhile (a timed-out renewal): stays lost
                return False
            if outcome in ("acquired", "renewed"):
                self.renewed_at = started
                if not self._leader:
                    self._leader = True
                    took = (f" from {before.holder}" if before is not None and before.holder
                            and before.holder != self.identity else "")
                    self._info("became leader: Lease %s is held by %s%s (transitions: %d)",
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
            self._info("standing by: lease %s held by %s", self.client.describe(), self.holder)
        elif outcome == "error" and self._standby_logged != "\0error":
            self._standby_logged = "\0error"
            if self._log is not None:
                self._log.warning("standing by: %s; retrying", self.last_error)
        return False

    def _schedule(self, started: float, outcome: Outcome) -> None:
        if outcome in ("acquired", "renewed"):
            self._next_at = started + self.retry_period
            return
        wait = started + self.retry_period * (1 + JITTER * self._rand())
        record = self.observed
        if outcome == "held" and record is not None and record.holder:
            expires = self.observed_at + record.lease_duration
            if started < expires < wait:
                wait = expires
        self._next_at = wait

    def _info(self, msg: str, *args: Any) -> None:
        if self._log is not None:
            self._log.info(msg, *args)

    def _lose(self, reason: str) -> None:
        self._leader = False
        self._lost = True
        self.lost_reason = reason
        if self._log is not None:
            self._log.error("%s; stopping", reason)

    def declare_lost(self, reason: str) -> None:
        """From outside a step (a renewal that did not return in time, a deadline passed)."""
        with self._lock:
            if not self._lost:
                self._lose(reason)

    def release(self) -> bool:
        """Give the Lease up (no holder, leaseDurationSeconds 1) if we hold it; the fence
        closes first, and once it has tried the elector is done (lost). Returns whether the
        Lease was released; False also when we did not hold it (then nothing changes)."""
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
                if self._log is not None:
                    self._log.warning("could not release Lease %s (%s); a successor takes over "
                                      "when it expires", self.client.describe(), exc)
                return False
            self._info("released Lease %s", self.client.describe())
            return True
        if self._log is not None:
            self._log.warning("could not release Lease %s: it changed under us",
                              self.client.describe())
        return False
