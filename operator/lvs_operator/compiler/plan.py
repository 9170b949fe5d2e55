"""Node plans: the complete kernel state one node should have, as plain immutable data.

A plan is what an LVS expert would have typed on that node: IPVS services and destinations,
VIP addresses, ipsets and mark rules for firewall-mark services, source NAT for FULLNAT and
sysctls on a director; the VIP on lo, ARP sysctls and tunnel devices on a DR/TUN real server.
Records are NamedTuples because a large cluster has a million destinations and these are the
cheapest immutable records Python has. Every record has an identity key (`key`) separate
from its attributes, so the agent's diff yields add / update / delete.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from typing import Any, NamedTuple

__all__ = [
    "PLAN_FORMAT_VERSION",
    "BackendPlan",
    "Destination",
    "DirectorPlan",
    "HealthCheckPlan",
    "HealthPath",
    "HighAvailabilityPlan",
    "IPSetPlan",
    "IPVSService",
    "LoopbackVIP",
    "MarkRule",
    "NodePlan",
    "SNATRule",
    "ServiceKey",
    "Sysctl",
    "TunnelDevice",
    "VIPAddress",
    "health_path_of",
    "is_health_path",
    "plan_from_dict",
    "plan_to_dict",
    "plan_to_json",
]

PLAN_FORMAT_VERSION = 1

# IPVS forwarding methods as the kernel names them (ipvsadm -m / -g / -i).
FORWARD_MASQ = "masq"
FORWARD_ROUTE = "route"
FORWARD_TUNNEL = "tunnel"

# Firewall marks of the health-path services (see HealthPath): below 0x4000 so kube-proxy's
# masquerade/drop bits (0x4000, 0x8000) and CNIs' high-half masks stay clear; VirtualServices
# may not use them.
HEALTH_PATH_MARK_FIRST = 0x2000
HEALTH_PATH_MARK_COUNT = 0x2000


class ServiceKey(NamedTuple):
    """Identity of an IPVS service: VIP:port/protocol, or a firewall mark and family."""

    family: int  # 4 or 6
    protocol: str  # "tcp" | "udp" | "sctp"; "" for fwmark services
    address: str  # canonical text; "" for fwmark services
    port: int  # 0 for fwmark services
    fwmark: int  # 0 for address services

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwmark {self.fwmark}" + (" (IPv6)" if self.family == 6 else "")
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.protocol}/{host}:{self.port}"


class Destination(NamedTuple):
    """An IPVS destination (real server); identity is (address, port) within its service."""

    address: str
    port: int
    forward: str  # masq | route | tunnel
    weight: int
    upper_threshold: int = 0
    lower_threshold: int = 0
    tunnel_type: str = ""  # ipip | gue | gre, tunnel only
    tunnel_port: int = 0  # gue only
    tunnel_checksum: str = ""  # none | csum | remcsum, gue/gre only
    draining: bool = False  # weight 0 because it is leaving: delete once idle or at deadline
    source: str = ""  # the object it came from, for status and debugging

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


class HealthCheckPlan(NamedTuple):
    """keepalived's checker for the RealServer destinations of one IPVS service (EndpointSlice
    destinations carry Kubernetes readiness already and are not probed). Seconds throughout;
    `port` 0 probes each destination's own port."""

    type: str  # "TCP" | "HTTP"
    port: int = 0
    timeout: int = 3
    retries: int = 3
    delay_before_retry: int = 1
    interval: int = 6
    inhibit: bool = False  # inhibit_on_failure: weight 0 instead of removal
    http_path: str = "/"
    http_host: str = ""
    http_status: tuple[int, ...] = (200,)
    http_digest: str = ""
    quorum: int = 1
    hysteresis: int = 0
    sorry_address: str = ""  # "" = no sorry server
    sorry_port: int = 0  # 0 = the service's port


class IPVSService(NamedTuple):
    key: ServiceKey
    scheduler: str
    flags: tuple[str, ...] = ()  # scheduler flags, in the kernel's bit order
    persistence_timeout: int = 0  # 0 = not persistent
    persistence_prefix: int = 0  # netmask as a prefix length; only with persistence
    persistence_engine: str = ""
    one_packet: bool = False
    destinations: tuple[Destination, ...] = ()
    owner: str = ""  # namespace/name of the VirtualService
    drain_timeout: int = 300  # seconds a draining destination may keep connections
    health: HealthCheckPlan | None = None

    def checked(self, dest: Destination) -> bool:
        """Whether the agent probes this destination (RealServer backends only)."""
        return self.health is not None and dest.source.startswith("RealServer ")


class HealthPath(NamedTuple):
    """How a director reaches one DR/TUN real server the way client traffic does. A probe to
    the VIP carrying the path's firewall mark (SO_MARK) is caught by IPVS on output and sent
    by the health-path service (that mark, this one destination) with the same forwarding
    method: it succeeds only if the real server accepts packets for the VIP (VIP on lo, tunnel
    device up), which a probe of the real server's own address would never notice."""

    family: int
    address: str
    forward: str  # route | tunnel
    tunnel_type: str = ""
    tunnel_port: int = 0
    tunnel_checksum: str = ""


def is_health_path(key: ServiceKey) -> bool:
    """Whether this is a health-path service the compiler added, not a VirtualService's."""
    return HEALTH_PATH_MARK_FIRST <= key.fwmark < HEALTH_PATH_MARK_FIRST + HEALTH_PATH_MARK_COUNT


def health_path_of(svc: IPVSService, dest: Destination) -> HealthPath | None:
    """The path a probe of `dest` takes: DR/TUN destinations of a checked address service
    (a fwmark service has no single VIP and port to probe, so its servers are probed at their
    own address, like NAT ones)."""
    if (not svc.checked(dest) or not svc.key.address
            or dest.forward not in (FORWARD_ROUTE, FORWARD_TUNNEL)):
        return None
    return HealthPath(svc.key.family, dest.address, dest.forward, dest.tunnel_type,
                      dest.tunnel_port, dest.tunnel_checksum)


def health_path_service(path: HealthPath, mark: int) -> IPVSService:
    """The fwmark service that carries probes along `path`."""
    return IPVSService(
        ServiceKey(path.family, "", "", 0, mark),
        "rr",
        destinations=(Destination(path.address, 0, path.forward, 1, 0, 0, path.tunnel_type,
                                  path.tunnel_port, path.tunnel_checksum,
                                  source="health path"),),
    )


class HighAvailabilityPlan(NamedTuple):
    """How the directors of one VIP decide which of them holds it (spec.ha of the VIP's
    oldest owner; the others are told if they disagree). `group` names the election: the
    Lease (in the operator's namespace) or the keepalived vrrp_instance."""

    mode: str  # "Lease" | "VRRP"
    group: str
    lease_duration: int = 2  # seconds
    renew_deadline: float = 1.5  # seconds
    retry_period: float = 0.5  # seconds
    virtual_router_id: int = 0
    priority: int = 100
    advert_interval: int = 1
    auth_secret_ref: str = ""  # namespace/name of a Secret with key `password`
    unicast_peers: tuple[str, ...] = ()
    sync: bool = False  # IPVS connection sync daemon (master and backup on every director)
    sync_id: int = 0
    sync_interface: str = ""  # "" = the VIP's device


class VIPAddress(NamedTuple):
    """A VIP a director holds on an interface (empty interface: the agent picks the device
    of the route to the VIP)."""

    address: str
    prefix_length: int
    interface: str = ""
    owners: tuple[str, ...] = ()
    ha_mode: str = "None"  # with Lease/VRRP only the active director adds it
    ha: HighAvailabilityPlan | None = None

    @property
    def key(self) -> str:
        return self.address


class IPSetPlan(NamedTuple):
    """An ipset the project owns (name prefix `lvs-`)."""

    name: str
    set_type: str  # "hash:ip,port" | "hash:net"
    family: str  # "inet" | "inet6"
    entries: tuple[str, ...]
    owner: str = ""

    @property
    def key(self) -> str:
        return self.name


class MarkRule(NamedTuple):
    """One rule in the owned mangle chain: packets matching the ipsets get `mark`."""

    mark: int
    family: int
    dst_set: str
    src_set: str = ""  # "" = any source
    except_set: str = ""  # "" = no exceptions
    owner: str = ""

    @property
    def key(self) -> tuple[int, int]:
        return (self.family, self.mark)


class SNATRule(NamedTuple):
    """FULLNAT: source NAT for IPVS-forwarded packets of one service, in the owned nat chain."""

    family: int
    vip: str
    protocol: str  # "" for fwmark services
    port: int  # 0 for fwmark services
    fwmark: int = 0
    to_source: str = ""  # "" = MASQUERADE
    owner: str = ""

    @property
    def key(self) -> tuple[int, str, str, int, int]:
        return (self.family, self.vip, self.protocol, self.port, self.fwmark)


class Sysctl(NamedTuple):
    key: str  # dotted name, e.g. net.ipv4.ip_forward
    value: str


class TunnelDevice(NamedTuple):
    """A tunnel receive device on a TUN real server (the kernel's fallback devices)."""

    name: str  # tunl0 | gre0 | ip6tnl0
    kind: str  # ipip | gre | ip6tnl
    fou_port: int = 0  # gue: `ip fou add port N gue`

    @property
    def key(self) -> str:
        return self.name


class LoopbackVIP(NamedTuple):
    """The VIP as a host address on a DR/TUN real server, so it accepts the packets."""

    address: str
    prefix_length: int
    device: str = "lo"
    owners: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.device, self.address)


class DirectorPlan(NamedTuple):
    services: tuple[IPVSService, ...] = ()
    vips: tuple[VIPAddress, ...] = ()
    ipsets: tuple[IPSetPlan, ...] = ()
    mark_rules: tuple[MarkRule, ...] = ()
    snat_rules: tuple[SNATRule, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()


class BackendPlan(NamedTuple):
    vips: tuple[LoopbackVIP, ...] = ()
    tunnels: tuple[TunnelDevice, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()


class NodePlan(NamedTuple):
    node: str
    director: DirectorPlan = DirectorPlan()
    backend: BackendPlan = BackendPlan()

    @property
    def empty(self) -> bool:
        return self.director == DirectorPlan() and self.backend == BackendPlan()


# --------------------------------------------------------------------------- serialisation


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: _to_jsonable(v) for name, v in zip(value._fields, value, strict=True)}
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    return value


def plan_to_dict(plan: NodePlan) -> dict[str, Any]:
    """A JSON-ready dict with a format version, so agents can refuse plans they don't know."""
    out: dict[str, Any] = {"formatVersion": PLAN_FORMAT_VERSION}
    out.update(_to_jsonable(plan))
    return out


def plan_to_json(plan: NodePlan) -> str:
    """Canonical JSON: same plan, byte-identical text."""
    return json.dumps(plan_to_dict(plan), sort_keys=True, separators=(",", ":"))


@functools.cache
def _reader(tp: Any) -> Any:
    """A function turning the JSON form of `tp` back into `tp`, built once per type: plans
    carry a million records, and resolving type hints per record cost most of the parse."""
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        read = _reader(inner)
        return lambda value: None if value is None else read(value)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        item = _reader(item_tp)
        return lambda value: tuple(item(v) for v in value)
    if isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields"):
        fields = {k: _reader(h) for k, h in typing.get_type_hints(tp).items()}
        return lambda value: tp(**{k: fields[k](v) for k, v in value.items() if k in fields})
    return lambda value: value


def _from_jsonable(tp: Any, value: Any) -> Any:
    return _reader(tp)(value)


def plan_from_dict(data: dict[str, Any]) -> NodePlan:
    """Inverse of plan_to_dict; raises ValueError for a plan format this code does not read."""
    version = data.get("formatVersion")
    if version != PLAN_FORMAT_VERSION:
        raise ValueError(
            f"plan formatVersion {version!r} is not supported (this agent reads "
            f"{PLAN_FORMAT_VERSION}); upgrade the agent or the operator so they match"
        )
    body = {k: v for k, v in data.items() if k != "formatVersion"}
    result: NodePlan = _from_jsonable(NodePlan, body)
    return result
