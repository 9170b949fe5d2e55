"""One node's plan, kept up to date fragment by fragment.

A director of 10,000 VirtualServices must not re-merge 10,000 fragments because one endpoint
changed. `NodeAggregate` holds what each attached fragment contributes, keyed by identity,
and keeps the ipvsadm-ordered list of service keys sorted as services come and go, so
`plan()` after a change costs one pass over references, not a re-sort of everything.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections import Counter
from collections.abc import Iterable
from typing import Generic, TypeVar

from .fragment import Fragment, canonical_ip
from .plan import (
    HEALTH_PATH_MARK_COUNT,
    HEALTH_PATH_MARK_FIRST,
    BackendPlan,
    DirectorPlan,
    HealthPath,
    IPSetPlan,
    IPVSService,
    LoopbackVIP,
    MarkRule,
    NodePlan,
    ServiceKey,
    SNATRule,
    Sysctl,
    TunnelDevice,
    VIPAddress,
    health_path_of,
    health_path_service,
)

__all__ = ["NodeAggregate", "address_order", "health_path_marks", "service_order"]

A = TypeVar("A", VIPAddress, LoopbackVIP)

_PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132, "": 0}
ServiceOrder = tuple[int, int, int, int, int]


def service_order(key: ServiceKey) -> ServiceOrder:
    """ipvsadm's order: fwmark, then family (AF_INET before AF_INET6), protocol, address, port."""
    value = 0
    if key.address:
        canon = canonical_ip(key.address)
        value = canon[2] if canon else 0
    return (key.fwmark, 2 if key.family == 4 else 10, _PROTO_NUM[key.protocol], value, key.port)


def _max_values(counter: Counter[Sysctl]) -> tuple[Sysctl, ...]:
    best: dict[str, str] = {}
    for s, n in counter.items():
        if n > 0:
            best[s.key] = max(best.get(s.key, s.value), s.value)
    return tuple(Sysctl(k, v) for k, v in sorted(best.items()))


def health_path_marks(paths: Iterable[HealthPath]) -> dict[HealthPath, int]:
    """A firewall mark for each path: a hash of the path into the reserved range, the next free
    one on a collision (in path order). A pure function of the set, and a path keeps its mark
    when others come and go unless they collide; beyond the range's size the rest get none
    (their servers are then probed at their own address)."""
    marks: dict[HealthPath, int] = {}
    taken: set[int] = set()
    for path in sorted(set(paths)):
        if len(taken) >= HEALTH_PATH_MARK_COUNT:
            break
        digest = hashlib.blake2b(repr(tuple(path)).encode(), digest_size=4).digest()
        slot = int.from_bytes(digest, "big") % HEALTH_PATH_MARK_COUNT
        while slot in taken:
            slot = (slot + 1) % HEALTH_PATH_MARK_COUNT
        taken.add(slot)
        marks[path] = HEALTH_PATH_MARK_FIRST + slot
    return marks


def _paths_of(svc: IPVSService) -> list[HealthPath]:
    if svc.health is None:
        return []
    return [p for d in svc.destinations if (p := health_path_of(svc, d)) is not None]


class NodeAggregate:
    """Everything the attached fragments ask of one node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._services: dict[ServiceKey, IPVSService] = {}
        # Sorted keys and, in the same positions, the services: plan() is then one C-level
        # copy instead of 10,000 dictionary lookups.
        self._order: list[tuple[ServiceOrder, ServiceKey]] = []
        self._in_order: list[IPVSService] = []
        self._vips = _SharedAddresses[VIPAddress]()
        self._ipsets: dict[str, IPSetPlan] = {}
        self._marks: dict[tuple[int, int], MarkRule] = {}
        self._snats: dict[tuple[int, str, str, int, int], SNATRule] = {}
        self._director_sysctls: Counter[Sysctl] = Counter()
        self._health_paths: Counter[HealthPath] = Counter()
        self._lo_vips = _SharedAddresses[LoopbackVIP]()
        self._tunnels: Counter[TunnelDevice] = Counter()
        self._backend_sysctls: Counter[Sysctl] = Counter()
        self._cached: NodePlan | None = None

    def attach(self, frag: Fragment) -> None:
        self._apply(frag, +1)

    def detach(self, frag: Fragment) -> None:
        self._apply(frag, -1)

    def _apply(self, frag: Fragment, sign: int) -> None:
        self._cached = None
        owner = f"{frag.ref.namespace}/{frag.ref.name}"
        if self.node in frag.directors:
            for svc in frag.services:
                self._service(svc, sign)
            if frag.vip is not None:
                self._vips.apply(frag.vip, owner, sign, frag.order)
            for st in frag.ipsets:
                _keyed(self._ipsets, st.name, st, sign)
            for m in frag.mark_rules:
                _keyed(self._marks, m.key, m, sign)
            for r in frag.snat_rules:
                _keyed(self._snats, r.key, r, sign)
            _count(self._director_sysctls, frag.sysctls, sign)
        part = frag.backend_parts.get(self.node)
        if part is not None:
            for v in part.vips:
                self._lo_vips.apply(v, owner, sign, frag.order)
            _count(self._tunnels, part.tunnels, sign)
            _count(self._backend_sysctls, part.sysctls, sign)

    def _service(self, svc: IPVSService, sign: int) -> None:
        entry = (service_order(svc.key), svc.key)
        i = bisect.bisect_left(self._order, entry)
        present = i < len(self._order) and self._order[i] == entry
        if present:
            _count(self._health_paths, _paths_of(self._in_order[i]), -1)
        if sign > 0:
            _count(self._health_paths, _paths_of(svc), +1)
            if present:
                self._in_order[i] = svc
            else:
                self._order.insert(i, entry)
                self._in_order.insert(i, svc)
            self._services[svc.key] = svc
        elif present:
            del self._order[i], self._in_order[i], self._services[svc.key]

    def plan(self) -> NodePlan:
        if self._cached is None:
            tunnels: dict[str, TunnelDevice] = {}
            for t in sorted(t for t, n in self._tunnels.items() if n > 0):
                tunnels.setdefault(t.name, t)
            director = DirectorPlan(
                services=self._with_health_paths(),
                vips=self._vips.ordered(),
                ipsets=tuple(self._ipsets[k] for k in sorted(self._ipsets)),
                mark_rules=tuple(self._marks[k] for k in sorted(self._marks)),
                snat_rules=tuple(self._snats[k] for k in sorted(self._snats)),
                sysctls=_max_values(self._director_sysctls),
            )
            backend = BackendPlan(
                vips=self._lo_vips.ordered(),
                tunnels=tuple(tunnels[k] for k in sorted(tunnels)),
                sysctls=_max_values(self._backend_sysctls),
            )
            self._cached = NodePlan(self.node, director, backend)
        return self._cached

    def _with_health_paths(self) -> tuple[IPVSService, ...]:
        """The services, with the health-path services merged in ipvsadm order."""
        marks = health_path_marks(p for p, n in self._health_paths.items() if n > 0)
        if not marks:
            return tuple(self._in_order)
        extra = sorted((health_path_service(p, m) for p, m in marks.items()),
                       key=lambda s: service_order(s.key))
        return tuple(heapq.merge(self._in_order, extra, key=lambda s: service_order(s.key)))


class _SharedAddresses(Generic[A]):
    """Addresses several VirtualServices may share (a VIP with many ports): one entry per
    address whose owners are merged; kept in address order as entries come and go."""

    def __init__(self) -> None:
        # address -> owner -> (the owner's age rank, its entry)
        self._by_owner: dict[object, dict[str, tuple[tuple[str, str, str], A]]] = {}
        self._order: list[tuple[tuple[str, int, int], object]] = []
        self._in_order: list[A] = []  # merged entries, same positions as _order

    def apply(self, entry: A, owner: str, sign: int, rank: tuple[str, str, str]) -> None:
        """`rank` orders owners by age: the oldest owner's attributes (its spec.ha, its
        device) are the address's, as the oldest wins a conflict."""
        key = entry.key
        item = (address_order(entry), key)
        i = bisect.bisect_left(self._order, item)
        entries = self._by_owner.get(key)
        if entries is None:
            if sign < 0:
                return
            entries = self._by_owner[key] = {}
            self._order.insert(i, item)
            self._in_order.insert(i, entry)
        if sign > 0:
            entries[owner] = (rank, entry)
        else:
            entries.pop(owner, None)
        if entries:
            first = min(entries.values(), key=lambda ranked: ranked[0])[1]
            self._in_order[i] = first._replace(owners=tuple(sorted(entries)))
        else:
            del self._by_owner[key], self._order[i], self._in_order[i]

    def ordered(self) -> tuple[A, ...]:
        return tuple(self._in_order)


def address_order(entry: VIPAddress | LoopbackVIP) -> tuple[str, int, int]:
    device = entry.device if isinstance(entry, LoopbackVIP) else ""
    canon = canonical_ip(entry.address)
    return (device, *((canon[1], canon[2]) if canon else (0, 0)))


def _keyed(table: dict, key: object, value: object, sign: int) -> None:  # type: ignore[type-arg]
    if sign > 0:
        table[key] = value
    else:
        table.pop(key, None)


def _count(counter: Counter, items: Iterable[object], sign: int) -> None:  # type: ignore[type-arg]
    for item in items:
        counter[item] += sign
        if counter[item] <= 0:
            del counter[item]
