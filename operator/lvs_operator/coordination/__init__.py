"""Coordination between processes over Kubernetes Leases: the client-agnostic core of leader
election, shared by the operator (which replica is active) and the node agent (which director
holds an HA VIP). Imports no Kubernetes client, no kopf and no kernel code: the API is a
`LeaseClient` the caller passes in."""

from .lease import (
    JITTER,
    Elector,
    LeaseClient,
    LeaseConflict,
    LeaseError,
    LeaseRecord,
    Outcome,
    check_timings,
    micro_time,
)

__all__ = [
    "JITTER",
    "Elector",
    "LeaseClient",
    "LeaseConflict",
    "LeaseError",
    "LeaseRecord",
    "Outcome",
    "check_timings",
    "micro_time",
]
