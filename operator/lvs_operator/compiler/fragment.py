"""LVS semantics for one VirtualService: what it asks of each node, and what is wrong with it.

`compile_virtual_service` is pure: the VirtualService plus read-only lookups into the rest of
the cluster in, a `Fragment` out. Fragments from many VirtualServices are merged into node
plans by `Compiler` (incrementally) — so changing one backend recompiles one fragment.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..api.objects import EndpointSlice, Node, ObjectRef, RealServer, Service, VirtualService
from ..api.types import (
    ForwardingMethod,
    HAMode,
    HealthCheckType,
    OnFailure,
    PortSpec,
    RealServerState,
    TunnelChecksum,
    TunnelType,
    VirtualServiceSpec,
)
from .plan import (
    FORWARD_MASQ,
    FORWARD_ROUTE,
    FORWARD_TUNNEL,
    HEALTH_PATH_MARK_COUNT,
    HEALTH_PATH_MARK_FIRST,
    Destination,
    HealthCheckPlan,
    HighAvailabilityPlan,
    IPSetPlan,
    IPVSService,
    LoopbackVIP,
    MarkRule,
    ServiceKey,
    SNATRule,
    Sysctl,
    TunnelDevice,
    VIPAddress,
    is_health_path,
)

__all__ = [
    "BackendGroup",
    "BackendPart",
    "ClusterView",
    "Fragment",
    "Issue",
    "canonical_ip",
    "compile_virtual_service",
    "describe_ha",
    "digest_endpoint_slice",
    "ha_group_name",
    "named_ha_group",
]

# Kernel flag bit order (IP_VS_SVC_F_SCHED1/2): ipvsadm prints them in this order.
# spec.ha.lease defaults when the block is absent: durationSeconds, renewDeadlineMilliseconds,
# retryPeriodMilliseconds (the field defaults of api.types.LeaseSettings).
LEASE_DEFAULTS = (2, 1500, 500)
_FLAG_ORDER = {"sh-fallback": 1, "sh-port": 2, "mh-fallback": 1, "mh-port": 2}
_PROTO = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, slots=True)
class Issue:
    """Something wrong (Error: not programmed) or worth knowing (Warning: programmed,
    Degraded) about an object. `transient` marks "not yet" (a reference that may appear)."""

    ref: ObjectRef
    reason: str  # short CamelCase word, e.g. PortConflict
    message: str
    field: str = ""
    severity: str = "Error"  # Error | Warning
    transient: bool = False

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        return f"{self.severity} {self.ref}:{where} {self.message} [{self.reason}]"


@dataclass(frozen=True, slots=True)
class BackendPart:
    """What one VirtualService asks of one real-server node (DR/TUN)."""

    vips: tuple[LoopbackVIP, ...] = ()
    tunnels: tuple[TunnelDevice, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()


@dataclass(frozen=True, slots=True)
class Fragment:
    """The compiled form of one VirtualService."""

    ref: ObjectRef
    order: tuple[str, str, str]  # (creationTimestamp, namespace, name): older wins conflicts
    ok: bool  # False: an error prevents programming it anywhere
    directors: tuple[str, ...] = ()
    services: tuple[IPVSService, ...] = ()
    vip: VIPAddress | None = None
    ipsets: tuple[IPSetPlan, ...] = ()
    mark_rules: tuple[MarkRule, ...] = ()
    snat_rules: tuple[SNATRule, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()
    backend_parts: Mapping[str, BackendPart] = field(default_factory=dict)
    claims: tuple[tuple[object, ...], ...] = ()  # keys no other VirtualService may hold
    claim_fields: Mapping[tuple[object, ...], str] = field(default_factory=dict)
    issues: tuple[Issue, ...] = ()
    depends_on_realservers: tuple[ObjectRef, ...] = ()
    backends_total: int = 0
    backends_draining: int = 0

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self.directors) | frozenset(self.backend_parts)


class ClusterView(Protocol):
    """Read-only lookups a fragment needs from the rest of the cluster."""

    def agent_nodes(self) -> Iterable[Node]: ...
    def has_agent(self, node: str) -> bool: ...
    def real_servers(self, namespace: str) -> Iterable[RealServer]: ...
    def service(self, namespace: str, name: str) -> Service | None: ...
    def endpoint_groups(self, namespace: str, service: str) -> Sequence[BackendGroup]:
        """The Service's digested EndpointSlices (or legacy Endpoints), in slice-name order."""
        ...


# --------------------------------------------------------------------------- addresses


def canonical_ip(text: str) -> tuple[str, int, int] | None:
    """(canonical text, family, integer value) or None for anything but a plain address.

    The integer orders destinations the way ipvsadm sorts them. glibc's inet_pton accepts only
    canonical dotted quads, so IPv4 text that parses is already canonical.
    """
    try:
        return (text, 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except OSError:
        pass
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if addr.ipv4_mapped is not None or addr.scope_id is not None:
        return None
    return (str(addr), 6, int(addr))


# --------------------------------------------------------------------------- backends


class BackendGroup(NamedTuple):
    """Real servers that share where their port and weight come from: one RealServer, or one
    EndpointSlice digested once when it arrives (a slice holds up to 100 endpoints)."""

    source: str  # "RealServer ns/name" or "EndpointSlice ns/name", for status and debugging
    family: int
    members: tuple[tuple[str, int, bool, str | None], ...]  # (address, sort value, draining, node)
    ref: ObjectRef | None = None  # the RealServer, to attach its issues
    port: int | None = None  # RealServer.spec.port
    named_ports: Mapping[str, int] | None = None  # EndpointSlice port name -> number
    weight: int | None = None  # RealServer weight; None: the VirtualService's backends.weight
    upper: int | None = None
    lower: int | None = None


def digest_endpoint_slice(sl: EndpointSlice) -> BackendGroup | None:
    """An EndpointSlice as a backend group: ready endpoints take traffic, serving and
    terminating ones drain, the rest are left out. None for FQDN slices."""
    family = {"IPv4": 4, "IPv6": 6}.get(sl.address_type)
    if family is None:
        return None
    members = []
    for ep in sl.endpoints:
        if ep.ready:
            draining = False
        elif ep.serving and ep.terminating:
            draining = True
        else:
            continue
        if not ep.addresses:
            continue
        canon = canonical_ip(ep.addresses[0])  # EndpointSlice: the first address is the one
        if canon is None or canon[1] != family:
            continue
        members.append((canon[0], canon[2], draining, ep.node_name))
    return BackendGroup(
        source=str(sl.ref),
        family=family,
        members=tuple(members),
        named_ports={p.name: p.port for p in sl.ports},
    )


def _real_server_groups(
    vs: VirtualService, view: ClusterView, issues: list[Issue]
) -> tuple[list[BackendGroup], list[ObjectRef]]:
    selector = vs.spec.backends.real_server_selector
    if selector is None:
        return [], []
    out: list[BackendGroup] = []
    refs: list[ObjectRef] = []
    seen: dict[tuple[str, int | None], ObjectRef] = {}
    for rs in sorted(view.real_servers(vs.ref.namespace), key=lambda r: r.ref.name):
        if not selector.matches(dict(rs.labels)):
            continue
        refs.append(rs.ref)
        if rs.spec.state is RealServerState.DISABLED:
            continue
        canon = canonical_ip(rs.spec.address)
        if canon is None:  # the schema makes this unreachable; stay safe anyway
            continue
        first = seen.setdefault((canon[0], rs.spec.port), rs.ref)
        if first != rs.ref:
            issues.append(
                Issue(
                    rs.ref,
                    "DuplicateRealServer",
                    f"{first} already provides {rs.spec.address} to {vs.ref}; this one is ignored "
                    "there (delete one, or give them different ports)",
                    "spec.address",
                    "Warning",
                )
            )
            continue
        draining = rs.spec.state is RealServerState.DRAINING
        out.append(
            BackendGroup(
                source=str(rs.ref),
                family=canon[1],
                members=((canon[0], canon[2], draining, rs.spec.node_name),),
                ref=rs.ref,
                port=rs.spec.port,
                weight=rs.spec.weight,
                upper=rs.spec.upper_threshold,
                lower=rs.spec.lower_threshold,
            )
        )
    return out, refs


def _endpoint_groups(
    vs: VirtualService, view: ClusterView, issues: list[Issue]
) -> list[BackendGroup]:
    svc_ref = vs.spec.backends.service
    if svc_ref is None:
        return []
    ns = vs.ref.namespace
    groups = list(view.endpoint_groups(ns, svc_ref.name))
    if not groups and view.service(ns, svc_ref.name) is None:
        issues.append(
            Issue(
                vs.ref,
                "ServiceNotFound",
                f"Service {ns}/{svc_ref.name} does not exist (yet); no endpoints to balance",
                "spec.backends.service.name",
                "Warning",
                transient=True,
            )
        )
    return groups


def _group_port(
    spec: VirtualServiceSpec,
    idx: int,
    p: PortSpec,
    g: BackendGroup,
    issues: list[Issue],
    vs_ref: ObjectRef,
) -> int | None:
    """The real servers' port for virtual port `p`, by LVS rules (None: skip the group)."""
    method = spec.forwarding.method
    if method in (ForwardingMethod.DR, ForwardingMethod.TUN):
        actual = g.port if g.named_ports is None else _endpoint_port(p, g.named_ports)
        if actual is not None and actual != p.port:
            issues.append(
                Issue(
                    g.ref or vs_ref,
                    "PortIgnoredForDR",
                    f"{method.value} cannot change ports: {g.source} is used on port {p.port}, "
                    f"not {actual}; its servers must listen on the virtual port",
                    "spec.port" if g.ref is not None else f"spec.ports[{idx}]",
                    "Warning",
                )
            )
        return p.port
    if isinstance(p.target_port, int):
        return p.target_port
    if g.named_ports is None:  # RealServer
        return g.port if g.port is not None else p.port
    port = _endpoint_port(p, g.named_ports)
    if port is None:
        names = ", ".join(sorted(n or '""' for n in g.named_ports)) or "none"
        issues.append(
            Issue(
                vs_ref,
                "TargetPortNotFound",
                f"cannot tell which EndpointSlice port serves virtual port {p.port}/{p.protocol.value}"
                f" (slice ports: {names}); set spec.ports[{idx}].targetPort to one of those names",
                f"spec.ports[{idx}].targetPort",
            )
        )
    return port


def _endpoint_port(p: PortSpec, named: Mapping[str, int]) -> int | None:
    if isinstance(p.target_port, str):
        return named.get(p.target_port)
    if isinstance(p.target_port, int):
        return p.target_port
    if p.name is not None and p.name in named:
        return named[p.name]
    if len(named) == 1:
        return next(iter(named.values()))
    return None


# --------------------------------------------------------------------------- the compiler


def _order(vs: VirtualService) -> tuple[str, str, str]:
    # An empty timestamp (offline manifests) sorts first, then by namespace/name.
    return (vs.creation_timestamp, vs.ref.namespace, vs.ref.name)


def _directors(vs: VirtualService, view: ClusterView) -> tuple[str, ...]:
    selector = vs.spec.directors.node_selector
    return tuple(sorted(n.ref.name for n in view.agent_nodes() if selector.matches(dict(n.labels))))


def _destinations(
    spec: VirtualServiceSpec,
    groups: list[BackendGroup],
    port_of: list[int | None],
    fwd: tuple[str, str, int, str],
) -> tuple[Destination, ...]:
    """One service's destinations in ipvsadm order; a ready duplicate beats a draining one."""
    forward, tun_type, tun_port, tun_csum = fwd
    b = spec.backends
    dests: dict[tuple[str, int], tuple[tuple[int, int], Destination]] = {}
    for g, port in zip(groups, port_of, strict=True):
        if port is None:
            continue
        weight = b.weight if g.weight is None else g.weight
        upper = b.upper_threshold if g.upper is None else g.upper
        lower = b.lower_threshold if g.lower is None else g.lower
        for address, value, draining, _node in g.members:
            key = (address, port)
            prior = dests.get(key)
            if prior is None or (prior[1].draining and not draining):
                dests[key] = (
                    (value, port),
                    Destination(
                        address,
                        port,
                        forward,
                        0 if draining else weight,
                        upper,
                        lower,
                        tun_type,
                        tun_port,
                        tun_csum,
                        draining,
                        g.source,
                    ),
                )
    return tuple(d for _, d in sorted(dests.values(), key=lambda item: item[0]))


def compile_virtual_service(vs: VirtualService, view: ClusterView) -> Fragment:
    """Compile one VirtualService against the current cluster. Pure; never raises for data."""
    spec = vs.spec
    owner = f"{vs.ref.namespace}/{vs.ref.name}"
    issues: list[Issue] = []
    canon = canonical_ip(spec.address)
    if canon is None:  # unreachable after schema validation
        return Fragment(
            vs.ref,
            _order(vs),
            False,
            issues=(Issue(vs.ref, "InvalidAddress", "not an IP address", "spec.address"),),
        )
    vip, family, _ = canon
    method = spec.forwarding.method

    directors = _directors(vs, view)
    if not directors:
        issues.append(
            Issue(
                vs.ref,
                "NoDirectors",
                "spec.directors.nodeSelector matches no node running the lvs agent; label a node "
                "to match it (e.g. kubectl label node NAME lvs.dev/director=true)",
                "spec.directors.nodeSelector",
                transient=True,
            )
        )

    rs_groups, rs_refs = _real_server_groups(vs, view, issues)
    groups: list[BackendGroup] = []
    for g in rs_groups:
        if g.family != family and method is not ForwardingMethod.TUN:
            issues.append(
                Issue(
                    g.ref or vs.ref,
                    "AddressFamilyMismatch",
                    f"real server {g.members[0][0]} is IPv{g.family} but the VIP {vip} is "
                    f"IPv{family}; only TUN forwarding can mix families",
                    "spec.address",
                )
            )
            continue
        groups.append(g)
    # A dual-stack Service has slices of both families: the VIP's family is the one to use.
    groups += [g for g in _endpoint_groups(vs, view, issues) if g.family == family]

    fwd = _forwarding(spec)
    ports = _service_ports(spec, vip, family)
    services: list[IPVSService] = []
    claims: list[tuple[object, ...]] = []
    claim_fields: dict[tuple[object, ...], str] = {}
    for idx, (key, pspec) in enumerate(ports):
        if pspec is None:  # fwmark service: destinations carry port 0
            port_of: list[int | None] = [0] * len(groups)
        else:
            port_of = [_group_port(spec, idx, pspec, g, issues, vs.ref) for g in groups]
        services.append(
            _ipvs_service(spec, key, _destinations(spec, groups, port_of, fwd), owner, family)
        )
        if key.fwmark:
            claims.append(("mark", key.fwmark))
            claim_fields[("mark", key.fwmark)] = "spec.firewallMark.mark"
        else:
            ck = ("svc", key.family, key.protocol, key.address, key.port)
            claims.append(ck)
            claim_fields[ck] = f"spec.ports[{idx}]"
    if spec.firewall_mark is not None:
        for i, fp in enumerate(spec.firewall_mark.ports):
            ck = ("svc", family, _PROTO[fp.protocol.value], vip, fp.port)
            claims.append(ck)
            claim_fields[ck] = f"spec.firewallMark.ports[{i}]"
        if is_health_path(ServiceKey(family, "", "", 0, spec.firewall_mark.mark)):
            issues.append(
                Issue(
                    vs.ref,
                    "MarkReserved",
                    f"mark {spec.firewall_mark.mark:#x} is in {HEALTH_PATH_MARK_FIRST:#x}-"
                    f"{HEALTH_PATH_MARK_FIRST + HEALTH_PATH_MARK_COUNT - 1:#x}, which the agent "
                    "uses to send DR/TUN health checks along the forwarding path; pick another",
                    "spec.firewallMark.mark",
                )
            )
        if spec.firewall_mark.mark & 0xC000:
            issues.append(
                Issue(
                    vs.ref,
                    "MarkOverlapsKubeProxy",
                    f"mark {spec.firewall_mark.mark:#x} sets bit 0x4000 or 0x8000, which kube-proxy "
                    "uses for masquerade/drop; pick a mark below 0x4000 to avoid interference",
                    "spec.firewallMark.mark",
                    "Warning",
                )
            )

    ipsets, mark_rules = _mark_plan(spec, vip, family, owner)
    snat = _snat_plan(spec, ports, vip, family, owner)
    sysctls = _director_sysctls(spec, family)
    backend_parts = _backend_parts(spec, groups, vip, family, owner, view, issues)

    vip_entry = VIPAddress(
        vip,
        32 if family == 4 else 128,
        spec.directors.interface or "",
        (owner,),
        spec.ha.mode.value if spec.ha is not None else "None",
        _ha_plan(vs, vip),
    )
    ok = not any(i.severity == "Error" and i.ref == vs.ref and not i.transient for i in issues)
    total = sum(len(s.destinations) for s in services[:1])
    draining = sum(1 for s in services[:1] for d in s.destinations if d.draining)
    return Fragment(
        ref=vs.ref,
        order=_order(vs),
        ok=ok,
        directors=directors,
        services=tuple(services),
        vip=vip_entry,
        ipsets=ipsets,
        mark_rules=mark_rules,
        snat_rules=snat,
        sysctls=sysctls,
        backend_parts=backend_parts,
        claims=tuple(claims),
        claim_fields=claim_fields,
        issues=tuple(issues),
        depends_on_realservers=tuple(rs_refs),
        backends_total=total,
        backends_draining=draining,
    )


def _forwarding(spec: VirtualServiceSpec) -> tuple[str, str, int, str]:
    method = spec.forwarding.method
    if method is ForwardingMethod.DR:
        return FORWARD_ROUTE, "", 0, ""
    if method is ForwardingMethod.TUN:
        t = spec.forwarding.tunnel
        if t is None:
            return FORWARD_TUNNEL, TunnelType.IPIP.value, 0, ""
        csum = ""
        if t.type is not TunnelType.IPIP:
            csum = (t.checksum or TunnelChecksum.NONE).value
        return FORWARD_TUNNEL, t.type.value, t.port or 0, csum
    return FORWARD_MASQ, "", 0, ""


def _service_ports(
    spec: VirtualServiceSpec, vip: str, family: int
) -> list[tuple[ServiceKey, PortSpec | None]]:
    if spec.firewall_mark is not None:
        return [(ServiceKey(family, "", "", 0, spec.firewall_mark.mark), None)]
    return [(ServiceKey(family, _PROTO[p.protocol.value], vip, p.port, 0), p) for p in spec.ports]


def _ipvs_service(
    spec: VirtualServiceSpec,
    key: ServiceKey,
    dests: tuple[Destination, ...],
    owner: str,
    family: int,
) -> IPVSService:
    flags = tuple(sorted((f.value for f in spec.scheduler.flags), key=_FLAG_ORDER.__getitem__))
    timeout = prefix = 0
    engine = ""
    if spec.persistence is not None:
        timeout = spec.persistence.timeout
        declared = spec.persistence.prefix_length
        prefix = (32 if family == 4 else 128) if declared is None else declared
        engine = spec.persistence.engine.value if spec.persistence.engine else ""
    return IPVSService(
        key=key,
        scheduler=spec.scheduler.name.value,
        flags=flags,
        persistence_timeout=timeout,
        persistence_prefix=prefix,
        persistence_engine=engine,
        one_packet=spec.one_packet_scheduling,
        destinations=dests,
        owner=owner,
        drain_timeout=spec.drain.timeout_seconds,
        health=_health_plan(spec),
    )


def _health_plan(spec: VirtualServiceSpec) -> HealthCheckPlan | None:
    check = spec.health_check
    if check is None or check.type is HealthCheckType.NONE:
        return None
    http = check.http
    quorum = check.quorum
    sorry_address, sorry_port = "", 0
    if quorum is not None and quorum.sorry_server is not None:
        canon = canonical_ip(quorum.sorry_server.address)
        sorry_address = canon[0] if canon is not None else ""
        sorry_port = quorum.sorry_server.port or 0
    return HealthCheckPlan(
        type=check.type.value,
        port=check.port or 0,
        timeout=check.connect_timeout_seconds,
        retries=check.retries,
        delay_before_retry=check.delay_before_retry_seconds,
        interval=check.interval_seconds,
        inhibit=check.on_failure is OnFailure.INHIBIT,
        http_path=http.path if http is not None else "/",
        http_host=(http.host or "") if http is not None else "",
        http_status=tuple(sorted(http.expected_status_codes)) if http is not None else (200,),
        http_digest=(http.digest or "") if http is not None else "",
        quorum=quorum.minimum if quorum is not None else 1,
        hysteresis=quorum.hysteresis if quorum is not None else 0,
        sorry_address=sorry_address,
        sorry_port=sorry_port,
    )


def ha_lease_name(vip: str) -> str:
    """The HA group of a VIP, which is also its Lease's name (in the operator's namespace):
    one group per address, since VirtualServices sharing a VIP must move together.
    `lvs-ha-192.0.2.10`, `lvs-ha-2001-0db8-0000-...-0001` (IPv6 exploded: always valid)."""
    address = ipaddress.ip_address(vip)
    text = address.exploded.replace(":", "-") if address.version == 6 else str(address)
    return f"lvs-ha-{text}"


_NAMED_GROUP = "lvs-ha-g-"


def ha_group_name(vip: str, group: str | None) -> str:
    """The HA group a VIP is in, which is also its Lease's name: `lvs-ha-g-<group>` for a
    named spec.ha.group (cluster-wide: VirtualServices in any namespace naming it fail over
    together), else the VIP's own group (`ha_lease_name`)."""
    return f"{_NAMED_GROUP}{group}" if group else ha_lease_name(vip)


def named_ha_group(ha: HighAvailabilityPlan) -> str:
    """The spec.ha.group a plan's HA group came from; "" for a VIP's own group."""
    return ha.group.removeprefix(_NAMED_GROUP) if ha.group.startswith(_NAMED_GROUP) else ""


def describe_ha(ha: HighAvailabilityPlan | None) -> str:
    """spec.ha in a user's words, for messages: `{mode: None}`, `{mode: Lease, lease: 2 s /
    1500 ms / 500 ms, connectionSync: syncID 0}`, `{mode: VRRP, virtualRouterID: 51, ...}`."""
    if ha is None:
        return "{mode: None}"
    if ha.mode == HAMode.VRRP.value:
        parts = [f"virtualRouterID: {ha.virtual_router_id}", f"priority: {ha.priority}",
                 f"advertIntervalSeconds: {ha.advert_interval}"]
        if ha.auth_secret_ref:
            parts.append(f"authSecretRef: {ha.auth_secret_ref.partition('/')[2]}")
        if ha.unicast_peers:
            parts.append(f"unicastPeers: [{', '.join(ha.unicast_peers)}]")
        detail = "vrrp: {" + ", ".join(parts) + "}"
    else:
        detail = (f"lease: {ha.lease_duration} s / {ha.renew_deadline * 1000:.0f} ms / "
                  f"{ha.retry_period * 1000:.0f} ms")
    sync = "off"
    if ha.sync:
        sync = f"syncID {ha.sync_id}" + (f" on {ha.sync_interface}" if ha.sync_interface else "")
    group = named_ha_group(ha)
    named = f", group: {group}" if group else ""
    return f"{{mode: {ha.mode}{named}, {detail}, connectionSync: {sync}}}"


def _ha_plan(vs: VirtualService, vip: str) -> HighAvailabilityPlan | None:
    ha = vs.spec.ha
    if ha is None or ha.mode is HAMode.NONE:
        return None
    sync = ha.connection_sync
    enabled = sync is not None and sync.enabled
    sync_id = sync.sync_id if sync is not None else 0
    sync_if = (sync.interface or "") if sync is not None else ""
    if ha.mode is HAMode.VRRP and ha.vrrp is not None:
        v = ha.vrrp
        secret = f"{vs.ref.namespace}/{v.auth_secret_ref}" if v.auth_secret_ref else ""
        return HighAvailabilityPlan(
            mode=ha.mode.value,
            group=ha_group_name(vip, ha.group),
            virtual_router_id=v.virtual_router_id,
            priority=v.priority,
            advert_interval=v.advert_interval_seconds,
            auth_secret_ref=secret,
            unicast_peers=tuple(sorted(v.unicast_peers)),
            sync=enabled,
            sync_id=sync_id,
            sync_interface=sync_if,
        )
    lease = ha.lease
    return HighAvailabilityPlan(
        mode=ha.mode.value,
        group=ha_group_name(vip, ha.group),
        lease_duration=lease.duration_seconds if lease is not None else LEASE_DEFAULTS[0],
        renew_deadline=(lease.renew_deadline_milliseconds if lease is not None
                        else LEASE_DEFAULTS[1]) / 1000,
        retry_period=(lease.retry_period_milliseconds if lease is not None
                      else LEASE_DEFAULTS[2]) / 1000,
        sync=enabled,
        sync_id=sync_id,
        sync_interface=sync_if,
    )


def ipset_names(mark: int, family: int) -> tuple[str, str, str]:
    """Owned ipset names for a mark: destinations, sources, exceptions (<= 31 chars)."""
    base = f"lvs-fwm{mark}" + ("-6" if family == 6 else "")
    return f"{base}-dst", f"{base}-src", f"{base}-exc"


def _mark_plan(
    spec: VirtualServiceSpec, vip: str, family: int, owner: str
) -> tuple[tuple[IPSetPlan, ...], tuple[MarkRule, ...]]:
    fm = spec.firewall_mark
    if fm is None:
        return (), ()
    fam = "inet" if family == 4 else "inet6"
    dst, src, exc = ipset_names(fm.mark, family)
    host = vip
    entries = tuple(
        sorted(
            (f"{host},{_PROTO[p.protocol.value]}:{p.port}" for p in fm.ports),
            key=lambda e: (e.split(",")[1].split(":")[0], int(e.rsplit(":", 1)[1])),
        )
    )
    sets = [IPSetPlan(dst, "hash:ip,port", fam, entries, owner)]
    src_name = exc_name = ""
    if fm.source_ranges:
        sets.append(
            IPSetPlan(src, "hash:net", fam, tuple(sorted(_net(c) for c in fm.source_ranges)), owner)
        )
        src_name = src
    if fm.except_ranges:
        sets.append(
            IPSetPlan(exc, "hash:net", fam, tuple(sorted(_net(c) for c in fm.except_ranges)), owner)
        )
        exc_name = exc
    return tuple(sets), (MarkRule(fm.mark, family, dst, src_name, exc_name, owner),)


def _net(cidr: str) -> str:
    """ipset stores networks with host bits cleared and /32 (/128) as a bare address."""
    net = ipaddress.ip_network(cidr, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _snat_plan(
    spec: VirtualServiceSpec,
    ports: list[tuple[ServiceKey, PortSpec | None]],
    vip: str,
    family: int,
    owner: str,
) -> tuple[SNATRule, ...]:
    if spec.forwarding.method is not ForwardingMethod.FULLNAT:
        return ()
    to = ""
    source_nat = spec.forwarding.source_nat
    if source_nat is not None and source_nat.address:
        canon = canonical_ip(source_nat.address)
        to = canon[0] if canon is not None else ""
    return tuple(
        SNATRule(family, vip, key.protocol, key.port, key.fwmark, to, owner) for key, _ in ports
    )


def _director_sysctls(spec: VirtualServiceSpec, family: int) -> tuple[Sysctl, ...]:
    out: list[Sysctl] = []
    if spec.forwarding.method in (ForwardingMethod.NAT, ForwardingMethod.FULLNAT):
        out.append(
            Sysctl("net.ipv4.ip_forward", "1")
            if family == 4
            else Sysctl("net.ipv6.conf.all.forwarding", "1")
        )
    if spec.forwarding.method is ForwardingMethod.FULLNAT:
        out.append(Sysctl("net.ipv4.vs.conntrack", "1"))  # lets iptables SNAT see IPVS flows
    if (spec.health_check is not None and family == 4 and spec.firewall_mark is None
            and spec.forwarding.method in (ForwardingMethod.DR, ForwardingMethod.TUN)):
        # A health-path probe from the VIP holder is answered from the VIP, one of its own
        # addresses: without accept_local the reply is dropped as a martian.
        out.append(Sysctl("net.ipv4.conf.all.accept_local", "1"))
    if spec.drain.expire_nodest_conn:
        out.append(Sysctl("net.ipv4.vs.expire_nodest_conn", "1"))
    if spec.drain.expire_quiescent_template:
        out.append(Sysctl("net.ipv4.vs.expire_quiescent_template", "1"))
    return tuple(out)


def _backend_parts(
    spec: VirtualServiceSpec,
    groups: list[BackendGroup],
    vip: str,
    family: int,
    owner: str,
    view: ClusterView,
    issues: list[Issue],
) -> dict[str, BackendPart]:
    method = spec.forwarding.method
    if method not in (ForwardingMethod.DR, ForwardingMethod.TUN):
        return {}
    prefix = 32 if family == 4 else 128
    sysctls: list[Sysctl] = []
    tunnels: list[TunnelDevice] = []
    if family == 4:
        for scope in ("all", "lo"):
            sysctls += [
                Sysctl(f"net.ipv4.conf.{scope}.arp_ignore", "1"),
                Sysctl(f"net.ipv4.conf.{scope}.arp_announce", "2"),
            ]
    if method is ForwardingMethod.TUN:
        tunnel = spec.forwarding.tunnel
        ttype = tunnel.type if tunnel is not None else TunnelType.IPIP
        fou = tunnel.port or 0 if tunnel is not None else 0
        if ttype is TunnelType.GRE:
            dev = TunnelDevice("gre0", "gre") if family == 4 else TunnelDevice("ip6gre0", "ip6gre")
        elif family == 4:
            dev = TunnelDevice("tunl0", "ipip", fou)
        else:
            dev = TunnelDevice("ip6tnl0", "ip6tnl", fou)
        tunnels.append(dev)
        if family == 4:
            # Decapsulated packets arrive from client addresses not routed via the tunnel.
            sysctls += [
                Sysctl("net.ipv4.conf.all.rp_filter", "0"),
                Sysctl(f"net.ipv4.conf.{dev.name}.rp_filter", "0"),
            ]
    part = BackendPart(
        vips=(LoopbackVIP(vip, prefix, "lo", (owner,)),),
        tunnels=tuple(tunnels),
        sysctls=tuple(sorted(set(sysctls))),
    )
    out: dict[str, BackendPart] = {}
    for g in groups:
        for address, _value, _draining, node in g.members:
            if not node or node in out:
                continue
            if not view.has_agent(node):
                issues.append(
                    Issue(
                        g.ref or ObjectRef("VirtualService", *owner.split("/", 1)),
                        "NodeWithoutAgent",
                        f"{method.value} real server {address} is on node {node}, which runs no lvs "
                        "agent, so nobody puts the VIP on its lo; run the agent there or configure "
                        "the server by hand and clear nodeName",
                        "spec.nodeName" if g.ref else "spec.backends.service",
                        "Warning",
                    )
                )
                continue
            out[node] = part
    return out
