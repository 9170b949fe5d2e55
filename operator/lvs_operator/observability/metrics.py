"""The Prometheus series `lvs-operator` and `lvs-agent` export, in one place: their names,
types, labels and help texts are an interface (dashboards and alerts are written against
them, docs/metrics.md lists every one), so they are defined here and in ipvs_metrics.py (the
series read from the IPVS table at scrape time) and nowhere else.

Each process builds its own `CollectorRegistry` (never prometheus_client's global default):
tests run several operators and agents in one interpreter, and a process exports exactly
what it defines here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..compiler.plan import NodePlan, ServiceKey
from .ipvs_metrics import BACKEND_LABELS, SERVICE_LABELS, IPVSCollector, LiveServiceLike

__all__ = [
    "COMPILE_BUCKETS",
    "OPERATION_KINDS",
    "RECONCILE_BUCKETS",
    "AgentMetrics",
    "OperatorMetrics",
    "build_version",
]

# No `<counter>_created` series: they double the series count and no dashboard reads them.
# (A process-wide switch of prometheus_client; these processes export only these series.)
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: a cached pass of a small plan takes milliseconds, a full pass of 10,000 services
# several seconds (tens under emulation).
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds: an incremental compile of one changed EndpointSlice takes a millisecond or two, the
# first compile after the initial list of 10,000 VirtualServices tens of seconds.
COMPILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0)

# The kernel changes a reconcile pass makes, as `layer/verb` (agent/reconcile.py's Step):
# lvs_agent_operations_total and lvs_agent_drift_repaired_total start at 0 for each.
OPERATION_KINDS = (
    "sysctl/set", "sysctl/restore", "tunnel/ensure", "tunnel/release",
    "address/add", "address/take", "address/delete", "sync/start", "sync/stop",
    "ipset/create", "ipset/add", "ipset/delete", "ipset/destroy",
    "chain/replace", "chain/remove",
    "ipvs/add-service", "ipvs/edit-service", "ipvs/del-service",
    "ipvs/add-dest", "ipvs/edit-dest", "ipvs/del-dest",
)


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
        self.compile_duration = Histogram(
            "lvs_operator_compile_duration_seconds",
            "Duration of the compile step of a publisher round that had something to compile "
            "(the changed VirtualServices recompiled, the changed node plans assembled and cut "
            "into shards), by kind: full (the first round after the initial list: every "
            "object) or incremental.",
            ["kind"],
            buckets=COMPILE_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "lvs_operator_build_info",
            "Always 1; the version label is the running lvs-operator's version.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version or build_version()).set(1)
        self._conditions = _ConditionCounts()
        r.register(self._conditions)

    def set_virtualservices(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """The lvs_operator_virtualservices samples: (condition, status, reason) -> how many
        VirtualServices have that condition with that status and reason (replaces the last
        counts at once, so a scrape never sees half of them)."""
        self._conditions.counts = dict(counts)


class _ConditionCounts:
    """lvs_operator_virtualservices, from a snapshot the publisher replaces each round."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "lvs_operator_virtualservices",
            "VirtualServices by status condition (Accepted, Programmed, Ready, Degraded, "
            "Healthy), its status (True/False/Unknown) and reason, e.g. condition=Accepted,status=False,"
            "reason=PortConflict: VIP:port conflicts. Written by the leader only.",
            labels=["condition", "status", "reason"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for (condition, status, reason), count in sorted(self.counts.items()):
            family.add_metric([condition, status, reason], float(count))
        yield family


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
        self.operations = Counter(
            "lvs_agent_operations",
            "Kernel changes made by reconcile passes (attempted; the failed ones are also in "
            "lvs_agent_errors_total), by kind: layer/verb, e.g. ipvs/add-service, "
            "ipvs/edit-dest, address/add, sysctl/set, chain/replace. Dry runs change nothing "
            "and count nothing.",
            ["kind"],
            registry=r,
        )
        self.errors = Counter(
            "lvs_agent_errors",
            "Failures reported by reconcile passes: each failed kernel change, and each failed "
            "read of the kernel (e.g. IPVS unavailable).",
            registry=r,
        )
        self.drift = Counter(
            "lvs_agent_drift_repaired",
            "Kernel changes no plan change asked for: what a timer (full) pass of an "
            "unchanged plan, after a pass without failures, had to repair (someone ran "
            "ipvsadm -D, deleted a VIP, changed a weight ...), by kind as in "
            "lvs_agent_operations_total. Drains ending (an idle or overdue destination "
            "deleted) are not drift.",
            ["kind"],
            registry=r,
        )
        for kind in OPERATION_KINDS:
            self.operations.labels(kind)
            self.drift.labels(kind)
        self.build_info = Gauge(
            "lvs_agent_build_info",
            "Always 1; the version label is the running lvs-agent's version.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version or build_version()).set(1)

        self._ipvs: IPVSCollector | None = None
        self._health: HealthCollector | None = None

    def observe_pass(self, *, full: bool, seconds: float, failed: bool,
                     generation: int | None, operations: Iterable[str] = (), errors: int = 0,
                     drift: Iterable[str] = ()) -> None:
        """After a pass: its kind and duration; `operations` and `drift` are the kinds
        (layer/verb) of the changes it made and of those that repaired drift, `errors` how
        many failures it reported."""
        self.passes.labels("full" if full else "cached").inc()
        self.duration.observe(seconds)
        if failed:
            self.failures.inc()
        if generation is not None:
            self.plan_generation.set(generation)
        for kind, n in _tally(operations).items():
            self.operations.labels(kind).inc(n)
        for kind, n in _tally(drift).items():
            self.drift.labels(kind).inc(n)
        if errors:
            self.errors.inc(errors)

    def watch_ipvs(
        self,
        dump: Callable[[], Iterable[LiveServiceLike]],
        plan: Callable[[], NodePlan | None],
        *,
        owns: Callable[[ServiceKey], bool] | None = None,
        backends: bool = True,
        min_interval: float = 1.0,
    ) -> IPVSCollector:
        """Export lvs_service_* (and with `backends`, lvs_backend_*) from the kernel at
        scrape time: `dump` must read a table opened for the metrics alone (see
        observability/ipvs_metrics.py). Once per registry."""
        if self._ipvs is not None:
            raise RuntimeError("the IPVS collector is already registered")
        self._ipvs = IPVSCollector(dump, plan, owns=owns, backends=backends,
                                   min_interval=min_interval)
        self.registry.register(self._ipvs)
        return self._ipvs


    def watch_health(
        self,
        servers: Callable[[], Iterable[tuple[tuple[str, ...], bool, int]]],
        services: Callable[[], Iterable[tuple[tuple[str, ...], bool, bool]]],
    ) -> HealthCollector:
        """Export the health checks' verdicts at scrape time: `servers()` gives (backend
        labels, up, consecutive failures) per checked real server, `services()` (service
        labels, quorum ok, sorry server in use) per checked service. Once per registry."""
        if self._health is not None:
            raise RuntimeError("the health collector is already registered")
        self._health = HealthCollector(servers, services)
        self.registry.register(self._health)
        return self._health


class HealthCollector:
    """lvs_health_* families, read from the agent's health monitor at scrape time (the
    verdicts change between passes; a counter per transition would need the monitor's
    history, the gauges answer "which servers are out now")."""

    def __init__(
        self,
        servers: Callable[[], Iterable[tuple[tuple[str, ...], bool, int]]],
        services: Callable[[], Iterable[tuple[tuple[str, ...], bool, bool]]],
    ) -> None:
        self._servers, self._services = servers, services

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "lvs_health_backend_up",
            "1 while the health check of this real server passes (it is in rotation), 0 "
            "once it failed retries + 1 times (deleted, or weight 0 with onFailure: Inhibit).",
            labels=list(BACKEND_LABELS))
        failures = GaugeMetricFamily(
            "lvs_health_backend_consecutive_failures",
            "Failed probes of this real server in a row (0 after a success).",
            labels=list(BACKEND_LABELS))
        quorum = GaugeMetricFamily(
            "lvs_health_quorum_up",
            "1 while the live weight of this service's checked servers meets its quorum, 0 "
            "while it does not.", labels=list(SERVICE_LABELS))
        sorry = GaugeMetricFamily(
            "lvs_health_sorry_server_active",
            "1 while this service's sorry server replaces its pool (quorum lost).",
            labels=list(SERVICE_LABELS))
        for labels, ok, failed in self._servers():
            up.add_metric(list(labels), 1.0 if ok else 0.0)
            failures.add_metric(list(labels), float(failed))
        for labels, quorum_ok, sorry_active in self._services():
            quorum.add_metric(list(labels), 1.0 if quorum_ok else 0.0)
            sorry.add_metric(list(labels), 1.0 if sorry_active else 0.0)
        yield from (up, failures, quorum, sorry)


def _tally(kinds: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return counts
