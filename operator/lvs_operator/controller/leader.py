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

The state machine itself (and `LeaseClient`, `LeaseRecord`, the errors) lives in
coordination/lease.py, shared with the node agent's director HA; this module adds the asyncio
drivers and `KubeLeaseClient` over controller/kube.py (tests use an in-memory store), and
re-exports the core's names.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..coordination.lease import (
    JITTER,
    Elector,
    LeaseClient,
    LeaseConflict,
    LeaseError,
    LeaseRecord,
    Outcome,
    micro_time,
)
from .kube import ApiError, KubeAPI, quote

__all__ = [
    "JITTER",
    "KubeLeaseClient",
    "LeaseClient",
    "LeaseConflict",
    "LeaseElector",
    "LeaseError",
    "LeaseRecord",
    "Outcome",
    "micro_time",
]

log = logging.getLogger("lvs_operator.leader")


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


class LeaseElector(Elector):
    """The operator's candidate for its Lease: the core `Elector` (coordination/lease.py),
    logging to `lvs_operator.leader`, driven from asyncio. `acquire()` and `hold()` run
    `step()` on a private one-thread executor (so a busy default executor cannot delay a
    renewal)."""

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
        logger: logging.Logger | None = log,
    ) -> None:
        super().__init__(client, identity, lease_duration=lease_duration,
                         renew_deadline=renew_deadline, retry_period=retry_period,
                         clock=clock, wall=wall, rand=rand, metadata=metadata, logger=logger)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

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
