"""In-memory kernels with the real kernel's semantics, for unit tests and `--dry-run`.

They refuse what the kernel refuses (EEXIST on a second add, ENOENT on deleting what is not
there, unknown schedulers, destroying an ipset a rule still uses), so code that passes
against them does not rely on a forgiving fake. The same contract suites run against these
and the real adapters.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from ..compiler.plan import Destination, IPVSService, ServiceKey, TunnelDevice
from .errors import AlreadyExists, InvalidArgument, KernelError, KernelUnavailable, NotFound
from .ipvs import (
    SYNC_IFNAME_MAX,
    SYNC_STATES,
    IPVSOp,
    IPVSOpKind,
    IPVSStats,
    LiveConnection,
    LiveDestination,
    LiveService,
    OpFailure,
    SyncDaemon,
    daemon_attributes,
    dest_attributes,
    service_attributes,
)
from .netstate import MAX_ADDRESS_LIFETIME, AddressEntry, ChainSpec, IPSetState
from .real_chains import canonical_rule

__all__ = [
    "FakeAddresses",
    "FakeChains",
    "FakeIPSets",
    "FakeIPVS",
    "FakeSysctls",
    "FakeTunnels",
]

SCHEDULERS = frozenset(
    ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf"]
)


@dataclass
class _FakeService:
    attrs: IPVSService
    dests: dict[tuple[str, int], LiveDestination] = field(default_factory=dict)
    stats: IPVSStats = field(default_factory=IPVSStats)


def _added(stats: IPVSStats, counts: dict[str, int]) -> IPVSStats:
    return stats._replace(**{k: getattr(stats, k) + v for k, v in counts.items()})


class FakeIPVS:
    """An IPVS table in memory. Tests move connection counts with `set_connections`, counters
    with `add_traffic`, rate estimates with `set_rates`; `connection_table` is what
    `connections()` returns (set_connections keeps it in step with the counts).

    Sync daemons: `interfaces` are the names of the namespace's interfaces (each of MTU
    1500); without it any name a Linux interface could have is taken to exist (never "",
    ".", "..", or one with "/", ":" or whitespace: dev_valid_name)."""

    VERSION = "1.2.1"  # what Linux has reported since 2.6 (IP_VS_VERSION_CODE 0x010201)
    CONN_TAB_SIZE = 4096  # 1 << CONFIG_IP_VS_TAB_BITS (12, the default)

    def __init__(self, available: bool = True, interfaces: Collection[str] | None = None) -> None:
        self.available = available
        self.interfaces = None if interfaces is None else frozenset(interfaces)
        self._daemons: dict[str, SyncDaemon] = {}
        self._services: dict[ServiceKey, _FakeService] = {}
        self.applied: list[IPVSOp] = []  # every op that succeeded, in order
        self.connection_table: list[LiveConnection] = []
        self.total = IPVSStats()  # /proc/net/ip_vs_stats: every service's traffic

    def probe(self) -> None:
        if not self.available:
            raise KernelUnavailable("IPVS is not available in this kernel (ip_vs module)")

    def dump(self) -> list[LiveService]:
        self.probe()
        return [
            LiveService(s.attrs, tuple(s.dests[k] for k in sorted(s.dests)), s.stats)
            for s in self._services.values()
        ]

    def info(self) -> tuple[str, int]:
        self.probe()
        return self.VERSION, self.CONN_TAB_SIZE

    def zero(self, service: ServiceKey | None = None) -> None:
        """Counters and rates back to 0 (the kernel takes the current counters as the new
        zero point and resets its estimator): one service and its destinations, or all."""
        self.probe()
        if service is None:
            targets = list(self._services.values())
            self.total = IPVSStats()
        else:
            svc = self._services.get(service)
            if svc is None:
                raise NotFound(f"zero the counters of {service}: no such service")
            targets = [svc]
        for svc in targets:
            svc.stats = IPVSStats()
            for k, live in svc.dests.items():
                svc.dests[k] = live._replace(stats=IPVSStats())

    def connections(self) -> list[LiveConnection]:
        self.probe()
        return list(self.connection_table)

    def daemons(self) -> list[SyncDaemon]:
        self.probe()
        return [self._daemons[state] for state in SYNC_STATES if state in self._daemons]

    def start_daemon(self, d: SyncDaemon) -> None:
        """In the kernel's order of checks (ip_vs_genl_new_daemon, start_sync_thread)."""
        self.probe()
        what = f"start the IPVS {d}"
        if d.state not in SYNC_STATES:
            raise InvalidArgument(f"{what}: state {d.state!r} is neither master nor backup")
        if len(d.interface.encode()) > SYNC_IFNAME_MAX:
            raise InvalidArgument(f"{what}: interface name longer than {SYNC_IFNAME_MAX} bytes")
        if not 0 <= d.sync_id <= 255:
            raise InvalidArgument(f"{what}: sync id {d.sync_id} is not in 0..255")
        if not (0 <= d.sync_maxlen <= 0xFFFF and 0 <= d.mcast_port <= 0xFFFF):
            raise InvalidArgument(f"{what}: sync maxlen or port out of range")
        if not 0 <= d.mcast_ttl <= 0xFF:
            raise InvalidArgument(f"{what}: ttl {d.mcast_ttl} out of range")
        if d.mcast_group:
            try:
                group = ipaddress.ip_address(d.mcast_group)
            except ValueError as exc:
                raise InvalidArgument(f"{what}: {d.mcast_group!r} is not an address") from exc
            if not group.is_multicast:
                raise InvalidArgument(f"{what}: {group} is not a multicast group")
            d = d._replace(mcast_group=str(group))
        if self._mixed_family():
            raise InvalidArgument(f"{what}: a destination of the other address family exists")
        if not self._interface_exists(d.interface):
            raise NotFound(f"{what}: no interface {d.interface!r} in this namespace")
        if d.state in self._daemons:
            raise AlreadyExists(f"{what}: a {d.state} sync daemon is already running")
        self._daemons[d.state] = daemon_attributes(d)

    def stop_daemon(self, state: str) -> None:
        self.probe()
        what = f"stop the IPVS {state} sync daemon"
        if state not in SYNC_STATES:
            raise InvalidArgument(f"{what}: state {state!r} is neither master nor backup")
        if self._daemons.pop(state, None) is None:
            raise NotFound(f"{what}: no {state} sync daemon is running")

    def _interface_exists(self, name: str) -> bool:
        if self.interfaces is not None:
            return name in self.interfaces
        return name not in ("", ".", "..") and not any(c in "/:" or c.isspace() for c in name)

    def _mixed_family(self) -> bool:
        return any(
            (6 if ":" in dkey[0] else 4) != key.family
            for key, svc in self._services.items()
            for dkey in svc.dests
        )

    def apply(self, ops: Sequence[IPVSOp]) -> list[OpFailure]:
        self.probe()
        failures = []
        for op in ops:
            try:
                self._apply_one(op)
            except KernelError as exc:
                failures.append(OpFailure(op, exc))
            else:
                self.applied.append(op)
        return failures

    def _apply_one(self, op: IPVSOp) -> None:
        key = op.service.key
        svc = self._services.get(key)
        edits = (IPVSOpKind.ADD_SERVICE, IPVSOpKind.EDIT_SERVICE)
        if op.kind in edits and op.service.scheduler not in SCHEDULERS:
            raise InvalidArgument(f"{key}: unknown scheduler {op.service.scheduler!r}")
        if op.kind is IPVSOpKind.ADD_SERVICE:
            if svc is not None:
                raise AlreadyExists(f"{key}: service exists")
            self._services[key] = _FakeService(service_attributes(op.service))
            return
        if svc is None:
            raise NotFound(f"{key}: no such service")
        if op.kind is IPVSOpKind.EDIT_SERVICE:
            svc.attrs = service_attributes(op.service)
            return
        if op.kind is IPVSOpKind.DEL_SERVICE:
            del self._services[key]
            return
        assert op.dest is not None, op
        dkey = op.dest.key
        if op.kind is not IPVSOpKind.DEL_DEST:
            if self._daemons and (6 if ":" in op.dest.address else 4) != key.family:
                # ip_vs_genl_set_cmd: the sync protocol cannot carry mixed families
                raise InvalidArgument(f"{key}: a sync daemon runs, no mixed-family destination")
            _check_dest(key, op.dest)
        if op.kind is IPVSOpKind.ADD_DEST:
            if dkey in svc.dests:
                raise AlreadyExists(f"{key}: destination {dkey} exists")
            svc.dests[dkey] = LiveDestination(dest_attributes(op.dest))
        elif op.kind is IPVSOpKind.EDIT_DEST:
            live = svc.dests.get(dkey)
            if live is None:
                raise NotFound(f"{key}: no destination {dkey}")
            svc.dests[dkey] = live._replace(dest=dest_attributes(op.dest))
        elif op.kind is IPVSOpKind.DEL_DEST and svc.dests.pop(dkey, None) is None:
            raise NotFound(f"{key}: no destination {dkey}")

    # test helpers ---------------------------------------------------------------------
    def set_connections(
        self, key: ServiceKey, dest: tuple[str, int], active: int, inactive: int = 0
    ) -> None:
        """The destination holds `active` established and `inactive` closing entries (in the
        counts and in the connection table, from made-up clients in 198.18.0.0/15)."""
        live = self._services[key].dests[dest]
        self._services[key].dests[dest] = live._replace(
            active_conns=active, inactive_conns=inactive
        )
        mine = (key.protocol.upper() or "TCP", dest)
        self.connection_table = [
            c
            for c in self.connection_table
            if (c.protocol, (c.destination, c.destination_port)) != mine
        ]
        v6 = key.family == 6
        for i in range(active + inactive):
            if key.protocol == "udp":
                state, expires = "UDP", 300.0
            elif i < active:
                state, expires = "ESTABLISHED", 900.0
            else:
                state, expires = "FIN_WAIT", 120.0
            client = f"2001:db8:ffff::{i + 1:x}" if v6 else f"198.18.{i // 250}.{i % 250 + 1}"
            self.connection_table.append(
                LiveConnection(
                    protocol=mine[0],
                    client=client,
                    client_port=40000 + i % 20000,
                    virtual=key.address or ("::" if v6 else "0.0.0.0"),
                    virtual_port=key.port,
                    destination=dest[0],
                    destination_port=dest[1],
                    state=state,
                    expires=expires,
                )
            )

    def add_traffic(
        self,
        key: ServiceKey,
        dest: tuple[str, int] | None = None,
        *,
        conns: int = 0,
        inpkts: int = 0,
        outpkts: int = 0,
        inbytes: int = 0,
        outbytes: int = 0,
    ) -> None:
        """Count traffic as the kernel does (ip_vs_in_stats/ip_vs_out_stats/ip_vs_conn_stats):
        on the destination, its service and the global total at once."""
        counts = {"conns": conns, "inpkts": inpkts, "outpkts": outpkts}
        counts |= {"inbytes": inbytes, "outbytes": outbytes}
        svc = self._services[key]
        if dest is not None:
            live = svc.dests[dest]
            svc.dests[dest] = live._replace(stats=_added(live.stats, counts))
        svc.stats = _added(svc.stats, counts)
        self.total = _added(self.total, counts)

    def set_rates(
        self,
        key: ServiceKey,
        dest: tuple[str, int] | None = None,
        *,
        cps: int = 0,
        inpps: int = 0,
        outpps: int = 0,
        inbps: int = 0,
        outbps: int = 0,
    ) -> None:
        """The estimator's current rates of a service, or of one of its destinations."""
        rates = {"cps": cps, "inpps": inpps, "outpps": outpps, "inbps": inbps, "outbps": outbps}
        svc = self._services[key]
        if dest is None:
            svc.stats = svc.stats._replace(**rates)
        else:
            live = svc.dests[dest]
            svc.dests[dest] = live._replace(stats=live.stats._replace(**rates))

    def add_foreign(self, service: IPVSService, dests: Iterable[Destination] = ()) -> None:
        """Put a service there behind the agent's back (kube-proxy, a human with ipvsadm)."""
        svc = _FakeService(service_attributes(service))
        for d in dests:
            svc.dests[d.key] = LiveDestination(dest_attributes(d))
        self._services[service.key] = svc


# Every type the ipset tool knows; a kernel may lack some (KernelUnavailable, as there).
IPSET_TYPES = frozenset(
    [
        "bitmap:ip", "bitmap:ip,mac", "bitmap:port", "hash:ip", "hash:mac", "hash:ip,mac",
        "hash:net", "hash:net,net", "hash:ip,port", "hash:net,port", "hash:ip,port,ip",
        "hash:ip,port,net", "hash:ip,mark", "hash:net,port,net", "hash:net,iface", "list:set",
    ]
)  # fmt: skip
_PORT_PROTOCOLS = frozenset(["tcp", "udp", "sctp", "udplite"])


def _check_dest(key: ServiceKey, d: Destination) -> None:
    """What ip_vs_genl_set_cmd / ip_vs_add_dest / ip_vs_edit_dest refuse (Linux 6.1)."""
    family = 6 if ":" in d.address else 4
    if family != key.family and d.forward != "tunnel":
        raise InvalidArgument(f"{key}: an IPv{family} destination needs tunnel forwarding")
    if d.lower_threshold > d.upper_threshold:  # ERANGE, even with upper 0 (= no limit)
        raise InvalidArgument(f"{key}: lower threshold is higher than upper threshold")
    if d.forward == "tunnel" and d.tunnel_type == "gue" and d.tunnel_port == 0:
        raise InvalidArgument(f"{key}: tunnel port is zero")


class FakeIPSets:
    """Sets in memory. Like the kernel: entries are stored in `ipset save` form (host bits
    cleared, /32 and /128 dropped, tcp implied), a second add is AlreadyExists and deleting
    an absent entry NotFound, one entry at a time (earlier entries of a failed batch stay;
    an empty batch asks nothing, so it does not check that the set exists either)."""

    def __init__(self, unavailable_types: Iterable[str] = ()) -> None:
        self.sets: dict[str, IPSetState] = {}
        self.referenced: set[str] = set()  # names a FakeChains rule uses
        self.types = IPSET_TYPES - frozenset(unavailable_types)

    def list(self, prefix: str) -> dict[str, IPSetState]:
        return {n: s for n, s in self.sets.items() if n.startswith(prefix)}

    def create(self, name: str, set_type: str, family: str) -> None:
        if name in self.sets:
            raise AlreadyExists(f"ipset {name} exists")
        if len(name) > 31:
            raise InvalidArgument(f"ipset name {name!r} is longer than 31 characters")
        if family not in ("inet", "inet6"):
            raise InvalidArgument(f"ipset {name}: family {family!r} is not inet or inet6")
        if set_type not in self.types:
            raise KernelUnavailable(f"ipset type {set_type} is not available in this kernel")
        self.sets[name] = IPSetState(name, set_type, family, frozenset())

    def destroy(self, name: str) -> None:
        if name not in self.sets:
            raise NotFound(f"ipset {name} does not exist")
        if name in self.referenced:
            raise KernelError(f"ipset {name} is in use by a kernel component")
        del self.sets[name]

    def add(self, name: str, entries: Iterable[str]) -> None:
        for entry in entries:
            s = self._get(name)
            normal = _normal_entry(s, entry)
            if normal in s.entries:
                raise AlreadyExists(f"ipset {name}: entry {entry} is already in the set")
            self.sets[name] = s._replace(entries=s.entries | {normal})

    def delete(self, name: str, entries: Iterable[str]) -> None:
        for entry in entries:
            s = self._get(name)
            normal = _normal_entry(s, entry)
            if normal not in s.entries:
                raise NotFound(f"ipset {name}: entry {entry} is not in the set")
            self.sets[name] = s._replace(entries=s.entries - {normal})

    def _get(self, name: str) -> IPSetState:
        if name not in self.sets:
            raise NotFound(f"ipset {name} does not exist")
        return self.sets[name]


def _normal_entry(st: IPSetState, entry: str) -> str:
    """`entry` as the kernel stores it and `ipset save` prints it."""
    dims = st.set_type.partition(":")[2].split(",")
    parts = entry.split(",")
    if len(parts) != len(dims):
        raise InvalidArgument(f"ipset {st.name} ({st.set_type}): bad entry {entry!r}")
    out = []
    for dim, part in zip(dims, parts, strict=True):
        if dim in ("ip", "net"):
            try:
                net = ipaddress.ip_network(part, strict=False)
            except ValueError as exc:
                raise InvalidArgument(f"ipset {st.name}: {entry!r}: {exc}") from exc
            if (net.version == 4) != (st.family == "inet"):
                raise InvalidArgument(f"ipset {st.name} is family {st.family}; {entry!r} is not")
            host = net.prefixlen == net.max_prefixlen
            out.append(str(net.network_address) if host else str(net))
        elif dim == "port":
            proto, _, port = part.rpartition(":")
            if (proto or "tcp") not in _PORT_PROTOCOLS or not port.isdigit():
                raise InvalidArgument(f"ipset {st.name}: bad port in {entry!r}")
            out.append(f"{proto or 'tcp'}:{int(port)}")
        else:
            out.append(part)
    return ",".join(out)


class FakeChains:
    """Owned iptables chains; `canonical` is the real adapter's rewrite (`canonical_rule`,
    checked against iptables-save by the kernel tier), so both agree on what reads back."""

    def __init__(self, ipsets: FakeIPSets | None = None) -> None:
        self.chains: dict[tuple[int, str, str], ChainSpec] = {}
        self.foreign_rules: list[tuple[int, str, str, tuple[str, ...]]] = []
        self._ipsets = ipsets

    def read(self, family: int, table: str, chain: str) -> ChainSpec | None:
        return self.chains.get((family, table, chain))

    def replace(self, spec: ChainSpec) -> None:
        spec = self.canonical(spec)
        if self._ipsets is not None:
            sets = self._ipsets.sets
            for name in sorted(_sets_used([spec])):
                if name not in sets:
                    raise NotFound(f"iptables-restore: Set {name} doesn't exist")
                if sets[name].family != ("inet" if spec.family == 4 else "inet6"):
                    raise InvalidArgument(
                        f"iptables-restore: the protocol family of set {name} is "
                        f"{sets[name].family}, which is not applicable"
                    )
        self.chains[(spec.family, spec.table, spec.chain)] = spec
        self._refresh_references()

    def remove(self, family: int, table: str, chain: str, hook: str) -> None:
        self.chains.pop((family, table, chain), None)
        self._refresh_references()

    def canonical(self, spec: ChainSpec) -> ChainSpec:
        return spec._replace(rules=tuple(canonical_rule(r, spec.family) for r in spec.rules))

    def _refresh_references(self) -> None:
        if self._ipsets is not None:
            self._ipsets.referenced = _sets_used(self.chains.values())


def _sets_used(specs: Iterable[ChainSpec]) -> set[str]:
    return {
        rule[i + 1]
        for spec in specs
        for rule in spec.rules
        for i, arg in enumerate(rule[:-1])
        if arg == "--match-set"
    }


class FakeAddresses:
    """Addresses with the kernel's identity rules: IPv4 (device, address, prefix), IPv6
    (device, address); canonical text; a foreign address is never deleted (NotFound).

    Lifetimes run on `clock` (monotonic seconds; inject one to let tests move time) and
    count down like the kernel's: the remaining lifetime is the one set minus the whole
    seconds since, and the address is gone once all of it has passed."""

    def __init__(
        self,
        route_device: str | None = "eth0",
        devices: Iterable[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries: dict[tuple[str, str, int], AddressEntry] = {}
        self._route_device = route_device
        self._devices = None if devices is None else set(devices)  # None: any device exists
        self._clock = clock
        self._lifetimes: dict[tuple[str, str, int], tuple[float, int]] = {}  # key: (set at, s)
        self.links_down: set[str] = set()  # devices down or without a carrier

    def list(self) -> list[AddressEntry]:
        self._expire()
        now = self._clock()
        out = []
        for key, entry in self.entries.items():
            if key in self._lifetimes:
                since, lifetime = self._lifetimes[key]
                entry = entry._replace(lifetime=max(0, lifetime - int(now - since)))
            out.append(entry)
        return out

    def add(
        self, device: str, address: str, prefix_length: int, lifetime: int | None = None
    ) -> None:
        address = _canonical_ip(address, prefix_length)
        if lifetime is not None and not 1 <= lifetime <= MAX_ADDRESS_LIFETIME:
            raise InvalidArgument(f"address lifetime {lifetime} is out of range")
        self._check_device(device)
        self._expire()
        key = (device, address, prefix_length)
        same = [k for k in self.entries if k[:2] == key[:2]]
        present = key in self.entries or (":" in address and bool(same))
        if present and not (lifetime is not None and self._is_ours(key)):
            raise AlreadyExists(f"{address}/{prefix_length} already on {device}")
        self.entries[key] = AddressEntry(device, address, prefix_length, True)
        if lifetime is None:
            self._lifetimes.pop(key, None)
        else:
            self._lifetimes[key] = (self._clock(), lifetime)

    def delete(self, device: str, address: str, prefix_length: int) -> None:
        address = _canonical_ip(address, prefix_length)
        self._check_device(device)
        self._expire()
        entry = self.entries.get((device, address, prefix_length))
        if entry is None or not entry.owned:
            raise NotFound(f"{address}/{prefix_length} of ours is not on {device}")
        del self.entries[(device, address, prefix_length)]
        self._lifetimes.pop((device, address, prefix_length), None)

    def add_foreign(self, device: str, address: str, prefix_length: int) -> None:
        address = _canonical_ip(address, prefix_length)
        self.entries[(device, address, prefix_length)] = AddressEntry(
            device, address, prefix_length, False
        )
        self._lifetimes.pop((device, address, prefix_length), None)

    def link_up(self, device: str) -> bool:
        self._check_device(device)
        return device not in self.links_down

    def set_link(self, device: str, up: bool) -> None:
        """What `ip link set DEV down` (or a cut cable) does to link_up()."""
        (self.links_down.discard if up else self.links_down.add)(device)

    def route_device(self, address: str) -> str | None:
        """Like `ip route get fibmatch` for a local address: the device holding it."""
        address = _canonical_ip(address, 0)
        self._expire()
        held = [e.device for e in self.entries.values() if e.address == address]
        return held[0] if held else self._route_device

    def _is_ours(self, key: tuple[str, str, int]) -> bool:
        """Refreshable: this very address (prefix length included) is there and ours."""
        entry = self.entries.get(key)
        return entry is not None and entry.owned

    def _expire(self) -> None:
        now = self._clock()
        for key, (since, lifetime) in list(self._lifetimes.items()):
            if now - since >= lifetime:
                del self._lifetimes[key]
                del self.entries[key]

    def _check_device(self, device: str) -> None:
        if self._devices is not None and device not in self._devices:
            raise NotFound(f"device {device} does not exist")


def _canonical_ip(address: str, prefix_length: int) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidArgument(f"{address!r} is not an IP address") from exc
    if not 0 <= prefix_length <= ip.max_prefixlen:
        raise InvalidArgument(f"prefix length {prefix_length} does not fit {ip}")
    return str(ip)


class FakeSysctls:
    """Only the keys it was given exist, as in the kernel (net.ipv4.conf.<dev>.* too)."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        if key not in self.values:
            raise NotFound(f"sysctl {key} does not exist")
        self.values[key] = value


_FALLBACK_TUNNELS = {"tunl0": "ipip", "gre0": "gre", "ip6tnl0": "ip6tnl", "ip6gre0": "ip6gre"}


class FakeTunnels:
    def __init__(self) -> None:
        self.up: dict[str, TunnelDevice] = {}

    def list_up(self) -> list[TunnelDevice]:
        return list(self.up.values())

    def ensure(self, device: TunnelDevice) -> None:
        if _FALLBACK_TUNNELS.get(device.name) != device.kind:
            raise InvalidArgument(f"tunnel {device.name} ({device.kind}) is not a fallback device")
        if device.fou_port and device.kind not in ("ipip", "ip6tnl"):
            raise InvalidArgument(f"tunnel {device.name}: a GUE port needs ipip or ip6tnl")
        if not 0 <= device.fou_port <= 0xFFFF:
            raise InvalidArgument(f"tunnel {device.name}: port {device.fou_port} is out of range")
        self.up[device.name] = device

    def release(self, device: TunnelDevice) -> None:
        self.up.pop(device.name, None)
