"""The Prometheus series `lvs-operator` and `lvs-agent` export, in one place: their names,
types, labels and help texts are an interface (dashboards and alerts are written against
them), so they are defined here and nowhere else.

Each process builds its own `CollectorRegistry` (never prometheus_client's global default):
tests run several operators and agents in one interpreter, and a process exports exactly
what it defines here.
"""

from __future__ import annotations

from importlib import metadata

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RECONCILE_BUCKETS", "AgentMetrics", "OperatorMetrics", "build_version"]

# No `<counter>_created` series: they double the series count and no dashboard reads them.
# (A process-wide switch of prometheus_client; these processes export only these series.)
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: a cached pass of a small plan takes milliseconds, a full pass of 10,000 services
# several seconds (tens under emulation).
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def build_version() -> str:
    try:
        return metadata.version("lvs-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


class OperatorMetrics:
    """lvs_operator_* series. `leader` is set by whoever decides leadership (1 without leader
    election); the counters are advanced by the publisher."""

    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leader = Gauge(
            "lvs_operator_leader",
            "1 while this replica holds the leader-election Lease and may write (always 1 "
            "without --leader-elect), 0 while it stands by.",
            registry=r,
        )
        self.publish_rounds = Counter(
            "lvs_operator_publish_rounds",
            "Publisher rounds run (each round writes every NodePlan, status and Event that "
            "changed since the previous one).",
            registry=r,
        )
        self.nodeplans_written = Counter(
            "lvs_operator_nodeplans_written",
            "NodePlans created or updated (after their shards).",
            registry=r,
        )
        self.build_info = Gauge(
            "lvs_operator_build_info",
            "Always 1; the version label is the running lvs-operator's version.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version or build_version()).set(1)


class AgentMetrics:
    """lvs_agent_* series, advanced by the agent after each reconcile pass."""

    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter(
            "lvs_agent_reconcile_passes",
            "Reconcile passes run, by kind: full (the kernel was read again: the timer's "
            "drift repair) or cached (a new plan diffed against the cached kernel view).",
            ["kind"],
            registry=r,
        )
        for kind in ("full", "cached"):
            self.passes.labels(kind)
        self.duration = Histogram(
            "lvs_agent_reconcile_duration_seconds",
            "Duration of reconcile passes (reading the kernel when full, diffing, applying).",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.plan_generation = Gauge(
            "lvs_agent_plan_generation",
            "metadata.generation of the NodePlan last applied to this node's kernel (0 before "
            "the first).",
            registry=r,
        )
        self.failures = Counter(
            "lvs_agent_reconcile_failures",
            "Reconcile passes that ended with at least one failed kernel change.",
            registry=r,
        )
        self.build_info = Gauge(
            "lvs_agent_build_info",
            "Always 1; the version label is the running lvs-agent's version.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version or build_version()).set(1)

    def observe_pass(self, *, full: bool, seconds: float, failed: bool,
                     generation: int | None) -> None:
        self.passes.labels("full" if full else "cached").inc()
        self.duration.observe(seconds)
        if failed:
            self.failures.inc()
        if generation is not None:
            self.plan_generation.set(generation)
