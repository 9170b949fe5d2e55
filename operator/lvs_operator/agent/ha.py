"""Director HA in Lease mode, running: the node's VIPElection stepped on a thread of its
own, so a renewal every retry period never waits behind a reconcile pass or a NodePlan watch.

The agent loop stays the only writer to the kernel. It asks :meth:`LeaseDriver.held` before
each pass (judged by the clock at that moment, from the renew deadlines of the last step, so
the answer never waits for an API call in flight), and the driver wakes the loop on every
transition: a VIP is added (and announced) when its Lease is won and removed the moment the
holder can no longer prove it renewed within the renew deadline.

The VIP is added with a valid lifetime when the address adapter supports it (the kernel
removes it by itself if this process dies without releasing), see :data:`VIP_LIFETIME`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..compiler.plan import NodePlan
from .vip_lease import HAGroup, Transition, TransitionKind, VIPElection

__all__ = ["LeaseDriver", "lease_groups"]

log = logging.getLogger("lvs_operator.agent.ha")


def lease_groups(plan: NodePlan, namespace: str) -> list[HAGroup]:
    """The HA groups this director competes in: one per Lease-mode VIP of its plan."""
    out = []
    for vip in plan.director.vips:
        ha = vip.ha
        if ha is None or ha.mode != "Lease":
            continue
        out.append(HAGroup(
            name=ha.group,
            lease_namespace=namespace,
            lease_name=ha.group,
            virtual_services=vip.owners,
            lease_duration=ha.lease_duration,
            renew_deadline=float(ha.renew_deadline),
            retry_period=float(ha.retry_period),
        ))
    return out


class LeaseDriver:
    """Steps a VIPElection on its own thread and tells the agent loop what it holds."""

    def __init__(
        self,
        election: VIPElection,
        namespace: str,
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._election = election
        self.namespace = namespace
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()  # guards the election (stepped here, updated by the loop)
        self._until: dict[str, float] = {}  # group -> clock() time its holding ends
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def update(self, plan: NodePlan) -> None:
        """Compete for exactly the Lease-mode VIPs of `plan`."""
        with self._lock:
            self._report(self._election.update(lease_groups(plan, self.namespace)))
        self._wake.set()

    def held(self) -> frozenset[str]:
        """The groups held right now: renewed within the renew deadline, by the clock now."""
        now = self._clock()
        return frozenset(g for g, until in dict(self._until).items() if now < until)

    def step(self) -> float:
        """One round (the thread's body; tests call it directly): seconds to the next one."""
        with self._lock:
            transitions = self._election.step()
            self._report(transitions)
            due = self._election.next_due()
        return min(1.0, max(0.02, due - self._clock()))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lvs-ha-lease", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Release every held Lease (a standby takes over within one retry period)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._report(self._election.release_all())

    def _run(self) -> None:
        while not self._stopping:
            try:
                delay = self.step()
            except Exception:  # a bug must not end the election silently
                log.exception("HA lease step failed")
                delay = 1.0
            self._wake.wait(timeout=delay)
            self._wake.clear()

    def _report(self, transitions: list[Transition]) -> None:
        until: dict[str, float] = {}
        for name in self._election.groups():
            slot_until = self._election.leader_until(name)
            if slot_until is not None:
                until[name] = slot_until
        changed = set(until) != set(self._until)
        self._until = until
        for t in transitions:
            level = logging.INFO if t.kind is TransitionKind.ACQUIRED else logging.WARNING
            log.log(level, "HA group %s: %s (%s)", t.group, t.kind.value, t.detail,
                    extra={"haGroup": t.group, "transition": t.kind.value})
        if transitions or changed:
            self._on_change()
