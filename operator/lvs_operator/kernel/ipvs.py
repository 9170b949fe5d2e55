"""The IPVS table: services and destinations, read in one dump and changed in batches.

Identity and attributes are separate (kube-proxy's lesson): a service is identified by its
`ServiceKey`, a destination by (address, port) within its service; everything else is an
attribute an edit can change in place without dropping connections.

The table also runs the kernel's connection synchronisation daemons (`ipvsadm --start-daemon`,
`-L --daemon`, `--stop-daemon`): a master multicasts its connection entries, a backup with
the same sync id copies them into its own table, so established connections survive a
director failover. One daemon per state (master, backup) per network namespace.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ..compiler.plan import Destination, IPVSService, ServiceKey
from .errors import KernelError

__all__ = [
    "IPVSOp",
    "IPVSOpKind",
    "IPVSStats",
    "IPVSTable",
    "LiveConnection",
    "LiveDestination",
    "LiveService",
    "OpFailure",
    "SyncDaemon",
    "daemon_attributes",
    "dest_attributes",
    "service_attributes",
]


class IPVSOpKind(enum.StrEnum):
    ADD_SERVICE = "add-service"  # ipvsadm -A
    EDIT_SERVICE = "edit-service"  # ipvsadm -E (never "update": pyroute2 turns that into delete)
    DEL_SERVICE = "del-service"  # ipvsadm -D (removes its destinations too)
    ADD_DEST = "add-dest"  # ipvsadm -a
    EDIT_DEST = "edit-dest"  # ipvsadm -e
    DEL_DEST = "del-dest"  # ipvsadm -d


class IPVSOp(NamedTuple):
    kind: IPVSOpKind
    service: IPVSService  # its `destinations` are ignored by the adapter
    dest: Destination | None = None

    def __str__(self) -> str:
        what = str(self.service.key)
        if self.dest is not None:
            host = f"[{self.dest.address}]" if ":" in self.dest.address else self.dest.address
            what += f" -> {host}:{self.dest.port} w{self.dest.weight}"
        return f"{self.kind.value} {what}"


class IPVSStats(NamedTuple):
    """The kernel's counters since the last zero (`ipvsadm -L --stats`) and its rate
    estimates, per second over the last seconds (`ipvsadm -L --rate`). 64-bit values
    (IPVS_*_ATTR_STATS64 where the kernel has it)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


class LiveDestination(NamedTuple):
    dest: Destination  # as the kernel reports it: draining=False, source=""
    active_conns: int = 0
    inactive_conns: int = 0
    persistent_conns: int = 0
    stats: IPVSStats = IPVSStats()  # never part of a comparison with a plan


class LiveService(NamedTuple):
    service: IPVSService  # destinations=() and owner="": the kernel knows neither
    destinations: tuple[LiveDestination, ...] = ()
    stats: IPVSStats = IPVSStats()


class LiveConnection(NamedTuple):
    """One entry of the connection table (`ipvsadm -L -n -c`, /proc/net/ip_vs_conn)."""

    protocol: str  # TCP | UDP | SCTP | IP (a firewall-mark template)
    client: str  # address
    client_port: int
    virtual: str
    virtual_port: int
    destination: str
    destination_port: int
    state: str  # ESTABLISHED, TIME_WAIT, FIN_WAIT, NONE (templates), UDP, ...
    expires: float  # seconds until the entry expires


class OpFailure(NamedTuple):
    op: IPVSOp
    error: KernelError


class SyncDaemon(NamedTuple):
    """One IPVS sync daemon (`ipvsadm --start-daemon STATE --mcast-interface IF --syncid N
    [--sync-maxlen L --mcast-group G --mcast-port P --mcast-ttl T]`). Identity: `state`.

    0 / "" ask for the kernel's default; the kernel reports what it chose (see
    `daemon_attributes`): group 224.0.0.81, port 8848, TTL 1, and a maximum sync message
    of the interface MTU (1500 for a master, at least 1500 for a backup) less the IP and UDP
    headers."""

    state: str  # "master" | "backup"
    interface: str  # the multicast interface (IPVS_DAEMON_ATTR_MCAST_IFN), at most 15 bytes
    sync_id: int  # 0..255; a backup with sync id 0 accepts every master's messages
    sync_maxlen: int = 0  # UDP payload size of the sync messages
    mcast_group: str = ""  # IPv4 or IPv6 multicast group
    mcast_port: int = 0  # base UDP port (one per sync thread from there on)
    mcast_ttl: int = 0

    def __str__(self) -> str:
        return f"{self.state} sync daemon on {self.interface} (syncid {self.sync_id})"


SYNC_STATES = ("master", "backup")
SYNC_GROUP4 = "224.0.0.81"  # IP_VS_SYNC_GROUP
SYNC_PORT = 8848  # IP_VS_SYNC_PORT
SYNC_IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN - 1


def daemon_attributes(d: SyncDaemon, mtu: int = 1500) -> SyncDaemon:
    """What the kernel stores of a daemon started as `d` on an interface of `mtu` bytes
    (start_sync_thread, Linux 6.1): defaults filled in and the message size clamped (a
    master to 1..65535-headers, a backup to 1024..65535-headers)."""
    v6 = ":" in d.mcast_group
    headers = (40 if v6 else 20) + 8
    backup = d.state == "backup"
    if d.sync_maxlen:
        maxlen = min(max(d.sync_maxlen, 1024 if backup else 1), 65535 - headers)
    else:
        maxlen = (min(max(mtu, 1500), 65535) if backup else 1500) - headers
    return d._replace(
        sync_maxlen=maxlen,
        mcast_group=d.mcast_group or SYNC_GROUP4,
        mcast_port=d.mcast_port or SYNC_PORT,
        mcast_ttl=d.mcast_ttl or 1,
    )


def service_attributes(s: IPVSService) -> IPVSService:
    """What the kernel stores of a service: compare these, never the plan-only fields."""
    persistent = s.persistence_timeout > 0
    return s._replace(
        destinations=(),
        owner="",
        drain_timeout=0,
        health=None,  # the agent's checker settings; the kernel has no such thing
        persistence_prefix=s.persistence_prefix if persistent else 0,
        persistence_engine=s.persistence_engine if persistent else "",
    )


def dest_attributes(d: Destination) -> Destination:
    """What the kernel stores of a destination."""
    return d._replace(draining=False, source="")


class IPVSTable(Protocol):
    """The IPVS table of one network namespace."""

    def probe(self) -> None:
        """Raise KernelUnavailable (with a message saying how to fix it) if IPVS is absent."""
        ...

    def dump(self) -> list[LiveService]:
        """Every service with its destinations and their connection counts, in any order."""
        ...

    def apply(self, ops: Sequence[IPVSOp]) -> list[OpFailure]:
        """Attempt every op in order (batched where the kernel allows) and return the ones
        that failed; never raise for a single op's failure."""
        ...

    def zero(self, service: ServiceKey | None = None) -> None:
        """Reset the counters of one service and its destinations, or of every service and
        the global ones (`ipvsadm -Z [-t|-u|-f ...]`). NotFound for an unknown service."""
        ...

    def connections(self) -> list[LiveConnection]:
        """The connection table as `ipvsadm -L -n -c` shows it (IPVS has no netlink dump of
        it: the real adapter reads /proc/net/ip_vs_conn inside the namespace)."""
        ...

    def daemons(self) -> list[SyncDaemon]:
        """The running sync daemons, master first, as the kernel reports them
        (`ipvsadm -L --daemon`; see `daemon_attributes`)."""
        ...

    def start_daemon(self, d: SyncDaemon) -> None:
        """Start a sync daemon: AlreadyExists if one of that state runs, NotFound if the
        interface does not exist in the namespace, InvalidArgument for values the kernel
        refuses (a group that is not multicast, a sync id outside 0..255, a table holding a
        destination of the other address family: the sync protocol cannot carry those)."""
        ...

    def stop_daemon(self, state: str) -> None:
        """Stop the "master" or "backup" daemon: NotFound if it is not running."""
        ...
