"""Per-service and per-real-server series read from the IPVS table at scrape time.

`IPVSCollector` is a prometheus-client custom collector: on each scrape it takes the node's
current plan and a dump of the kernel's IPVS table (services, destinations, their counters,
rate estimates and connection counts) and turns the services the agent owns, and only those,
into `lvs_service_*` and `lvs_backend_*` samples. Nothing is stored between scrapes except
the last dump, reused for `min_interval` seconds (one second by default) so a burst of
scrapers costs one netlink dump.

The dump comes from a table the caller opens for this purpose alone (`dump`), never from
the agent loop's adapter: the health server answers each request in its own thread, and the
loop's socket and cached view belong to the loop. Dumps are serialised by a lock, so one
netlink socket is never used by two threads at once.

The kernel's counters (conns, packets, bytes) are exported as counters although `ipvsadm -Z`
resets them and a service deleted and added again starts from zero: Prometheus' rate() and
increase() treat a decrease as a reset. The rate estimates (per second, the kernel's
estimator over the last seconds) are gauges.

This module knows the IPVS table only by shape (the `...Like` protocols below match
kernel.ipvs.LiveService and friends): the health and metrics plumbing imports no kernel code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..compiler.plan import Destination, IPVSService, NodePlan, ServiceKey

__all__ = [
    "BACKEND_LABELS",
    "BACKEND_STATES",
    "SERVICE_LABELS",
    "IPVSCollector",
    "key_labels",
    "service_labels",
]

log = logging.getLogger("lvs_operator.observability")

SERVICE_LABELS = ("namespace", "name", "protocol", "address", "port")
BACKEND_LABELS = (*SERVICE_LABELS, "backend_address", "backend_port")
# Values of lvs_backend_state's `state` label. Health checks will add theirs here (e.g.
# "failing"); one sample per state, 1 for the state the real server is in.
BACKEND_STATES = ("ready", "draining")

# (stat field, series suffix, help): the kernel's counters ...
_COUNTERS = (
    ("conns", "connections_total", "Connections scheduled"),
    ("inpkts", "incoming_packets_total", "Packets from clients"),
    ("outpkts", "outgoing_packets_total",
     "Packets from real servers back to clients (NAT only: DR and TUN replies bypass the "
     "director)"),
    ("inbytes", "incoming_bytes_total", "Bytes from clients"),
    ("outbytes", "outgoing_bytes_total",
     "Bytes from real servers back to clients (NAT only)"),
)
# ... and its rate estimates
_RATES = (
    ("cps", "connections_per_second", "Connections per second"),
    ("inpps", "incoming_packets_per_second", "Packets per second from clients"),
    ("outpps", "outgoing_packets_per_second", "Packets per second back to clients"),
    ("inbps", "incoming_bytes_per_second", "Bytes per second from clients"),
    ("outbps", "outgoing_bytes_per_second", "Bytes per second back to clients"),
)
_COUNTER_NOTE = (" since the service was added or last zeroed (`ipvsadm -Z`; a reset shows "
                 "as a counter reset)")
_RATE_NOTE = " (the kernel's rate estimator, `ipvsadm -L --rate`)"


class StatsLike(Protocol):
    @property
    def conns(self) -> int: ...
    @property
    def inpkts(self) -> int: ...
    @property
    def outpkts(self) -> int: ...
    @property
    def inbytes(self) -> int: ...
    @property
    def outbytes(self) -> int: ...
    @property
    def cps(self) -> int: ...
    @property
    def inpps(self) -> int: ...
    @property
    def outpps(self) -> int: ...
    @property
    def inbps(self) -> int: ...
    @property
    def outbps(self) -> int: ...


class LiveDestinationLike(Protocol):
    @property
    def dest(self) -> Destination: ...
    @property
    def active_conns(self) -> int: ...
    @property
    def inactive_conns(self) -> int: ...
    @property
    def persistent_conns(self) -> int: ...
    @property
    def stats(self) -> StatsLike: ...


class LiveServiceLike(Protocol):
    @property
    def service(self) -> IPVSService: ...
    @property
    def destinations(self) -> Sequence[LiveDestinationLike]: ...
    @property
    def stats(self) -> StatsLike: ...


def service_labels(service: IPVSService) -> tuple[str, str, str, str, str]:
    """(namespace, name, protocol, address, port) of a planned service. The owner is the
    VirtualService's `namespace/name`; a firewall-mark service has protocol `fwmark`,
    address `fwmark:N` (`fwmark:N:ipv6` for IPv6) and port 0."""
    return key_labels(service.owner, service.key)


def key_labels(owner: str, key: ServiceKey) -> tuple[str, str, str, str, str]:
    """service_labels() from the owner ("namespace/name") and the service's key."""
    namespace, sep, name = owner.partition("/")
    if not sep:
        namespace, name = "", owner
    if key.fwmark:
        address = f"fwmark:{key.fwmark}" + (":ipv6" if key.family == 6 else "")
        return namespace, name, "fwmark", address, "0"
    return namespace, name, key.protocol, key.address, str(key.port)


class _Families:
    """The families of one scrape, filled service by service."""

    def __init__(self, backends: bool) -> None:
        s, b = list(SERVICE_LABELS), list(BACKEND_LABELS)
        self.service_counters = [
            (f, CounterMetricFamily(f"lvs_service_{n}", f"{h} by this IPVS service"
                                    f"{_COUNTER_NOTE}.", labels=s))
            for f, n, h in _COUNTERS
        ]
        self.service_rates = [
            (f, GaugeMetricFamily(f"lvs_service_{n}", f"{h} of this IPVS service{_RATE_NOTE}.",
                                  labels=s))
            for f, n, h in _RATES
        ]
        self.service_active = GaugeMetricFamily(
            "lvs_service_active_connections",
            "Established connections of this IPVS service (ActiveConn summed over its real "
            "servers).", labels=s)
        self.service_inactive = GaugeMetricFamily(
            "lvs_service_inactive_connections",
            "Connections of this IPVS service in any other state (InActConn summed over its "
            "real servers).", labels=s)
        self.backends = backends
        if not backends:
            return
        self.backend_counters = [
            (f, CounterMetricFamily(f"lvs_backend_{n}", f"{h} by this real server of an IPVS "
                                    f"service{_COUNTER_NOTE}.", labels=b))
            for f, n, h in _COUNTERS
        ]
        self.backend_active = GaugeMetricFamily(
            "lvs_backend_active_connections",
            "Established connections to this real server (ipvsadm ActiveConn).", labels=b)
        self.backend_inactive = GaugeMetricFamily(
            "lvs_backend_inactive_connections",
            "Connections to this real server in any other state, e.g. TIME_WAIT (ipvsadm "
            "InActConn).", labels=b)
        self.backend_persistent = GaugeMetricFamily(
            "lvs_backend_persistent_connections",
            "Persistence templates pointing at this real server (persistent services only).",
            labels=b)
        self.backend_weight = GaugeMetricFamily(
            "lvs_backend_weight",
            "The real server's weight in the kernel (0 while draining).", labels=b)
        self.backend_state = GaugeMetricFamily(
            "lvs_backend_state",
            "1 for the state the real server is in, 0 for the others: ready (takes new "
            "connections), draining (weight 0: terminating in its EndpointSlice, draining "
            "RealServer, or gone from the plan and waiting for its connections to end).",
            labels=[*b, "state"])

    def add_service(self, labels: list[str], live: LiveServiceLike,
                    planned: dict[tuple[str, int], Destination]) -> None:
        stats = live.stats
        for field, family in self.service_counters:
            family.add_metric(labels, float(getattr(stats, field)))
        for field, gauge in self.service_rates:
            gauge.add_metric(labels, float(getattr(stats, field)))
        active = inactive = 0
        for ld in live.destinations:
            active += ld.active_conns
            inactive += ld.inactive_conns
            if self.backends:
                self._add_backend(labels, ld, planned.get(ld.dest.key))
        self.service_active.add_metric(labels, float(active))
        self.service_inactive.add_metric(labels, float(inactive))

    def _add_backend(self, service: list[str], ld: LiveDestinationLike,
                     planned: Destination | None) -> None:
        labels = [*service, ld.dest.address, str(ld.dest.port)]
        stats = ld.stats
        for field, family in self.backend_counters:
            family.add_metric(labels, float(getattr(stats, field)))
        self.backend_active.add_metric(labels, float(ld.active_conns))
        self.backend_inactive.add_metric(labels, float(ld.inactive_conns))
        self.backend_persistent.add_metric(labels, float(ld.persistent_conns))
        self.backend_weight.add_metric(labels, float(ld.dest.weight))
        state = "draining" if planned is None or planned.draining else "ready"
        for value in BACKEND_STATES:
            self.backend_state.add_metric([*labels, value], 1.0 if value == state else 0.0)

    def all(self) -> Iterator[Metric]:
        yield from (f for _, f in self.service_counters)
        yield from (g for _, g in self.service_rates)
        yield self.service_active
        yield self.service_inactive
        if self.backends:
            yield from (f for _, f in self.backend_counters)
            yield from (self.backend_active, self.backend_inactive, self.backend_persistent,
                        self.backend_weight, self.backend_state)


class IPVSCollector:
    """lvs_service_* and lvs_backend_* from the kernel, for the services of `plan()`.

    `dump` reads the IPVS table (its own netlink socket: see the module docstring); `plan`
    returns the plan the agent keeps the kernel at (None before the first); `owns` says
    whether the agent created a service (a foreign service with a planned VIP:port is not
    reported under the VirtualService's name). `backends=False` leaves out every
    lvs_backend_* series (at very large scale: 11 series per real server)."""

    def __init__(
        self,
        dump: Callable[[], Iterable[LiveServiceLike]],
        plan: Callable[[], NodePlan | None],
        *,
        owns: Callable[[ServiceKey], bool] | None = None,
        backends: bool = True,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dump = dump
        self._plan = plan
        self._owns = owns
        self.backends = backends
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[ServiceKey, LiveServiceLike] = {}
        self._read_at: float | None = None  # clock() of the last dump attempt
        self._ok: bool | None = None  # None: never read
        self._seconds = 0.0
        self.dumps = 0  # how many times the table was read (tests)

    def describe(self) -> Iterable[Metric]:
        return [*_Families(self.backends).all(), *self._meta(None, 0.0)]

    def _read(self) -> tuple[dict[ServiceKey, LiveServiceLike], bool | None, float]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.min_interval:
                began = time.perf_counter()
                try:
                    live = {ls.service.key: ls for ls in self._dump()}
                except Exception as exc:  # a scrape must never fail on the kernel
                    if self._ok is not False:
                        log.warning("reading the IPVS table for /metrics failed: %s", exc)
                    self._live, self._ok = {}, False
                else:
                    if self._ok is False:
                        log.info("reading the IPVS table for /metrics works again")
                    self._live, self._ok = live, True
                self.dumps += 1
                self._seconds = time.perf_counter() - began
                self._read_at = self._clock()
            return self._live, self._ok, self._seconds

    @staticmethod
    def _meta(ok: bool | None, seconds: float) -> list[Metric]:
        up = GaugeMetricFamily(
            "lvs_agent_ipvs_up",
            "1 when the last read of the IPVS table for these metrics succeeded, 0 when it "
            "failed (then no lvs_service_*/lvs_backend_* samples); absent while the plan has "
            "no IPVS service.")
        took = GaugeMetricFamily(
            "lvs_agent_ipvs_read_duration_seconds",
            "How long the last read of the IPVS table for these metrics took (a netlink dump "
            "of every service and real server; reused for a second).")
        if ok is not None:
            up.add_metric([], 1.0 if ok else 0.0)
            took.add_metric([], seconds)
        return [up, took]

    def collect(self) -> Iterator[Metric]:
        families = _Families(self.backends)
        plan = self._plan()
        services = plan.director.services if plan is not None else ()
        ok: bool | None = None
        seconds = 0.0
        if services:
            live, ok, seconds = self._read()
            owns = self._owns
            for svc in services:
                current = live.get(svc.key)
                if current is None or (owns is not None and not owns(svc.key)):
                    continue
                planned = {d.key: d for d in svc.destinations} if self.backends else {}
                families.add_service(list(service_labels(svc)), current, planned)
        yield from families.all()
        yield from self._meta(ok, seconds)
