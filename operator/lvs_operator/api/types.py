"""The lvs.dev/v1alpha1 API: VirtualService and RealServer, as typed, validated dataclasses.

Field names follow Kubernetes conventions; values follow LVS vocabulary (ipvsadm, keepalived)
so an LVS operator recognises them: `scheduler.name: wrr`, `persistence.timeout`, `forwarding.
method: DR`, `tunnel.type: gue`. The CRD YAML in `crds/` is generated from these classes.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from .schema import Rule, field

__all__ = [
    "Backends",
    "ConnectionSync",
    "DirectorSelection",
    "DrainPolicy",
    "FirewallMark",
    "FirewallMarkPort",
    "Forwarding",
    "ForwardingMethod",
    "HAMode",
    "HTTPCheck",
    "HealthCheck",
    "HealthCheckType",
    "HighAvailability",
    "LabelSelector",
    "LabelSelectorRequirement",
    "LeaseSettings",
    "OnFailure",
    "Persistence",
    "PersistenceEngine",
    "PortSpec",
    "Protocol",
    "Quorum",
    "RealServerSpec",
    "RealServerState",
    "Scheduler",
    "SchedulerFlag",
    "SchedulerName",
    "ServiceRef",
    "SorryServer",
    "SourceNAT",
    "Tunnel",
    "TunnelChecksum",
    "TunnelType",
    "VRRPSettings",
    "VirtualServiceSpec",
    "ip_family",
    "is_cidr",
    "is_ip",
    "is_unicast_ip",
]

MAX_PERSISTENCE_TIMEOUT = 86400 * 31  # ipvsadm's MAX_TIMEOUT: 31 days
INT32_MAX = 2**31 - 1
PORT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"
LABEL_KEY_MAX = 317  # prefix (253) + "/" + name (63)


# --------------------------------------------------------------------------- address helpers
# These mirror the Kubernetes CEL IP library (isIP, ip(), isCIDR, cidr()) so that the Python
# half of each rule accepts exactly what the apiserver accepts.


def is_ip(text: str) -> bool:
    """True for a plain IPv4/IPv6 address: no zone, no IPv4-mapped IPv6, no leading zeros."""
    if "%" in text or not text.isascii():
        return False  # Python parses zones and some non-ASCII forms; Go's netip does not
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None)


def is_unicast_ip(text: str) -> bool:
    """Go's net.IP.IsGlobalUnicast: what CEL's `ip(x).isGlobalUnicast()` answers."""
    if not is_ip(text):
        return False
    addr = ipaddress.ip_address(text)
    return not (
        addr.is_unspecified
        or addr.is_loopback
        or addr.is_multicast
        or addr.is_link_local
        or text == "255.255.255.255"
    )


def is_cidr(text: str) -> bool:
    """A CIDR such as 198.51.100.0/24; host bits may be set, as CEL's isCIDR allows."""
    if "/" not in text:
        return False
    address, _, prefix = text.partition("/")
    digits = prefix.isascii() and prefix.isdigit()
    if not is_ip(address) or not digits or (len(prefix) > 1 and prefix[0] == "0"):
        return False
    return int(prefix) <= (32 if ip_family(address) == 4 else 128)


def ip_family(text: str) -> int:
    """4 or 6; the text must already be a valid address."""
    return ipaddress.ip_address(text).version


def _cidr_family(text: str) -> int:
    return ip_family(text.partition("/")[0])


# --------------------------------------------------------------------------- enums


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class ForwardingMethod(enum.StrEnum):
    """How the director hands a packet to the real server (ipvsadm -m / -g / -i)."""

    NAT = "NAT"
    DR = "DR"
    TUN = "TUN"
    FULLNAT = "FULLNAT"


class TunnelType(enum.StrEnum):
    IPIP = "ipip"
    GUE = "gue"
    GRE = "gre"


class TunnelChecksum(enum.StrEnum):
    """ipvsadm --tun-nocsum / --tun-csum / --tun-remcsum."""

    NONE = "none"
    CSUM = "csum"
    REMCSUM = "remcsum"


class SchedulerName(enum.StrEnum):
    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    LBLCR = "lblcr"
    DH = "dh"
    SH = "sh"
    SED = "sed"
    NQ = "nq"
    MH = "mh"
    FO = "fo"
    OVF = "ovf"


class SchedulerFlag(enum.StrEnum):
    """Scheduler flags (ipvsadm -b); each belongs to the scheduler its name starts with."""

    SH_FALLBACK = "sh-fallback"
    SH_PORT = "sh-port"
    MH_FALLBACK = "mh-fallback"
    MH_PORT = "mh-port"


class PersistenceEngine(enum.StrEnum):
    SIP = "sip"


class RealServerState(enum.StrEnum):
    """Enabled takes traffic; Draining keeps established connections at weight 0; Disabled
    removes the destination."""

    ENABLED = "Enabled"
    DRAINING = "Draining"
    DISABLED = "Disabled"


class HealthCheckType(enum.StrEnum):
    NONE = "None"
    TCP = "TCP"
    HTTP = "HTTP"


class OnFailure(enum.StrEnum):
    """keepalived's choice: remove the destination, or keep it at weight 0 (inhibit_on_failure)."""

    REMOVE = "Remove"
    INHIBIT = "Inhibit"


class HAMode(enum.StrEnum):
    NONE = "None"
    LEASE = "Lease"
    VRRP = "VRRP"


class SelectorOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    """One matchExpressions entry of a Kubernetes label selector."""

    key: str = field("The label key.", required=True, max_length=LABEL_KEY_MAX)
    operator: SelectorOperator = field("In, NotIn, Exists or DoesNotExist.", required=True)
    values: tuple[str, ...] = field(
        "Values for In/NotIn; must be empty for Exists/DoesNotExist.",
        default=(),
        max_items=64,
        list_type="atomic",
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
            message="values must be non-empty for In/NotIn and empty for Exists/DoesNotExist",
            check=lambda s: (
                (len(s.values) > 0)
                == (s.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN))
            ),
            field_path=".values",
        ),
    )


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector; an empty selector matches everything."""

    match_labels: dict[str, str] | None = field("Labels that must all match exactly.")
    match_expressions: tuple[LabelSelectorRequirement, ...] = field(
        "Set-based requirements, all of which must hold.",
        default=(),
        max_items=32,
        list_type="atomic",
    )

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator is SelectorOperator.IN and labels.get(req.key) not in req.values:
                return False
            if (
                req.operator is SelectorOperator.NOT_IN
                and present
                and labels[req.key] in req.values
            ):
                return False
            if req.operator is SelectorOperator.EXISTS and not present:
                return False
            if req.operator is SelectorOperator.DOES_NOT_EXIST and present:
                return False
        return True


# --------------------------------------------------------------------------- VirtualService


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One virtual port: becomes one IPVS service VIP:port/protocol."""

    port: int = field("Virtual port clients connect to.", required=True, minimum=1, maximum=65535)
    protocol: Protocol = field("TCP, UDP or SCTP.", default=Protocol.TCP)
    name: str | None = field(
        "Optional name; Service-backed VirtualServices match it to an EndpointSlice port name.",
        max_length=15,
        pattern=PORT_NAME_PATTERN,
    )
    target_port: int | str | None = field(
        "Port on the real servers (NAT and FULLNAT only; DR and TUN cannot change the port). A "
        "number, or the name of an EndpointSlice port for Service-backed VirtualServices. "
        "Defaults to the RealServer's port, else the virtual port.",
        int_or_string=True,
        # Plain schema facts apply by type (numbers: range; names: length and pattern) and,
        # unlike a CEL rule on an int-or-string, cost nothing against the CEL budget.
        minimum=1,
        maximum=65535,
        max_length=15,
        pattern=PORT_NAME_PATTERN,
        pattern_message="must be a port number 1-65535 or an IANA port name (lowercase "
        "letters, digits and '-', at most 15 characters)",
    )


@dataclass(frozen=True, slots=True)
class FirewallMarkPort:
    """A destination port on the VIP whose packets get the firewall mark."""

    port: int = field("Destination port.", required=True, minimum=1, maximum=65535)
    protocol: Protocol = field("TCP, UDP or SCTP.", default=Protocol.TCP)


def _cidr_list(doc: str, json_name: str, example: str) -> Any:
    """A set of CIDRs (at most 64; 43 characters fits any IPv6 CIDR and bounds CEL's cost)."""
    return field(
        doc,
        default=(),
        max_items=64,
        item_max_length=43,
        list_type="set",
        rules=(
            Rule(
                cel="self.all(c, isCIDR(c))",
                message=f"{json_name} entries must be CIDRs such as {example}",
                check=lambda v: all(is_cidr(c) for c in v),
            ),
        ),
    )


@dataclass(frozen=True, slots=True)
class FirewallMark:
    """A firewall-mark service (ipvsadm -f): packets to the VIP on any of `ports` are marked
    in the mangle table (matched through an ipset) and balanced as one IPVS service, so that
    persistence covers all of them (the classic 80+443 pair)."""

    mark: int = field(
        "The mark value (1-4294967295), unique among VirtualServices.",
        required=True,
        minimum=1,
        maximum=4294967295,
    )
    ports: tuple[FirewallMarkPort, ...] = field(
        "Ports on the VIP that carry the mark.",
        required=True,
        min_items=1,
        max_items=64,
        list_type="map",
        list_map_keys=("port", "protocol"),
    )
    source_ranges: tuple[str, ...] = _cidr_list(
        "Only mark packets from these source CIDRs (default: any source).",
        "sourceRanges",
        "198.51.100.0/24",
    )
    except_ranges: tuple[str, ...] = _cidr_list(
        "Never mark packets from these source CIDRs, even inside sourceRanges.",
        "exceptRanges",
        "198.51.100.7/32",
    )


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Tunnel encapsulation for TUN forwarding (ipvsadm --tun-type/--tun-port/--tun-*csum)."""

    type: TunnelType = field("ipip (default), gue or gre.", default=TunnelType.IPIP)
    port: int | None = field(
        "UDP port of the GUE receiver on the real servers (gue only).", minimum=1, maximum=65535
    )
    checksum: TunnelChecksum | None = field(
        "Outer checksum: none, csum, or remcsum (remcsum is gue only; ipip takes none)."
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.type != 'gue' || has(self.port)",
            message="tunnel.port is required for gue: set the UDP port the real servers "
            "decapsulate on (e.g. 6080)",
            check=lambda s: s.type is not TunnelType.GUE or s.port is not None,
            field_path=".port",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.type == 'gue' || !has(self.port)",
            message="tunnel.port is only for gue tunnels; remove it or set type: gue",
            check=lambda s: s.type is TunnelType.GUE or s.port is None,
            field_path=".port",
        ),
        Rule(
            cel="self.type != 'ipip' || !has(self.checksum)",
            message="tunnel.checksum does not apply to ipip; remove it or use gue/gre",
            check=lambda s: s.type is not TunnelType.IPIP or s.checksum is None,
            field_path=".checksum",
        ),
        Rule(
            cel="self.type == 'gue' || !has(self.checksum) || self.checksum != 'remcsum'",
            message="tunnel.checksum remcsum is only for gue; use none or csum with gre",
            check=lambda s: s.type is TunnelType.GUE or s.checksum is not TunnelChecksum.REMCSUM,
            field_path=".checksum",
        ),
    )


@dataclass(frozen=True, slots=True)
class SourceNAT:
    """FULLNAT's source address toward the real servers."""

    address: str | None = field(
        "Source address the director uses toward real servers (SNAT --to-source); default: "
        "masquerade with the outgoing interface's address.",
        max_length=64,
        rules=(
            Rule(
                cel="isIP(self) && ip(self).isGlobalUnicast()",
                message="sourceNAT.address must be a unicast IPv4 or IPv6 address",
                check=is_unicast_ip,
            ),
        ),
    )


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Forwarding method: NAT (-m), DR (-g), TUN (-i) or FULLNAT (NAT plus source NAT to the
    director, so real servers need no route back through it)."""

    method: ForwardingMethod = field("NAT, DR, TUN or FULLNAT.", default=ForwardingMethod.NAT)
    tunnel: Tunnel | None = field("Tunnel settings; TUN only.")
    source_nat: SourceNAT | None = field(
        "Source NAT settings; FULLNAT only.", json_name="sourceNAT"
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.method == 'TUN' || !has(self.tunnel)",
            message="forwarding.tunnel is only for method TUN; remove it or set method: TUN",
            check=lambda s: s.method is ForwardingMethod.TUN or s.tunnel is None,
            field_path=".tunnel",
        ),
        Rule(
            cel="self.method == 'FULLNAT' || !has(self.sourceNAT)",
            message="forwarding.sourceNAT is only for method FULLNAT; remove it or set "
            "method: FULLNAT",
            check=lambda s: s.method is ForwardingMethod.FULLNAT or s.source_nat is None,
            field_path=".sourceNAT",
        ),
    )


@dataclass(frozen=True, slots=True)
class Scheduler:
    """The IPVS scheduler (ipvsadm -s) and its flags (ipvsadm -b)."""

    name: SchedulerName = field(
        "rr, wrr, lc, wlc (ipvsadm's default), lblc, lblcr, dh, sh, sed, nq, mh, fo or ovf.",
        default=SchedulerName.WLC,
    )
    flags: tuple[SchedulerFlag, ...] = field(
        "Scheduler flags: sh-fallback/sh-port for sh, mh-fallback/mh-port for mh.",
        default=(),
        max_items=4,
        list_type="set",
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # has(): the apiserver checks this rule against the bare `{}` default too
            cel="!has(self.flags) || self.flags.all(f, f.startsWith(self.name + '-'))",
            message="scheduler.flags: sh-fallback and sh-port need scheduler sh; mh-fallback and "
            "mh-port need scheduler mh; other schedulers take no flags",
            check=lambda s: all(f.value.startswith(s.name.value + "-") for f in s.flags),
            field_path=".flags",
        ),
    )


@dataclass(frozen=True, slots=True)
class Persistence:
    """Client persistence (ipvsadm -p/-M/--pe): a client keeps its real server for `timeout`
    seconds after its last connection, grouped by source `prefixLength`."""

    timeout: int = field(
        "Seconds (1 to 2678400, 31 days); ipvsadm's -p default is 360.",
        default=360,
        minimum=1,
        maximum=MAX_PERSISTENCE_TIMEOUT,
    )
    prefix_length: int | None = field(
        "Clients whose addresses share this prefix count as one (ipvsadm -M). 0-32 for IPv4 "
        "(default 32), 1-128 for IPv6 (default 128).",
        minimum=0,
        maximum=128,
    )
    engine: PersistenceEngine | None = field("Persistence engine (--pe): sip, UDP only.")


@dataclass(frozen=True, slots=True)
class DirectorSelection:
    """Which nodes run this VirtualService as directors (IPVS service and VIP)."""

    node_selector: LabelSelector = field(
        "Nodes whose labels match become directors. Required so that no VIP lands on every "
        "node by surprise.",
        required=True,
    )
    interface: str | None = field(
        "Device that holds the VIP on directors; default: the device of the route to the VIP.",
        max_length=15,
        pattern=r"^[A-Za-z0-9_.:-]+$",
    )


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Lease-mode timings (client-go leader election). The defaults fail over in under 3 s
    after the holder dies (lease duration plus at most one retry period, minus the time since
    its last renewal); sub-second periods are in milliseconds since Kubernetes API fields
    carry no fractions."""

    duration_seconds: int = field("Lease duration.", default=2, minimum=1, maximum=300)
    renew_deadline_milliseconds: int = field(
        "Holder steps down (removes the VIP) if it cannot renew within this.",
        default=1500, minimum=200, maximum=300000,
    )
    retry_period_milliseconds: int = field(
        "Renew period of the holder and poll period of standbys.",
        default=500, minimum=100, maximum=60000,
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.renewDeadlineMilliseconds < self.durationSeconds * 1000",
            message="lease.renewDeadlineMilliseconds must be shorter than durationSeconds",
            check=lambda s: s.renew_deadline_milliseconds < s.duration_seconds * 1000,
            field_path=".renewDeadlineMilliseconds",
        ),
        Rule(
            cel="self.retryPeriodMilliseconds < self.renewDeadlineMilliseconds",
            message="lease.retryPeriodMilliseconds must be shorter than renewDeadlineMilliseconds",
            check=lambda s: s.retry_period_milliseconds < s.renew_deadline_milliseconds,
            field_path=".retryPeriodMilliseconds",
        ),
    )


@dataclass(frozen=True, slots=True)
class VRRPSettings:
    """keepalived vrrp_instance settings, for failover without the API server."""

    virtual_router_id: int = field(
        "virtual_router_id, 1-255.",
        required=True,
        minimum=1,
        maximum=255,
        json_name="virtualRouterID",
    )
    priority: int = field("priority, 1-254; highest wins.", default=100, minimum=1, maximum=254)
    advert_interval_seconds: int = field("advert_int.", default=1, minimum=1, maximum=255)
    auth_secret_ref: str | None = field(
        "Secret holding auth_pass (key `password`).", max_length=253
    )
    unicast_peers: tuple[str, ...] = field(
        "unicast_peer addresses, where multicast is unavailable.",
        default=(),
        max_items=16,
        item_max_length=45,
        list_type="set",
        rules=(
            Rule(
                cel="self.all(p, isIP(p))",
                message="vrrp.unicastPeers must be IP addresses",
                check=lambda v: all(is_ip(p) for p in v),
            ),
        ),
    )


@dataclass(frozen=True, slots=True)
class ConnectionSync:
    """The kernel's IPVS connection sync daemon, so connections survive failover."""

    enabled: bool = field("Run the sync daemon (master on the active director).", default=False)
    sync_id: int = field("syncid, 0-255.", default=0, minimum=0, maximum=255, json_name="syncID")
    interface: str | None = field("Multicast interface for sync messages.", max_length=15)


@dataclass(frozen=True, slots=True)
class HighAvailability:
    """Director failover: which director holds the VIP, and how the others take over."""

    mode: HAMode = field("None, Lease (default when set) or VRRP.", default=HAMode.LEASE)
    group: str | None = field(
        "Fail over together with every VIP naming this group: one Lease (or one keepalived "
        "vrrp_instance) for all of them instead of one per VIP. Use it for many VIPs on the "
        "same directors: each Lease costs every director API requests each retry period.",
        max_length=50,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    lease: LeaseSettings | None = field("Lease mode settings.")
    vrrp: VRRPSettings | None = field("VRRP mode settings.")
    connection_sync: ConnectionSync | None = field("IPVS connection synchronisation.")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.mode == 'VRRP' ? has(self.vrrp) : !has(self.vrrp)",
            message="ha.vrrp is required with mode VRRP and not allowed otherwise",
            check=lambda s: (s.mode is HAMode.VRRP) == (s.vrrp is not None),
            field_path=".vrrp",
        ),
        Rule(
            cel="self.mode == 'Lease' || !has(self.lease)",
            message="ha.lease is only for mode Lease",
            check=lambda s: s.mode is HAMode.LEASE or s.lease is None,
            field_path=".lease",
        ),
        Rule(
            cel="self.mode != 'None' || !has(self.group)",
            message="ha.group is for mode Lease or VRRP; remove it or pick a mode",
            check=lambda s: s.mode is not HAMode.NONE or s.group is None,
            field_path=".group",
        ),
    )


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Service in the VirtualService's namespace whose EndpointSlices supply backends."""

    name: str = field(
        "Service name.", required=True, max_length=63, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
    )


@dataclass(frozen=True, slots=True)
class Backends:
    """Where real servers come from: RealServers selected by label, a Service's
    EndpointSlices, or both."""

    real_server_selector: LabelSelector | None = field(
        "RealServers in this namespace whose labels match."
    )
    service: ServiceRef | None = field("A Service whose ready endpoints become real servers.")
    weight: int = field(
        "Weight of Service endpoints (RealServers carry their own).",
        default=1,
        minimum=0,
        maximum=65535,
    )
    upper_threshold: int = field(
        "ipvsadm -x for Service endpoints; 0 = no limit.", default=0, minimum=0, maximum=INT32_MAX
    )
    lower_threshold: int = field(
        "ipvsadm -y for Service endpoints; 0 = none.", default=0, minimum=0, maximum=INT32_MAX
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.realServerSelector) || has(self.service)",
            message="backends needs realServerSelector, service, or both",
            check=lambda s: s.real_server_selector is not None or s.service is not None,
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.upperThreshold == 0 || self.lowerThreshold <= self.upperThreshold",
            message="backends.lowerThreshold must not exceed upperThreshold",
            check=lambda s: s.upper_threshold == 0 or s.lower_threshold <= s.upper_threshold,
            field_path=".lowerThreshold",
        ),
    )


@dataclass(frozen=True, slots=True)
class HTTPCheck:
    """keepalived HTTP_GET."""

    path: str = field(
        "URL path to request; printable ASCII (percent-encode anything else).",
        default="/",
        max_length=1024,
        pattern=r"^/[!-~]*$",
    )
    host: str | None = field("Host header (virtualhost).", max_length=253)
    expected_status_codes: tuple[int, ...] = field(
        "Status codes that count as healthy (status_code).",
        default=(200,),
        max_items=16,
        list_type="set",
        rules=(
            Rule(
                cel="self.all(c, c >= 100 && c <= 599)",
                message="expectedStatusCodes must be HTTP status codes 100-599",
                check=lambda v: all(100 <= c <= 599 for c in v),
            ),
        ),
    )
    digest: str | None = field(
        "MD5 of the expected body (digest), 32 hex digits.",
        pattern=r"^[0-9a-f]{32}$",
        max_length=32,
    )


@dataclass(frozen=True, slots=True)
class SorryServer:
    """Where traffic goes when fewer than quorum real servers are healthy (sorry_server)."""

    address: str = field(
        "Address.",
        required=True,
        max_length=64,
        rules=(
            Rule(
                cel="isIP(self)", message="sorryServer.address must be an IP address", check=is_ip
            ),
        ),
    )
    port: int | None = field("Port; default: the virtual port.", minimum=1, maximum=65535)


@dataclass(frozen=True, slots=True)
class Quorum:
    """keepalived quorum with hysteresis."""

    minimum: int = field("Healthy weight needed (quorum).", default=1, minimum=1, maximum=INT32_MAX)
    hysteresis: int = field("hysteresis.", default=0, minimum=0, maximum=INT32_MAX)
    sorry_server: SorryServer | None = field("Used while quorum is lost.")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Real server checks run by the director's agent, with keepalived's knobs."""

    type: HealthCheckType = field(
        "None, TCP (TCP_CHECK) or HTTP (HTTP_GET).", default=HealthCheckType.TCP
    )
    port: int | None = field(
        "Port to check (connect_port); default: the real server's port.", minimum=1, maximum=65535
    )
    connect_timeout_seconds: int = field("connect_timeout.", default=3, minimum=1, maximum=300)
    retries: int = field(
        "retry: failures before a server is marked down.", default=3, minimum=1, maximum=100
    )
    delay_before_retry_seconds: int = field(
        "delay_before_retry.", default=1, minimum=0, maximum=300
    )
    interval_seconds: int = field(
        "delay_loop: seconds between checks.", default=6, minimum=1, maximum=3600
    )
    on_failure: OnFailure = field(
        "Remove, or Inhibit (weight 0; inhibit_on_failure).", default=OnFailure.REMOVE
    )
    http: HTTPCheck | None = field("HTTP_GET settings; type HTTP only.")
    quorum: Quorum | None = field("Quorum and sorry server.")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.type == 'HTTP' || !has(self.http)",
            message="healthCheck.http is only for type HTTP",
            check=lambda s: s.type is HealthCheckType.HTTP or s.http is None,
            field_path=".http",
        ),
    )


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    """What happens when a real server leaves: weight 0 first, deletion when its connections
    end or the deadline passes."""

    timeout_seconds: int = field(
        "Deadline before a draining server is deleted anyway.",
        default=300,
        minimum=0,
        maximum=86400,
    )
    expire_nodest_conn: bool = field(
        "Set net.ipv4.vs.expire_nodest_conn on directors.", default=True
    )
    expire_quiescent_template: bool = field(
        "Set net.ipv4.vs.expire_quiescent_template on directors.", default=True
    )


def _all_ports(s: VirtualServiceSpec) -> list[Protocol]:
    if s.firewall_mark is not None:
        return [p.protocol for p in s.firewall_mark.ports]
    return [p.protocol for p in s.ports]


def _prefix_fits(s: VirtualServiceSpec) -> bool:
    if s.persistence is None or s.persistence.prefix_length is None or not is_ip(s.address):
        return True
    if ip_family(s.address) == 4:
        return s.persistence.prefix_length <= 32
    return s.persistence.prefix_length >= 1


def _ranges_match_family(s: VirtualServiceSpec) -> bool:
    if s.firewall_mark is None or not is_ip(s.address):
        return True
    fam = ip_family(s.address)
    ranges = s.firewall_mark.source_ranges + s.firewall_mark.except_ranges
    return all(_cidr_family(c) == fam for c in ranges)


def _no_port_remap(s: VirtualServiceSpec) -> bool:
    if s.forwarding.method not in (ForwardingMethod.DR, ForwardingMethod.TUN):
        return True
    return all(p.target_port is None or p.target_port == p.port for p in s.ports)


@dataclass(frozen=True, slots=True)
class VirtualServiceSpec:
    """A virtual service: a VIP with ports (or a firewall mark), a scheduler, a forwarding
    method and the real servers behind it, on the director nodes that match."""

    address: str = field(
        "The virtual IP (IPv4 or IPv6).",
        required=True,
        max_length=64,
        rules=(
            Rule(
                cel="isIP(self) && ip(self).isGlobalUnicast()",
                message="address must be a unicast IPv4 or IPv6 address such as 192.0.2.10 or "
                "2001:db8::10 (not loopback, link-local, multicast or unspecified)",
                check=is_unicast_ip,
            ),
        ),
    )
    directors: DirectorSelection = field("Which nodes are directors.", required=True)
    backends: Backends = field("Where the real servers come from.", required=True)
    ports: tuple[PortSpec, ...] = field(
        "Virtual ports; each becomes one IPVS service. Exclusive with firewallMark.",
        default=(),
        max_items=64,
        list_type="map",
        list_map_keys=("port", "protocol"),
    )
    firewall_mark: FirewallMark | None = field(
        "A firewall-mark service grouping several ports. Exclusive with ports."
    )
    forwarding: Forwarding = field("Forwarding method.", default_factory=Forwarding)
    scheduler: Scheduler = field("Scheduler and flags.", default_factory=Scheduler)
    persistence: Persistence | None = field("Client persistence; absent = none.")
    one_packet_scheduling: bool = field(
        "Schedule every UDP datagram independently (ipvsadm -o); UDP ports or fwmark only.",
        default=False,
    )
    health_check: HealthCheck | None = field("Health checks for RealServer backends.")
    drain: DrainPolicy = field(
        "How departing real servers are drained.", default_factory=DrainPolicy
    )
    ha: HighAvailability | None = field("Director high availability.")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="size(self.ports) > 0 ? !has(self.firewallMark) : has(self.firewallMark)",
            message="set exactly one of ports (one IPVS service per port) or firewallMark "
            "(one IPVS service for several ports)",
            check=lambda s: (len(s.ports) > 0) != (s.firewall_mark is not None),
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="!(self.forwarding.method in ['DR', 'TUN']) || "
            "self.ports.all(p, !has(p.targetPort) || p.targetPort == p.port)",
            message="DR and TUN forward packets unchanged, so ports[].targetPort must equal "
            "port; remove targetPort or use NAT/FULLNAT",
            check=_no_port_remap,
            field_path=".ports",
        ),
        Rule(
            cel="!has(self.persistence) || !has(self.persistence.prefixLength) || "
            "(ip(self.address).family() == 4 ? self.persistence.prefixLength <= 32 : "
            "self.persistence.prefixLength >= 1)",
            message="persistence.prefixLength must be 0-32 for an IPv4 address and 1-128 for IPv6",
            check=_prefix_fits,
            field_path=".persistence.prefixLength",
        ),
        Rule(
            cel="!self.onePacketScheduling || has(self.firewallMark) || "
            "self.ports.all(p, p.protocol == 'UDP')",
            message="onePacketScheduling is only for UDP ports (or a firewallMark service)",
            check=lambda s: (
                not s.one_packet_scheduling
                or s.firewall_mark is not None
                or all(p.protocol is Protocol.UDP for p in s.ports)
            ),
            field_path=".onePacketScheduling",
        ),
        Rule(
            cel="!has(self.persistence) || !has(self.persistence.engine) || "
            "(has(self.firewallMark) ? self.firewallMark.ports.all(p, p.protocol == 'UDP') : "
            "self.ports.all(p, p.protocol == 'UDP'))",
            message="persistence.engine sip needs UDP ports",
            check=lambda s: (
                s.persistence is None
                or s.persistence.engine is None
                or all(p is Protocol.UDP for p in _all_ports(s))
            ),
            field_path=".persistence.engine",
        ),
        Rule(
            cel="!has(self.firewallMark) || "
            "(self.firewallMark.sourceRanges + self.firewallMark.exceptRanges).all(c, "
            "cidr(c).ip().family() == ip(self.address).family())",
            message="firewallMark sourceRanges/exceptRanges must be of the address's IP family",
            check=_ranges_match_family,
            field_path=".firewallMark",
        ),
        Rule(
            cel="!has(self.forwarding.sourceNAT) || !has(self.forwarding.sourceNAT.address) || "
            "ip(self.forwarding.sourceNAT.address).family() == ip(self.address).family()",
            message="forwarding.sourceNAT.address must be of the address's IP family",
            check=lambda s: (
                s.forwarding.source_nat is None
                or s.forwarding.source_nat.address is None
                or not is_ip(s.address)
                or not is_ip(s.forwarding.source_nat.address)
                or ip_family(s.forwarding.source_nat.address) == ip_family(s.address)
            ),
            field_path=".forwarding.sourceNAT.address",
        ),
    )


# --------------------------------------------------------------------------- RealServer


@dataclass(frozen=True, slots=True)
class RealServerSpec:
    """A real server: an address (and optional port) behind VirtualServices that select it."""

    address: str = field(
        "The real server's IP address (RIP).",
        required=True,
        max_length=64,
        rules=(
            Rule(
                cel="isIP(self) && ip(self).isGlobalUnicast()",
                message="address must be a unicast IPv4 or IPv6 address such as 198.51.100.11",
                check=is_unicast_ip,
            ),
        ),
    )
    port: int | None = field(
        "Port the server listens on (NAT/FULLNAT); default: the VirtualService's target port.",
        minimum=1,
        maximum=65535,
    )
    weight: int = field(
        "IPVS weight, 0-65535 (ipvsadm -w); 0 takes no new connections.",
        default=1,
        minimum=0,
        maximum=65535,
    )
    upper_threshold: int = field(
        "Upper connection threshold (ipvsadm -x); 0 = no limit.",
        default=0,
        minimum=0,
        maximum=INT32_MAX,
    )
    lower_threshold: int = field(
        "Lower connection threshold (ipvsadm -y); 0 = none.",
        default=0,
        minimum=0,
        maximum=INT32_MAX,
    )
    node_name: str | None = field(
        "Node where this address lives; DR/TUN real-server setup (VIP on lo, ARP sysctls, "
        "tunnel device) is applied there by its agent. Leave empty for servers set up by hand.",
        max_length=253,
    )
    state: RealServerState = field(
        "Enabled, Draining (weight 0) or Disabled (removed).", default=RealServerState.ENABLED
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.upperThreshold == 0 || self.lowerThreshold <= self.upperThreshold",
            message="lowerThreshold must not exceed upperThreshold",
            check=lambda s: s.upper_threshold == 0 or s.lower_threshold <= s.upper_threshold,
            field_path=".lowerThreshold",
        ),
    )
