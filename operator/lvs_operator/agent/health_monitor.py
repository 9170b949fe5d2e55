"""The director's health checks, running: the plan's checks probed in a small thread pool, fed
to keepalived-style trackers (health.py), and read back as an overlay on the plan.

The agent's loop stays the only writer to the kernel: the monitor only decides, and
:meth:`HealthMonitor.overlay` turns its verdicts into plan data (weights, removed
destinations, the sorry server) that the same reconciler diff applies. A transition calls
``on_change`` so the loop runs a pass at once instead of at its next timer.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..api.types import (
    HealthCheck,
    HealthCheckType,
    HTTPCheck,
    OnFailure,
    Quorum,
    SorryServer,
)
from ..compiler.plan import (
    FORWARD_MASQ,
    Destination,
    HealthCheckPlan,
    HealthPath,
    IPVSService,
    NodePlan,
    ServiceKey,
    health_path_of,
    is_health_path,
)
from ..kernel.netns import entered
from .health import EventKind, HealthEvent, HealthTracker
from .probes import ProbeResult, http_check, source_toward, tcp_check
from .state import DrainKey

__all__ = [
    "HealthMonitor",
    "HealthOverlay",
    "ProbeVia",
    "ServerReport",
    "apply_health",
    "health_check_of",
]

log = logging.getLogger("lvs_operator.agent.health")

ServerKey = tuple[str, int]  # destination address, port


@dataclass(frozen=True, slots=True)
class ProbeVia:
    """A DR/TUN server's probe goes to the VIP with its health-path service's mark."""

    vip: str
    mark: int


Probe = Callable[[HealthCheckPlan, str, int, "ProbeVia | None"], ProbeResult]


def health_check_of(p: HealthCheckPlan) -> HealthCheck:
    """The API form the tracker reads, from the plan's form."""
    sorry = SorryServer(address=p.sorry_address, port=p.sorry_port or None) if p.sorry_address else None
    http = None
    if p.type == HealthCheckType.HTTP.value:
        http = HTTPCheck(path=p.http_path, host=p.http_host or None,
                         expected_status_codes=p.http_status, digest=p.http_digest or None)
    return HealthCheck(
        type=HealthCheckType(p.type),
        port=p.port or None,
        connect_timeout_seconds=p.timeout,
        retries=p.retries,
        delay_before_retry_seconds=p.delay_before_retry,
        interval_seconds=p.interval,
        on_failure=OnFailure.INHIBIT if p.inhibit else OnFailure.REMOVE,
        http=http,
        quorum=Quorum(minimum=p.quorum, hysteresis=p.hysteresis, sorry_server=sorry),
    )


def run_probe(p: HealthCheckPlan, address: str, port: int,
              via: ProbeVia | None = None) -> ProbeResult:
    """One TCP_CHECK or HTTP_GET of a real server, bounded by the check's timeout; with `via`,
    to the VIP along the server's forwarding path, from this director's own address."""
    target = p.port or port
    to, mark, source = address, None, None
    if via is not None:
        try:
            source = source_toward(address)
        except OSError as e:
            return ProbeResult(False, f"no route to {address}: {e.strerror or e}", 0.0,
                               local_error=True)
        to, mark = via.vip, via.mark
    if p.type == HealthCheckType.HTTP.value:
        result = http_check(
            to,
            target,
            path=p.http_path,
            expected_status=p.http_status,
            digest=p.http_digest or None,
            host=p.http_host or None,
            timeout=p.timeout,
            mark=mark,
            source=source,
        )
    else:
        result = tcp_check(to, target, timeout=p.timeout, mark=mark, source=source)
    if via is None:
        return result
    return dataclasses.replace(result, detail=f"{result.detail} (via VIP {via.vip}:{target}, "
                                              f"mark {via.mark:#x})")


@dataclass(frozen=True, slots=True)
class ServerReport:
    """One checked real server, for status, Events and metrics."""

    service: ServiceKey
    owner: str  # namespace/name of the VirtualService
    real_server: str  # namespace/name of the RealServer the destination came from
    address: str
    port: int
    up: bool
    checked: bool
    consecutive_failures: int
    detail: str
    since: float  # monotonic time of the last change


@dataclass(frozen=True, slots=True)
class HealthOverlay:
    """What the checks say, per service: the weight each checked destination should have
    (None: no destination) and whether the sorry server replaces the pool."""

    weights: Mapping[ServiceKey, Mapping[ServerKey, int | None]]
    sorry: frozenset[ServiceKey]


def apply_health(plan: NodePlan, overlay: HealthOverlay) -> tuple[NodePlan, frozenset[DrainKey]]:
    """The plan as the checks want it, and the destinations to delete at once (not drain):
    a server that failed its checks, or live servers set aside while the sorry server serves
    (keepalived removes both; with inhibit_on_failure they stay at weight 0 instead)."""
    if not overlay.weights and not overlay.sorry:
        return plan, frozenset()
    dead: set[DrainKey] = set()
    services: list[IPVSService] = []
    changed = False
    for svc in plan.director.services:
        weights = overlay.weights.get(svc.key)
        if svc.health is None or (weights is None and svc.key not in overlay.sorry):
            services.append(svc)
            continue
        dests: list[Destination] = []
        for d in svc.destinations:
            w = weights.get(d.key, d.weight) if weights is not None and svc.checked(d) else d.weight
            if w is None:
                dead.add((svc.key, d.address, d.port))
            elif w != d.weight:
                dests.append(d._replace(weight=w))
            else:
                dests.append(d)
        h = svc.health
        if h.sorry_address:
            sorry_key = (svc.key, h.sorry_address, h.sorry_port or svc.key.port)
            if svc.key in overlay.sorry:
                forward = svc.destinations[0].forward if svc.destinations else FORWARD_MASQ
                sorry = Destination(*sorry_key[1:], forward, 1, source="sorry server")
                dests = [d for d in dests if d.key != sorry.key] + [sorry]
                dead.discard(sorry_key)
            elif all(d.key != sorry_key[1:] for d in svc.destinations):
                dead.add(sorry_key)  # quorum is back: the sorry server goes at once
        new = svc._replace(destinations=tuple(dests))
        changed = changed or new != svc
        services.append(new)
    if not changed:
        return plan, frozenset(dead)
    director = plan.director._replace(services=tuple(services))
    return plan._replace(director=director), frozenset(dead)


class _Service:
    def __init__(self, svc: IPVSService) -> None:
        assert svc.health is not None
        self.plan = svc.health
        self.owner = svc.owner
        self.configured: dict[ServerKey, int] = {}
        self.sources: dict[ServerKey, str] = {}  # namespace/name of each server's RealServer
        self.via: dict[ServerKey, ProbeVia] = {}  # DR/TUN servers: probed through the VIP
        self.tracker: HealthTracker[ServerKey] = HealthTracker(health_check_of(svc.health))

    def set(self, svc: IPVSService, now: float,
            marks: Mapping[HealthPath, int]) -> list[HealthEvent[ServerKey]]:
        self.owner = svc.owner
        self.via = {}
        for d in svc.destinations:
            path = health_path_of(svc, d)
            if path is not None and path in marks:
                self.via[d.key] = ProbeVia(svc.key.address, marks[path])
        configured = {d.key: d.weight for d in svc.destinations if svc.checked(d)}
        self.configured = configured
        self.sources = {d.key: d.source.removeprefix("RealServer ")
                        for d in svc.destinations if svc.checked(d)}
        return self.tracker.set_servers(configured, now)


class HealthMonitor:
    """Runs the checks of one node's plan. ``update(plan)`` from the agent loop, ``overlay()``
    before each pass; probes run on ``workers`` threads inside ``netns``."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_event: Callable[[ServiceKey, str, HealthEvent[ServerKey]], None] | None = None,
        probe: Probe = run_probe,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 16,
    ) -> None:
        self._netns = netns
        self._on_change = on_change
        self._on_event = on_event
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._services: dict[ServiceKey, _Service] = {}
        self._in_flight: set[tuple[ServiceKey, ServerKey]] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "lvs-health")
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- configuration (agent loop)

    def update(self, plan: NodePlan) -> None:
        """Track exactly the checked services of ``plan``; unchanged checks keep their state."""
        now = self._clock()
        events: list[tuple[ServiceKey, str, HealthEvent[ServerKey]]] = []
        with self._lock:
            wanted = {s.key: s for s in plan.director.services if s.health is not None}
            marks = {HealthPath(s.key.family, d.address, d.forward, d.tunnel_type,
                                d.tunnel_port, d.tunnel_checksum): s.key.fwmark
                     for s in plan.director.services if is_health_path(s.key)
                     for d in s.destinations}
            for key in [k for k in self._services if k not in wanted]:
                del self._services[key]
            for key, svc in wanted.items():
                current = self._services.get(key)
                if current is None or current.plan != svc.health:
                    current = self._services[key] = _Service(svc)
                events.extend((key, svc.owner, e) for e in current.set(svc, now, marks))
        self._emit(events)
        self._wake.set()

    @property
    def active(self) -> bool:
        with self._lock:
            return bool(self._services)

    # ---- results (agent loop, status, metrics)

    def overlay(self) -> HealthOverlay:
        with self._lock:
            weights = {k: s.tracker.weights() for k, s in self._services.items()}
            sorry = frozenset(k for k, s in self._services.items() if s.tracker.sorry_active)
        return HealthOverlay(weights, sorry)

    def report(self) -> list[ServerReport]:
        out = []
        with self._lock:
            for key, s in self._services.items():
                for server in s.tracker.servers():
                    st = s.tracker.state(server)
                    out.append(ServerReport(key, s.owner, s.sources.get(server, ""), server[0],
                                            server[1], st.up, st.checked,
                                            st.consecutive_failures, st.last_detail,
                                            st.last_change))
        return out

    def quorum(self) -> dict[ServiceKey, tuple[bool, bool]]:
        """Per service: (quorum ok, sorry server in use)."""
        with self._lock:
            return {k: (s.tracker.quorum_ok, s.tracker.sorry_active)
                    for k, s in self._services.items()}

    # ---- running

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lvs-health-sched",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stopping:
            delay = self.tick()
            self._wake.wait(timeout=delay)
            self._wake.clear()

    def tick(self) -> float:
        """Start every due probe; seconds until the next one is due (at most 1)."""
        now = self._clock()
        start: list[tuple[ServiceKey, HealthCheckPlan, ServerKey, ProbeVia | None]] = []
        nxt = now + 1.0
        with self._lock:
            for key, s in self._services.items():
                for server in s.tracker.due(now):
                    if (key, server) in self._in_flight:
                        continue
                    self._in_flight.add((key, server))
                    s.tracker.postpone(server, now + s.plan.timeout + 1)
                    start.append((key, s.plan, server, s.via.get(server)))
                due = s.tracker.next_due()
                if due is not None:
                    nxt = min(nxt, due)
        for key, check, server, via in start:
            try:
                self._pool.submit(self._probe_one, key, check, server, via)
            except RuntimeError:  # shut down
                return 1.0
        return max(0.01, nxt - self._clock())

    def _probe_one(self, key: ServiceKey, check: HealthCheckPlan, server: ServerKey,
                   via: ProbeVia | None) -> None:
        try:
            with entered(self._netns):
                result = self._probe(check, server[0], server[1], via)
        except Exception as exc:  # a bug or a missing namespace: no verdict on the server
            result = ProbeResult(False, f"probe could not run: {exc}", 0.0, local_error=True)
        self.record(key, check, server, result)

    def record(self, key: ServiceKey, check: HealthCheckPlan, server: ServerKey,
               result: ProbeResult) -> None:
        """Feed one probe result (from the pool, or a test)."""
        now = self._clock()
        with self._lock:
            self._in_flight.discard((key, server))
            s = self._services.get(key)
            if s is None or s.plan != check:
                return  # the check changed while the probe ran
            owner = s.owner
            if result.local_error:
                s.tracker.skip(server, now, result.detail)
                events: list[HealthEvent[ServerKey]] = []
            else:
                events = s.tracker.record(server, result.ok, now, result.detail)
        self._emit([(key, owner, e) for e in events])
        self._wake.set()

    def _emit(self, events: list[tuple[ServiceKey, str, HealthEvent[ServerKey]]]) -> None:
        if not events:
            return
        for key, owner, e in events:
            where = f"{e.server[0]}:{e.server[1]}" if e.server is not None else ""
            level = logging.INFO if e.kind in (EventKind.SERVER_UP,
                                               EventKind.QUORUM_REGAINED) else logging.WARNING
            log.log(level, "%s %s %s %s", owner, key, e.kind.value,
                    f"{where} {e.detail}".strip(),
                    extra={"service": str(key), "virtualService": owner,
                           "event": e.kind.value, "server": where})
            if self._on_event is not None:
                self._on_event(key, owner, e)
        self._on_change()
