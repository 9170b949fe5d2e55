"""The incremental compiler: cluster objects in, one plan per node out.

It keeps the objects it was given, indexes which VirtualServices depend on which Service,
namespace (RealServer selectors) and Node, and recompiles only the fragments an event can
affect. Node plans are assembled from fragments, so a change to one backend touches one
fragment and the plans of that fragment's nodes. A full compile is the same engine fed every
object, so the incremental and the batch result cannot disagree.

Conflicts (two VirtualServices claiming one VIP:port/protocol, or one firewall mark) go to
the older object (creationTimestamp, then namespace/name); the younger one is not programmed
and carries an Error naming the winner. Nothing else is dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..api.objects import (
    ClusterObject,
    EndpointSlice,
    Node,
    ObjectRef,
    RealServer,
    Service,
    VirtualService,
)
from .fragment import (
    BackendGroup,
    Fragment,
    Issue,
    compile_virtual_service,
    describe_ha,
    digest_endpoint_slice,
    named_ha_group,
)
from .nodeplan import NodeAggregate
from .plan import (
    NodePlan,
    VIPAddress,
)

__all__ = ["CompileResult", "Compiler", "compile_cluster"]


@dataclass(frozen=True, slots=True)
class CompileResult:
    plans: Mapping[str, NodePlan]
    issues: Mapping[ObjectRef, tuple[Issue, ...]]

    def all_issues(self) -> Iterator[Issue]:
        for ref in sorted(self.issues):
            yield from self.issues[ref]


class Compiler:
    """Incremental compiler. Feed it objects with `upsert`/`delete`, read `plan(node)`."""

    def __init__(self, agent_nodes: Iterable[str] | None = None) -> None:
        # None: every Node has an agent (offline use); otherwise only the named nodes do.
        self._agent_filter = None if agent_nodes is None else frozenset(agent_nodes)
        self._vs: dict[ObjectRef, VirtualService] = {}
        self._rs_by_ns: dict[str, dict[str, RealServer]] = defaultdict(dict)
        self._services: dict[tuple[str, str], Service] = {}
        # Service -> slice name -> (from legacy v1 Endpoints?, digested slice)
        self._slices: dict[tuple[str, str], dict[str, tuple[bool, BackendGroup | None]]] = (
            defaultdict(dict)
        )
        self._slice_service: dict[ObjectRef, tuple[str, str]] = {}
        self._nodes: dict[str, Node] = {}
        # dependency indexes
        self._vs_by_service: dict[tuple[str, str], set[ObjectRef]] = defaultdict(set)
        self._vs_with_selector: dict[str, set[ObjectRef]] = defaultdict(set)
        # compiled state
        self._fragments: dict[ObjectRef, Fragment] = {}
        self._claims: dict[tuple[object, ...], set[ObjectRef]] = defaultdict(set)
        self._active: set[ObjectRef] = set()
        self._node_state: dict[str, NodeAggregate] = {}
        self._attached: dict[ObjectRef, Fragment] = {}  # fragments currently in node plans
        self._dirty_vs: set[ObjectRef] = set()
        self._dirty_nodes: set[str] = set()
        self._changed_nodes: set[str] = set()
        self._changed_refs: set[ObjectRef] = set()
        # ("vip", address) / ("group", HA group) -> the VirtualServices compiled with it:
        # sharers of a VIP, and members of a named spec.ha.group, must agree on spec.ha
        self._shared: dict[tuple[str, str], set[ObjectRef]] = defaultdict(set)

    # ----------------------------------------------------------------- ClusterView protocol

    def agent_nodes(self) -> Iterable[Node]:
        return (n for name, n in self._nodes.items() if self.has_agent(name))

    def has_agent(self, node: str) -> bool:
        if node not in self._nodes:
            return False
        return self._agent_filter is None or node in self._agent_filter

    def real_servers(self, namespace: str) -> Iterable[RealServer]:
        return self._rs_by_ns.get(namespace, {}).values()

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get((namespace, name))

    def endpoint_groups(self, namespace: str, service: str) -> Sequence[BackendGroup]:
        entries = self._slices.get((namespace, service))
        if not entries:
            return ()
        # v1 Endpoints only count when the Service has no EndpointSlice at all.
        modern = any(not legacy for legacy, _ in entries.values())
        return [
            group
            for _, (legacy, group) in sorted(entries.items())
            if group is not None and not (modern and legacy)
        ]

    # ----------------------------------------------------------------- input

    def upsert(self, obj: ClusterObject) -> None:
        ref = obj.ref
        if isinstance(obj, VirtualService):
            self._forget_vs_indexes(ref)
            self._vs[ref] = obj
            if obj.spec.backends.service is not None:
                self._vs_by_service[(ref.namespace, obj.spec.backends.service.name)].add(ref)
            if obj.spec.backends.real_server_selector is not None:
                self._vs_with_selector[ref.namespace].add(ref)
            self._dirty_vs.add(ref)
        elif isinstance(obj, RealServer):
            old = self._rs_by_ns[ref.namespace].get(ref.name)
            self._rs_by_ns[ref.namespace][ref.name] = obj
            self._touch_real_server(ref.namespace, old, obj)
        elif isinstance(obj, Service):
            self._services[(ref.namespace, ref.name)] = obj
            self._dirty_vs |= self._vs_by_service.get((ref.namespace, ref.name), set())
        elif isinstance(obj, EndpointSlice):
            key = (ref.namespace, obj.service_name)
            old_key = self._slice_service.get(ref)
            if old_key is not None and old_key != key:
                self._slices[old_key].pop(ref.name, None)
                self._dirty_vs |= self._vs_by_service.get(old_key, set())
            self._slices[key][ref.name] = (obj.from_legacy_endpoints, digest_endpoint_slice(obj))
            self._slice_service[ref] = key
            self._dirty_vs |= self._vs_by_service.get(key, set())
        elif isinstance(obj, Node):
            self._nodes[ref.name] = obj
            self._dirty_nodes.add(ref.name)
            self._dirty_vs |= set(self._vs)  # director selection and backend agents may change

    def delete(self, ref: ObjectRef) -> None:
        if ref.kind == "VirtualService":
            self._forget_vs_indexes(ref)
            if self._vs.pop(ref, None) is not None:
                self._dirty_vs.add(ref)
        elif ref.kind == "RealServer":
            old = self._rs_by_ns.get(ref.namespace, {}).pop(ref.name, None)
            if old is not None:
                self._touch_real_server(ref.namespace, old, None)
        elif ref.kind == "Service":
            if self._services.pop((ref.namespace, ref.name), None) is not None:
                self._dirty_vs |= self._vs_by_service.get((ref.namespace, ref.name), set())
        elif ref.kind in ("EndpointSlice", "Endpoints"):  # Endpoints: the legacy fallback
            key = self._slice_service.pop(ref, None)
            if key is not None:
                self._slices[key].pop(ref.name, None)
                self._dirty_vs |= self._vs_by_service.get(key, set())
        elif ref.kind == "Node" and self._nodes.pop(ref.name, None) is not None:
            self._dirty_nodes.add(ref.name)
            self._dirty_vs |= set(self._vs)

    def set_agent_nodes(self, agent_nodes: Iterable[str] | None) -> None:
        new = None if agent_nodes is None else frozenset(agent_nodes)
        if new != self._agent_filter:
            self._agent_filter = new
            self._dirty_nodes |= set(self._nodes) | set(self._node_state)
            self._dirty_vs |= set(self._vs)

    def _forget_vs_indexes(self, ref: ObjectRef) -> None:
        old = self._vs.get(ref)
        if old is None:
            return
        if old.spec.backends.service is not None:
            self._vs_by_service[(ref.namespace, old.spec.backends.service.name)].discard(ref)
        self._vs_with_selector[ref.namespace].discard(ref)

    def _touch_real_server(self, ns: str, old: RealServer | None, new: RealServer | None) -> None:
        for vs_ref in self._vs_with_selector.get(ns, ()):
            selector = self._vs[vs_ref].spec.backends.real_server_selector
            if selector is None:
                continue
            if any(rs is not None and selector.matches(dict(rs.labels)) for rs in (old, new)):
                self._dirty_vs.add(vs_ref)

    # ----------------------------------------------------------------- compile

    def _flush(self) -> None:
        if not self._dirty_vs and not self._dirty_nodes:
            return
        touched_keys: set[tuple[object, ...]] = set()
        touched_shared: set[tuple[str, str]] = set()
        changed: set[ObjectRef] = set()
        for ref in self._dirty_vs:
            old = self._fragments.pop(ref, None)
            if old is not None:
                for key in old.claims:
                    self._claims[key].discard(ref)
                touched_keys.update(old.claims)
                self._detach(old)
                touched_shared.update(self._index_shared(old, ref, -1))
            vs = self._vs.get(ref)
            if vs is None:
                self._active.discard(ref)
                changed.add(ref)
                continue
            frag = compile_virtual_service(vs, self)
            self._fragments[ref] = frag
            touched_shared.update(self._index_shared(frag, ref, +1))
            if frag.ok:
                for key in frag.claims:
                    self._claims[key].add(ref)
            touched_keys.update(frag.claims)
            changed.add(ref)
        self._dirty_vs = set()
        # Re-decide conflicts for every VirtualService that shares a touched claim.
        contenders = set(changed)
        for key in touched_keys:
            contenders |= self._claims.get(key, set())
        # Detach every loser before attaching any winner: a winner and the loser it replaces
        # share identity keys (same fwmark service, same mark rule), so a detach after the
        # attach would remove the winner's records.
        to_attach: list[Fragment] = []
        for ref in sorted(contenders):
            current = self._fragments.get(ref)
            was_active = ref in self._active
            now_active = (
                current is not None
                and current.ok
                and all(self._winner(key) == ref for key in current.claims)
            )
            if now_active:
                self._active.add(ref)
            else:
                self._active.discard(ref)
            if ref in changed or was_active != now_active:
                self._changed_refs.add(ref)
                if current is not None:
                    self._detach(current)
                    if now_active:
                        to_attach.append(current)
        for frag in to_attach:
            self._attach(frag)
        # The VIP's other owners and the group's other members: whether they agree on
        # spec.ha may have changed.
        for key in touched_shared:
            self._changed_refs |= self._shared.get(key, set())
        for node in self._dirty_nodes:
            self._changed_nodes.add(node)
        self._dirty_nodes = set()

    def _index_shared(self, frag: Fragment, ref: ObjectRef,
                      sign: int) -> list[tuple[str, str]]:
        keys = _shared_keys(frag)
        for key in keys:
            owners = self._shared[key]
            if sign > 0:
                owners.add(ref)
            else:
                owners.discard(ref)
                if not owners:
                    del self._shared[key]
        return keys

    def _winner(self, key: tuple[object, ...]) -> ObjectRef | None:
        holders = self._claims.get(key)
        if not holders:
            return None
        return min(holders, key=lambda r: self._fragments[r].order)

    def _attach(self, frag: Fragment) -> None:
        for node in frag.nodes:
            state = self._node_state.get(node)
            if state is None:
                state = self._node_state[node] = NodeAggregate(node)
            state.attach(frag)
            self._attached[frag.ref] = frag
            self._changed_nodes.add(node)

    def _detach(self, frag: Fragment) -> None:
        if self._attached.get(frag.ref) is not frag:
            return  # never attached (inactive) or already detached
        del self._attached[frag.ref]
        for node in frag.nodes:
            self._node_state[node].detach(frag)
            self._changed_nodes.add(node)

    # ----------------------------------------------------------------- output

    def nodes(self) -> list[str]:
        """Every node that gets a plan: nodes with an agent, plus any a plan still names."""
        self._flush()
        names = {n for n in self._nodes if self.has_agent(n)}
        return sorted(names)

    def plan(self, node: str) -> NodePlan:
        self._flush()
        state = self._node_state.get(node)
        return state.plan() if state is not None else NodePlan(node)

    def plans(self) -> dict[str, NodePlan]:
        return {node: self.plan(node) for node in self.nodes()}

    def take_changed_nodes(self) -> set[str]:
        """Nodes whose plan may have changed since the last call (for publishing)."""
        self._flush()
        out, self._changed_nodes = self._changed_nodes, set()
        return out

    def take_changed_refs(self) -> set[ObjectRef]:
        """VirtualServices whose compiled form or conflict outcome changed since the last call
        (for status: each must be re-checked on the nodes it is programmed on)."""
        self._flush()
        out, self._changed_refs = self._changed_refs, set()
        return out

    def fragment(self, ref: ObjectRef) -> Fragment | None:
        self._flush()
        return self._fragments.get(ref)

    def issues(self) -> dict[ObjectRef, tuple[Issue, ...]]:
        """Every issue, attached to the object it concerns (VirtualService or RealServer)."""
        self._flush()
        found: dict[ObjectRef, list[Issue]] = defaultdict(list)
        for ref in sorted(self._fragments):
            frag = self._fragments[ref]
            for issue in frag.issues:
                found[issue.ref].append(issue)
            if frag.ok and ref not in self._active:
                for key in frag.claims:
                    winner = self._winner(key)
                    if winner is not None and winner != ref:
                        found[ref].append(_conflict(frag, key, winner))
                        found[winner].append(
                            Issue(
                                winner,
                                "ConflictRejected",
                                f"{ref} also claims {_describe(key)}; it was rejected because this "
                                "object is older",
                                frag.claim_fields.get(key, ""),
                                "Warning",
                            )
                        )
        for (kind, _), refs in self._shared.items():
            if len(refs) > 1:
                active = [self._fragments[r] for r in refs if r in self._active]
                check = _vip_disagreements if kind == "vip" else _group_disagreements
                for issue in check(active):
                    found[issue.ref].append(issue)
        return {ref: tuple(dict.fromkeys(v)) for ref, v in sorted(found.items())}

    def is_active(self, ref: ObjectRef) -> bool:
        self._flush()
        return ref in self._active

    def result(self) -> CompileResult:
        return CompileResult(plans=self.plans(), issues=self.issues())


def _describe(key: tuple[object, ...]) -> str:
    if key[0] == "mark":
        return f"firewall mark {key[1]}"
    _, family, proto, addr, port = key
    host = f"[{addr}]" if family == 6 else addr
    return f"{host}:{port}/{str(proto).upper()}"


def _conflict(frag: Fragment, key: tuple[object, ...], winner: ObjectRef) -> Issue:
    what = "Mark" if key[0] == "mark" else "Port"
    return Issue(
        frag.ref,
        f"{what}Conflict",
        f"{_describe(key)} is already used by {winner} (older); this VirtualService is not "
        "programmed until the conflict is resolved: change its address, port or mark",
        frag.claim_fields.get(key, ""),
    )


def _shared_keys(frag: Fragment) -> list[tuple[str, str]]:
    if frag.vip is None:
        return []
    keys = [("vip", frag.vip.address)]
    if frag.vip.ha is not None and named_ha_group(frag.vip.ha):
        keys.append(("group", frag.vip.ha.group))
    return keys


def _younger(frags: list[Fragment]) -> list[tuple[Fragment, VIPAddress, Fragment, VIPAddress]]:
    """(the oldest fragment, its VIP entry, a younger one, its VIP entry) for each younger
    fragment with a VIP."""
    ordered = sorted((f for f in frags if f.vip is not None), key=lambda f: f.order)
    return [(ordered[0], ordered[0].vip, f, f.vip) for f in ordered[1:]
            if ordered[0].vip is not None and f.vip is not None]


def _warning(frag: Fragment, reason: str, field: str, message: str) -> Issue:
    return Issue(frag.ref, reason, message, field, "Warning")


def _group_disagreements(frags: list[Fragment]) -> Iterator[Issue]:
    """Members of one named spec.ha.group share one Lease (or vrrp_instance): the same
    settings, and the same directors, or a VIP on a director the holder is not has no holder.
    Members sharing the oldest one's VIP are the VIP check's to judge."""
    for first, vip, other, own in _younger(frags):
        assert vip.ha is not None
        if own.address == vip.address:
            continue
        name = named_ha_group(vip.ha)
        if own.ha != vip.ha:
            yield _warning(other, "HAMismatch", "spec.ha",
                           f"HA group {name} is also {first.ref} (older, VIP {vip.address}), "
                           f"which asks for ha {describe_ha(vip.ha)}; this one asks for "
                           f"{describe_ha(own.ha)}. A group has one election, so its members "
                           "must agree; give every member the same spec.ha")
        if other.directors != first.directors:
            yield _warning(other, "HAGroupDirectorsMismatch", "spec.ha.group",
                           f"HA group {name}: this VirtualService's VIP is on directors "
                           f"[{', '.join(other.directors)}], the group's oldest member "
                           f"{first.ref} on [{', '.join(first.directors)}]. One director holds "
                           "the whole group, so a VIP on a director that is not the holder has "
                           "no holder; select the same directors (spec.directors.nodeSelector) "
                           "or use another group")


def _vip_disagreements(frags: list[Fragment]) -> Iterator[Issue]:
    """VirtualServices sharing a VIP move together (one HA group, one device): each one that
    asks otherwise than the oldest is told so. Where both are programmed on one director the
    oldest one's settings are used (NodeAggregate), so the younger is Degraded, not refused:
    editing one object must not take another's service off the kernel."""
    for first, vip, other, own in _younger(frags):
        shared = f"VIP {vip.address} is shared with {first.ref} (older), which"
        if own.ha != vip.ha:
            yield _warning(other, "HAMismatch", "spec.ha",
                           f"{shared} asks for ha {describe_ha(vip.ha)}; this one asks for "
                           f"{describe_ha(own.ha)}. VirtualServices sharing a VIP fail over "
                           f"together, so on directors they share {first.ref}'s settings are "
                           "used; give both the same spec.ha")
        if own.interface != vip.interface:
            yield _warning(other, "InterfaceMismatch", "spec.directors.interface",
                           f"{shared} puts it on {vip.interface or 'the route device'}; this "
                           f"one asks for {own.interface or 'the route device'}. On directors "
                           "they share the older one's device is used; give both the same "
                           "spec.directors.interface")


def compile_cluster(
    objects: Iterable[ClusterObject], agent_nodes: Iterable[str] | None = None
) -> CompileResult:
    """Batch entry point: every object in, every node plan and issue out."""
    compiler = Compiler(agent_nodes)
    for obj in objects:
        compiler.upsert(obj)
    return compiler.result()
