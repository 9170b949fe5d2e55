"""The IPVS table: services and destinations, read in one dump and changed in batches.

Identity and attributes are separate (kube-proxy's lesson): a service is identified by its
`ServiceKey`, a destination by (address, port) within its service; everything else is an
attribute an edit can change in place without dropping connections.
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


def service_attributes(s: IPVSService) -> IPVSService:
    """What the kernel stores of a service: compare these, never the plan-only fields."""
    persistent = s.persistence_timeout > 0
    return s._replace(
        destinations=(),
        owner="",
        drain_timeout=0,
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
