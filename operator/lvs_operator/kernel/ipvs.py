"""The IPVS table: services and destinations, read in one dump and changed in batches.

Identity and attributes are separate (kube-proxy's lesson): a service is identified by its
`ServiceKey`, a destination by (address, port) within its service; everything else is an
attribute an edit can change in place without dropping connections.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ..compiler.plan import Destination, IPVSService
from .errors import KernelError

__all__ = [
    "IPVSOp",
    "IPVSOpKind",
    "IPVSTable",
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


class LiveDestination(NamedTuple):
    dest: Destination  # as the kernel reports it: draining=False, source=""
    active_conns: int = 0
    inactive_conns: int = 0
    persistent_conns: int = 0


class LiveService(NamedTuple):
    service: IPVSService  # destinations=() and owner="": the kernel knows neither
    destinations: tuple[LiveDestination, ...] = ()


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
