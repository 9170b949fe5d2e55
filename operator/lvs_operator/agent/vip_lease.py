"""Director high availability over Leases: which of the director nodes adds a VIP.

For a VirtualService with `spec.ha.mode: Lease` every director agent programs IPVS, but only
the holder of the VIP's Lease adds the VIP address; the others stand by with IPVS ready and
the VIP absent. This module is the agent's side of that election, the same client-go
semantics as the operator's (coordination/lease.py), one `Elector` per HA group, all driven
from the agent's single-threaded loop: no thread, no timer; `step()` does what is due and
`next_due()` says when to call it again.

Where the Leases live, and what they are called
- In the operator's (the release's) namespace, never in the VirtualService's: the agents'
  ServiceAccount then needs Lease rights in that one namespace only (a Role, api/rbac.py
  `AGENT_HA_LEASE_RULES`), not in every namespace where users keep their own Leases.
- One Lease per VIP *address* (an HA group), not per VirtualService: the address is what one
  node holds. Two VirtualServices on one VIP (ports 80 and 443) must move together, or two
  directors would answer ARP for the same address. `ha_lease_name()` names it
  `lvs-ha-<address>` (IPv6 exploded, colons as dashes), and the Lease carries the label
  `app.kubernetes.io/managed-by: lvs-operator` and annotations naming the group and its
  VirtualServices (`lvs.dev/ha-group`, `lvs.dev/virtual-services`).
- The holder identity is `<node>_<8 hex digits>` (`lease_identity()`): the node for people,
  and a suffix drawn once per process, so a restarted agent is a new candidate and waits out
  (or sees released) what its previous life held, rather than trusting an unknown past.

Timing and safety (defaults: lease 2 s, renew deadline 1.5 s, retry period 0.5 s)
- `held()` is judged by the monotonic clock at call time: a holder that has not renewed
  within the renew deadline stops holding at that instant, even if no step ran (API
  unreachable, the loop stalled). A standby takes over only after the lease duration as
  observed by itself, counted from after the read that showed the last renewal; the
  difference (0.5 s) is the time the former holder has to remove its VIP. `next_due()`
  includes each held group's deadline, so the agent wakes to drop the VIP on time.
- API calls are bounded so that no step overruns a held group's deadline: a client that can
  be bounded (`BoundedLeaseClient`, e.g. `KubernetesLeaseClient`) is told, before every step,
  the earliest deadline among the groups held; and `step()` returns as soon as one of them is
  lost, so the VIP goes before the remaining (standby) work is done.
- Failover when the holder's node dies: within the lease duration plus one retry period
  (plus jitter) after its last renewal. Handover when the holder can no longer serve
  (`can_hold` false, group removed) or shuts down (`release_all()`): the Lease is released
  and a standby takes it within one retry period.
- A candidate that cannot serve (`can_hold` false, e.g. the VIP's interface has no carrier)
  neither takes nor keeps the Lease: it releases it if it holds it and stops competing until
  it can again.
- Losing is final for an elector; the group then competes again with a fresh one (which,
  finding the Lease still in its own name, renews it; which, finding another holder, waits).
"""

from __future__ import annotations

import enum
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..api.objects import API_GROUP
from ..compiler.fragment import ha_lease_name
from ..coordination.lease import (
    Elector,
    LeaseClient,
    LeaseConflict,
    LeaseError,
    check_timings,
)
from .kubeapi import KubeAPI, KubeAPIError

__all__ = [
    "BoundedLeaseClient",
    "HAGroup",
    "KubernetesLeaseClient",
    "Transition",
    "TransitionKind",
    "VIPElection",
    "ha_lease_name",
    "lease_api_client",
    "lease_identity",
]

MANAGED_BY = {"app.kubernetes.io/managed-by": "lvs-operator"}
GROUP_ANNOTATION = f"{API_GROUP}/ha-group"
SERVICES_ANNOTATION = f"{API_GROUP}/virtual-services"
REQUEST_TIMEOUT = 1.0  # seconds, whole request (connect + read); also cut at the renew deadline
MIN_TIMEOUT = 0.05  # a bounded request still gets this long
ANNOTATED_SERVICES = 20  # VirtualServices named in a Lease's annotation
_PROCESS_TOKEN = secrets.token_hex(4)


def lease_identity(node: str) -> str:
    """The holder identity of this agent process: `<node>_<8 hex digits>`, the suffix drawn
    once per process (a pid is 1 in every container)."""
    if not node:
        raise ValueError("the node name must not be empty")
    return f"{node}_{_PROCESS_TOKEN}"


@dataclass(frozen=True)
class HAGroup:
    """One HA group this node competes in: VIPs (one, or a named spec.ha.group) that one
    director at a time may hold.

    `can_hold` is the agent's judgement that this node can serve them right now (False,
    with a short `why_not`, e.g. when a VIP's interface has no carrier)."""

    name: str
    lease_namespace: str
    lease_name: str
    virtual_services: tuple[str, ...] = ()  # "namespace/name", for the Lease's annotation
    can_hold: bool = True
    why_not: str = ""
    lease_duration: int = 2
    renew_deadline: float = 1.5
    retry_period: float = 0.5

    def __post_init__(self) -> None:
        if not (self.name and self.lease_namespace and self.lease_name):
            raise ValueError(f"HA group {self.name!r}: name, lease namespace and lease name "
                             "must not be empty")
        try:
            check_timings(self.lease_duration, self.renew_deadline, self.retry_period)
        except ValueError as exc:
            raise ValueError(f"HA group {self.name}: {exc}") from None

    def lease_key(self) -> tuple[str, str, int, float, float]:
        """What the elector is built from: a change means a new election."""
        return (self.lease_namespace, self.lease_name, self.lease_duration,
                self.renew_deadline, self.retry_period)

    def metadata(self) -> dict[str, dict[str, str]]:
        return {"labels": dict(MANAGED_BY),
                "annotations": {GROUP_ANNOTATION: self.name,
                                SERVICES_ANNOTATION: services_annotation(self.virtual_services)}}


def services_annotation(names: Iterable[str], limit: int = ANNOTATED_SERVICES) -> str:
    """The group's VirtualServices for a person reading the Lease: the first `limit`, then
    how many more (a group of thousands would pass the API's 256 KiB annotation limit)."""
    ordered = sorted(names)
    text = ",".join(ordered[:limit])
    return text + (f",... ({len(ordered) - limit} more)" if len(ordered) > limit else "")


class TransitionKind(enum.StrEnum):
    ACQUIRED = "acquired"  # this node holds the group now: add the VIP
    LOST = "lost"  # it no longer does (deadline passed, taken over): remove the VIP
    RELEASED = "released"  # it gave the Lease up (cannot serve, removed, shutting down)


class Transition(NamedTuple):
    group: str
    kind: TransitionKind
    detail: str


@runtime_checkable
class BoundedLeaseClient(Protocol):
    """A LeaseClient whose requests can be cut short: from `bound(deadline)` on, every request
    gives up (LeaseError) by `deadline` (the election's clock) or after its usual timeout,
    whichever comes first; `bound(None)` lifts the bound."""

    def bound(self, deadline: float | None) -> None: ...


@dataclass
class _Slot:
    group: HAGroup
    elector: Elector | None = None
    reported: bool = False  # "acquired" was returned and not yet "lost"/"released"


class VIPElection:
    """This node's candidacies, one per HA group; single-threaded.

    `client_for(group)` gives the LeaseClient of a group's Lease (a `KubernetesLeaseClient`,
    or an in-memory one in tests). `clock` is monotonic and decides everything; `wall` is
    only written into the Leases for people."""

    def __init__(
        self,
        identity: str,
        client_for: Callable[[HAGroup], LeaseClient],
        groups: Iterable[HAGroup] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        before_release: Callable[[str], None] = lambda group: None,
    ) -> None:
        if not identity:
            raise ValueError("the holder identity must not be empty")
        self.identity = identity
        # Called with a held group's name just before its Lease is released: the VIP must be
        # gone before a standby may take it (within one retry period of the release).
        self.before_release = before_release
        self._client_for = client_for
        self._clock, self._wall, self._rand = clock, wall, rand
        self._slots: dict[str, _Slot] = {}
        self._closed = False
        self.update(groups)

    # ---- what is held

    def held(self) -> set[str]:
        """The groups this node holds right now, by the clock at call time."""
        return {name for name, slot in self._slots.items()
                if slot.elector is not None and slot.elector.is_leader()}

    def next_due(self) -> float:
        """clock() time at which step() should run next: the earliest elector step due, or a
        held group's renew deadline (to drop its VIP on time); infinity when nothing is."""
        due = float("inf")
        for slot in self._slots.values():
            if slot.elector is not None:
                due = min(due, slot.elector.next_step_at())
                until = slot.elector.leader_until()
                if until is not None:
                    due = min(due, until)
        return due

    def leader_until(self, group: str) -> float | None:
        """clock() time at which this node stops holding `group` unless it renews first;
        None when it does not hold it."""
        slot = self._slots.get(group)
        if slot is None or slot.elector is None:
            return None
        return slot.elector.leader_until()

    def holder(self, group: str) -> str:
        """The holder of `group`'s Lease as last read ("" when unknown or none)."""
        slot = self._slots.get(group)
        return slot.elector.holder if slot is not None and slot.elector is not None else ""

    def groups(self) -> dict[str, HAGroup]:
        return {name: slot.group for name, slot in self._slots.items()}

    # ---- driving

    def step(self, now: float | None = None) -> list[Transition]:
        """Step every elector that is due at `now` (default: the clock), renewals first;
        return the transitions. Returns early, right after the call during which a held
        group was lost (the rest is still due: call again at once)."""
        if self._closed:
            return []
        now = self._clock() if now is None else now
        out = self._settle()
        if any(t.kind is TransitionKind.LOST for t in out):
            return out
        due = [s for s in self._slots.values()
               if s.elector is not None and s.elector.next_step_at() <= now]
        due.sort(key=lambda s: (not s.reported, s.elector.next_step_at() if s.elector else 0.0,
                                s.group.name))
        for slot in due:
            elector = slot.elector
            if elector is None or elector.lost:  # replaced while settling
                continue
            self._bound(elector.client)
            elector.step()
            changes = self._settle()
            out.extend(changes)
            if any(t.kind is TransitionKind.LOST for t in changes):
                break
        return out

    def update(self, groups: Iterable[HAGroup]) -> list[Transition]:
        """Compete in exactly `groups` from now on. A removed group, a group that can no
        longer be held here, or one whose Lease or timings changed is released if held."""
        if self._closed:
            return []
        wanted: dict[str, HAGroup] = {}
        for group in groups:
            if group.name in wanted:
                raise ValueError(f"HA group {group.name} is listed twice")
            wanted[group.name] = group
        out: list[Transition] = []
        for name in sorted(set(self._slots) - set(wanted)):
            out.extend(self._retire(self._slots.pop(name), "the group was removed"))
        for name, group in sorted(wanted.items()):
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot(group)
            else:
                old, slot.group = slot.group, group
                if not group.can_hold:
                    out.extend(self._retire(slot, f"cannot hold: {group.why_not or 'unknown'}"))
                elif old.lease_key() != group.lease_key():
                    out.extend(self._retire(slot, "the Lease or its timings changed"))
            if slot.elector is None and group.can_hold:
                slot.elector = self._elector(group)
            elif slot.elector is not None:
                slot.elector.metadata = group.metadata()
        return out

    def release_all(self) -> list[Transition]:
        """Graceful shutdown: release every held Lease (a standby takes over within one retry
        period) and stop competing; held() is empty from here on."""
        out: list[Transition] = []
        for name in sorted(self._slots):
            out.extend(self._retire(self._slots[name], "shutting down"))
        self._closed = True
        return out

    # ---- internals

    def _elector(self, group: HAGroup) -> Elector:
        return Elector(
            self._client_for(group), self.identity,
            lease_duration=group.lease_duration, renew_deadline=group.renew_deadline,
            retry_period=group.retry_period, clock=self._clock, wall=self._wall,
            rand=self._rand, metadata=group.metadata())

    def _bound(self, client: LeaseClient) -> None:
        """No request may run past the earliest renew deadline of the groups held."""
        if isinstance(client, BoundedLeaseClient):
            deadlines = [u for s in self._slots.values() if s.elector is not None
                         and (u := s.elector.leader_until()) is not None]
            client.bound(min(deadlines) if deadlines else None)

    def _settle(self) -> list[Transition]:
        """Report what changed since the last report, by the clock now; replace lost
        electors with fresh candidates."""
        out: list[Transition] = []
        for name in sorted(self._slots):
            slot = self._slots[name]
            elector = slot.elector
            if elector is None:
                if slot.reported:
                    slot.reported = False
                    out.append(Transition(name, TransitionKind.LOST, "no longer a candidate"))
                continue
            leading = elector.is_leader()
            if not leading and elector.leader_until() is not None:  # the deadline passed
                elector.declare_lost(
                    f"not renewed within the renew deadline of {elector.renew_deadline:g} s"
                    f" ({elector.last_error or 'no renewal succeeded in time'})")
            if slot.reported and not leading:
                slot.reported = False
                out.append(Transition(name, TransitionKind.LOST,
                                      f"Lease {elector.client.describe()}: "
                                      f"{elector.lost_reason or 'lost'}"))
            elif leading and not slot.reported:
                slot.reported = True
                record = elector.observed
                out.append(Transition(
                    name, TransitionKind.ACQUIRED,
                    f"Lease {elector.client.describe()} held by {self.identity}"
                    f" (transitions: {record.transitions if record else 0})"))
            if elector.lost and slot.group.can_hold and not self._closed:
                slot.elector = self._elector(slot.group)
        return out

    def _retire(self, slot: _Slot, why: str) -> list[Transition]:
        """Stop competing for slot's group: release its Lease if held."""
        elector, slot.elector = slot.elector, None
        was, slot.reported = slot.reported, False
        name = slot.group.name
        if elector is None:
            return [Transition(name, TransitionKind.LOST, why)] if was else []
        if elector.is_leader():
            self.before_release(name)
            self._bound(elector.client)
            released = elector.release()
            detail = (f"{why}: released Lease {elector.client.describe()}" if released else
                      f"{why}: could not release Lease {elector.client.describe()}; it "
                      f"expires after {elector.lease_duration} s")
            return [Transition(name, TransitionKind.RELEASED, detail)]
        if was:
            return [Transition(name, TransitionKind.LOST,
                               f"{why}; Lease {elector.client.describe()} was not renewed "
                               f"within the renew deadline of {elector.renew_deadline:g} s")]
        return []


# --------------------------------------------------------------------------- kubernetes client


def lease_api_client(api: KubeAPI) -> KubeAPI:
    """The agent's API client for Lease requests: the same cluster and credentials, without
    a second try on a stale connection (it would restart the request's timeout and overrun
    the renew deadline; the election retries by itself)."""
    return api.sibling(retry_stale=False)


class KubernetesLeaseClient:
    """LeaseClient (and BoundedLeaseClient) for one Lease over the agent's API client, as
    JSON (no typed models: what is read is written back whole). Every request times out after
    `timeout` seconds (connect, then each read), or at the bound; 404 on read is None, 409 is
    LeaseConflict, anything else (HTTP errors, timeouts, refused connections) LeaseError.
    Pass a client from `lease_api_client()`."""

    def __init__(self, api: KubeAPI, namespace: str, name: str, *,
                 timeout: float = REQUEST_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self.namespace, self.name, self.timeout = namespace, name, timeout
        self._clock = clock
        self._deadline: float | None = None

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    def bound(self, deadline: float | None) -> None:
        self._deadline = deadline

    def request_timeout(self) -> float:
        """This request's timeout: the usual one, shortened to the bound."""
        if self._deadline is None:
            return self.timeout
        return min(self.timeout, max(self._deadline - self._clock(), MIN_TIMEOUT))

    def _call(self, method: str, doing: str, *, named: bool,
              body: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any] | None, str]:
        segments = ["apis", "coordination.k8s.io", "v1", "namespaces", self.namespace, "leases"]
        path = KubeAPI.path(*segments, *([self.name] if named else []))
        try:
            response = self._api.request(method, path, doing=doing,
                                         body=dict(body) if body is not None else None,
                                         timeout=self.request_timeout())
        except KubeAPIError as exc:
            raise LeaseError(str(exc)) from exc
        status = response.status
        if 200 <= status <= 299:
            try:
                obj = response.json()
            except ValueError as exc:
                raise LeaseError(f"{doing}: HTTP {status}: not JSON: "
                                 f"{response.body[:200]!r}") from exc
            if not isinstance(obj, dict):
                raise LeaseError(f"{doing}: HTTP {status}: not an object")
            return status, obj, ""
        return status, None, f"{doing}: HTTP {status}: {response.message()}"

    def get(self) -> dict[str, Any] | None:
        status, obj, error = self._call("GET", f"reading Lease {self.describe()}", named=True)
        if obj is not None:
            return obj
        if status == 404:
            return None
        raise LeaseError(error)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._write("POST", f"creating Lease {self.describe()}", obj, named=False)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._write("PUT", f"writing Lease {self.describe()}", obj, named=True)

    def _write(self, method: str, doing: str, obj: Mapping[str, Any], *,
               named: bool) -> dict[str, Any]:
        status, written, error = self._call(method, doing, named=named, body=obj)
        if written is not None:
            return written
        raise (LeaseConflict if status == 409 else LeaseError)(error)
