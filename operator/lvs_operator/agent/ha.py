"""Director HA in Lease mode, running: the node's VIPElection stepped on a thread of its
own, so a renewal every retry period never waits behind a reconcile pass or a NodePlan watch.

The agent loop stays the only writer to the kernel. It asks :meth:`LeaseDriver.held` before
each pass (judged by the clock at that moment, from the renew deadlines of the last step, so
the answer never waits for an API call in flight), and the driver wakes the loop on every
transition: a VIP is added (and announced) when its Lease is won and removed the moment the
holder can no longer prove it renewed within the renew deadline.

A VIP is never left behind for a standby to collide with:
- It is added with a valid lifetime (:meth:`LeaseDriver.lifetime`) that ends before any
  standby can take the Lease, and :class:`VIPKeeper` extends it after every renewal. An agent
  that is SIGKILLed, frozen or cut off from the API loses its VIP by the kernel's own clock.
- Before a held Lease is released (shutdown, plan change, lost carrier) and when it is lost,
  the keeper deletes the group's VIPs on this thread, without waiting for the agent loop
  (which may be in the middle of a long pass): a standby may take over within one retry
  period of a release.
- A director whose VIP device has no carrier (`Addresses.link_up`) cannot serve the VIP: it
  releases the Lease and stops competing until the link is back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from ..compiler.plan import NodePlan, VIPAddress
from ..kernel.errors import KernelError, NotFound
from ..kernel.netstate import AddressEntry, Addresses
from .vip_lease import HAGroup, Transition, TransitionKind, VIPElection

__all__ = ["LIFETIME_MARGIN", "LeaseDriver", "VIPKeeper", "lease_groups"]

log = logging.getLogger("lvs_operator.agent.ha")

# Seconds between the moment a VIP's lifetime may end at the latest and the earliest moment a
# standby may take the Lease: the kernel deletes an expired IPv4/IPv6 address up to a quarter
# second late (ADDRCONF_TIMER_FUZZ), plus slack for the add itself.
LIFETIME_MARGIN = 0.5


def lease_groups(plan: NodePlan, namespace: str,
                 can_hold: Callable[[VIPAddress], str] = lambda vip: "") -> list[HAGroup]:
    """The HA groups this director competes in: one per Lease-mode group of its plan's VIPs
    (a VIP of its own, or a named spec.ha.group of several, which fail over together).
    `can_hold(vip)` says why this node cannot serve the VIP now ("" when it can); a group is
    held only where every VIP of it can be served. A group's timings are those of its first
    VIP (the compiler warns members that disagree)."""
    members: dict[str, list[VIPAddress]] = {}
    for vip in plan.director.vips:
        if vip.ha is not None and vip.ha.mode == "Lease":
            members.setdefault(vip.ha.group, []).append(vip)
    out = []
    for name, vips in members.items():
        ha = vips[0].ha
        assert ha is not None
        why_not = "; ".join(w for w in (can_hold(v) for v in vips) if w)
        out.append(HAGroup(
            name=name,
            lease_namespace=namespace,
            lease_name=name,
            virtual_services=tuple(sorted({o for v in vips for o in v.owners})),
            can_hold=not why_not,
            why_not=why_not,
            lease_duration=ha.lease_duration,
            renew_deadline=float(ha.renew_deadline),
            retry_period=float(ha.retry_period),
        ))
    return out


class VIPKeeper:
    """The Lease driver's hands on the kernel: judges whether a VIP's device can serve,
    extends the lifetime of held VIPs, deletes them before a release. Its own Addresses
    adapter (its own netlink socket: it runs on the driver's thread, not the agent loop's).

    It only ever extends or deletes addresses that are there and ours; adding a VIP stays
    the reconciler's (after IPVS for it is programmed)."""

    def __init__(self, addresses: Addresses) -> None:
        self._addresses = addresses
        self._vips: dict[str, list[VIPAddress]] = {}  # group -> its VIPs
        self._links: dict[str, bool] = {}  # device -> link_up, read once per round

    def new_round(self) -> None:
        """Forget the link states read so far (one read per device per driver round)."""
        self._links.clear()

    def update(self, plan: NodePlan) -> None:
        vips: dict[str, list[VIPAddress]] = {}
        for vip in plan.director.vips:
            if vip.ha is not None and vip.ha.mode == "Lease":
                vips.setdefault(vip.ha.group, []).append(vip)
        self._vips = vips

    def why_not(self, vip: VIPAddress) -> str:
        """Why this node cannot serve `vip` now ("" when it can): its device is down or has
        no carrier. A device that cannot be told (no route yet) does not stop it."""
        try:
            device = vip.interface or self._addresses.route_device(vip.address)
            if device and device not in self._links:
                self._links[device] = self._addresses.link_up(device)
            if device and not self._links[device]:
                return f"device {device} of VIP {vip.address} is down or has no carrier"
        except NotFound as exc:
            return str(exc)
        except KernelError as exc:
            log.warning("cannot read the link state for VIP %s: %s", vip.address, exc)
        return ""

    def refresh(self, group: str, lifetime: int) -> bool:
        """Extend the group's VIPs that are there to `lifetime` seconds from now; False when
        one of them is missing (the agent loop should add it)."""
        wanted = {v.address for v in self._vips.get(group, ())}
        found: set[str] = set()
        for entry in self._owned(wanted):
            try:
                self._addresses.add(entry.device, entry.address, entry.prefix_length, lifetime)
                found.add(entry.address)
            except KernelError as exc:
                log.warning("HA group %s: extending %s failed: %s", group, entry.address, exc)
        return found >= wanted

    def drop(self, group: str) -> None:
        """Delete the group's VIPs now (before its Lease is released, or once it is lost)."""
        for entry in self._owned({v.address for v in self._vips.get(group, ())}):
            try:
                self._addresses.delete(entry.device, entry.address, entry.prefix_length)
                log.info("HA group %s: removed VIP %s/%d dev %s", group, entry.address,
                         entry.prefix_length, entry.device, extra={"haGroup": group})
            except NotFound:
                pass
            except KernelError as exc:
                log.error("HA group %s: removing VIP %s failed: %s", group, entry.address, exc,
                          extra={"haGroup": group})

    def _owned(self, addresses: set[str]) -> list[AddressEntry]:
        if not addresses:
            return []
        try:
            return [e for e in self._addresses.list() if e.owned and e.address in addresses]
        except KernelError as exc:
            log.warning("listing addresses failed: %s", exc)
            return []


class LeaseDriver:
    """Steps a VIPElection on its own thread and tells the agent loop what it holds."""

    def __init__(
        self,
        election: VIPElection,
        namespace: str,
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        keeper: VIPKeeper | None = None,
    ) -> None:
        self._election = election
        self.namespace = namespace
        self._on_change = on_change
        self._clock = clock
        self._keeper = keeper
        self._plan: NodePlan | None = None
        self._missing_woke: dict[str, float] = {}  # group -> clock() of the last such wake-up
        self._expires: dict[str, float] = {}  # group -> clock() its VIP's lifetime ends at
        if keeper is not None:
            election.before_release = keeper.drop
        self._lock = threading.Lock()  # guards the election (stepped here, updated by the loop)
        self._until: dict[str, float] = {}  # group -> clock() time its holding ends
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def update(self, plan: NodePlan) -> None:
        """Compete for exactly the Lease-mode VIPs of `plan`."""
        with self._lock:
            self._plan = plan
            if self._keeper is not None:
                self._keeper.update(plan)
            self._report(self._election.update(self._groups(plan)))
        self._wake.set()

    def held(self) -> frozenset[str]:
        """The groups held right now: renewed within the renew deadline, by the clock now."""
        now = self._clock()
        return frozenset(g for g, until in dict(self._until).items() if now < until)

    def lifetime(self, group: str) -> int | None:
        """The valid lifetime (whole seconds) `group`'s VIP may be added or extended with now:
        it ends at least LIFETIME_MARGIN before any standby may take the Lease (the lease
        duration after the start of the last renewal), None when not even one second fits."""
        bound = self._bound(group)
        until = self._until.get(group)
        now = self._clock()
        if bound is None or until is None or now >= until:
            return None
        seconds = math.floor(bound - now)
        return seconds if seconds >= 1 else None

    def step(self) -> float:
        """One round (the thread's body; tests call it directly): seconds to the next one."""
        with self._lock:
            if self._keeper is not None and self._plan is not None:
                # the link state may have changed: a device without carrier gives its VIP up
                self._keeper.new_round()
                self._report(self._election.update(self._groups(self._plan)))
            transitions = self._election.step()
            self._report(transitions)
            self._extend_held()
            due = min(self._election.next_due(), self._next_extension())
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

    def _groups(self, plan: NodePlan) -> list[HAGroup]:
        if self._keeper is None:
            return lease_groups(plan, self.namespace)
        return lease_groups(plan, self.namespace, self._keeper.why_not)

    def _bound(self, group: str) -> float | None:
        """The latest clock() time `group`'s VIP may live to: LIFETIME_MARGIN before a
        standby may take the Lease, counted from the start of the last renewal."""
        until = self._until.get(group)
        spec = self._election.groups().get(group)
        if until is None or spec is None:
            return None
        return until + (spec.lease_duration - spec.renew_deadline) - LIFETIME_MARGIN

    def _extend_held(self) -> None:
        """Push the held VIPs' lifetimes out whenever that gains time (after a renewal, and
        once more a second before the bound, as whole seconds allow); wake the loop (at most
        every 2 s per group) when one is missing, e.g. it ran out during a slow renewal."""
        if self._keeper is None:
            return
        now = self._clock()
        held = self.held()
        self._expires = {g: t for g, t in self._expires.items() if g in held}
        for group in sorted(held):
            lifetime = self.lifetime(group)
            if lifetime is None or now + lifetime <= self._expires.get(group, -math.inf) + 0.2:
                continue
            self._expires[group] = now + lifetime
            if self._keeper.refresh(group, lifetime):
                continue
            if now - self._missing_woke.get(group, -math.inf) >= 2.0:
                self._missing_woke[group] = now
                self._on_change()

    def _next_extension(self) -> float:
        """clock() time of the next step that can extend a held VIP (math.inf if none): a
        renewal that keeps failing still keeps the VIP up to the bound, not one second."""
        due = math.inf
        if self._keeper is None:
            return due
        now = self._clock()
        for group in self.held():
            bound = self._bound(group)
            if bound is None:
                continue
            at = bound - 1.0 - 0.02  # the last moment a 1 s lifetime still fits
            if at > now and self._expires.get(group, -math.inf) < bound - 0.3:
                due = min(due, at)
        return due

    def _report(self, transitions: list[Transition]) -> None:
        until: dict[str, float] = {}
        for name in self._election.groups():
            slot_until = self._election.leader_until(name)
            if slot_until is not None:
                until[name] = slot_until
        changed = set(until) != set(self._until)
        self._until = until
        for t in transitions:
            if t.kind is TransitionKind.LOST and self._keeper is not None:
                self._keeper.drop(t.group)  # now, not after the agent loop's current pass
            level = logging.INFO if t.kind is TransitionKind.ACQUIRED else logging.WARNING
            log.log(level, "HA group %s: %s (%s)", t.group, t.kind.value, t.detail,
                    extra={"haGroup": t.group, "transition": t.kind.value})
        if transitions or changed:
            self._on_change()
