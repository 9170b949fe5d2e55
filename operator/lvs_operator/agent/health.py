"""keepalived's checker semantics for one virtual service, as a pure state machine.

No I/O and no clock of its own: the caller passes ``now`` (seconds, any monotonic origin) to
every call, asks :meth:`HealthTracker.due` which servers need a probe, runs the probes
(``probes.py``, in a thread pool), and feeds each result back with :meth:`HealthTracker.record`.
:meth:`HealthTracker.weights` then says what each real server's IPVS destination should be, and
:attr:`HealthTracker.sorry_active` whether the sorry server replaces them.

What follows keepalived, read in acassen/keepalived at v2.4.3-30-g9cbce3e2 (the paths below are
inside ``keepalived/check/``):

- **Start.** A checker starts UP (``check_api.c`` ``queue_checker``: ``is_up = true``) and its
  retry counter starts exhausted (``check_data.c`` ``validate_check_config``:
  ``retry_it = retry``, "For non alpha mode, one failure is enough initially"), so a
  server that fails its very first
  check goes DOWN at once, with no retries. With ``alpha`` the server starts DOWN
  (``check_data.c``: ``set_checker_state(checker, false); UNSET_ALIVE(rs)``) and one success
  brings it UP. keepalived's default is no alpha, and so is ours (``alpha=False``); new servers
  are due for their first check immediately.
- **Retries.** While UP, a failed check with ``retry_it < retry`` increments ``retry_it`` and
  schedules the next attempt after ``delay_before_retry``; the failure that finds
  ``retry_it >= retry`` marks the server DOWN (``check_tcp.c`` ``tcp_epilog``; ``check_http.c``
  ``epilog`` counts ``retry_it > retry`` after incrementing, which is the same). So an UP
  server goes DOWN on exactly ``retries + 1`` consecutive failures, ``retries x
  delay_before_retry`` after the first one. A success while UP resets the counter
  (``retry_it = 0``).
- **While DOWN** a failure changes nothing and the next check comes after ``delay_loop`` (no
  retries: ``tcp_epilog`` only uses ``delay_before_retry`` when ``is_up``). One success marks the
  server UP again (``tcp_epilog``: ``is_success && !is_up`` -> ``update_svr_checker_state(UP)``).
  Divergence, on purpose: keepalived's HTTP_GET re-checks "all the URLs" after a failed URL
  succeeds (``epilog``, branch ``REGISTER_CHECKER_NEW && failed_url``), so with its single URL a
  recovering HTTP server needs two successes ``delay_loop`` apart; we have one URL per check
  and take one success, like TCP_CHECK. HTTP_GET also waits ``max(delay_before_retry,
  delay_loop)`` between checks of a DOWN server; we wait ``delay_loop`` (the same with our
  defaults).
- **Timing.** The next check is scheduled from the moment a result arrives
  (``thread_add_timer`` at the end of ``tcp_epilog``), not from when the probe started.
- **Probe that could not run** (bind or socket failure on the director's side): keepalived
  reschedules after ``delay_loop`` without counting a failure (``tcp_connect_thread``:
  "TCP socket bind failed. Rescheduling."). That is :meth:`HealthTracker.skip`.
- **Weights.** UP -> the configured weight. DOWN -> the destination is removed, or, with
  ``inhibit_on_failure``, kept at weight 0 (``ipvswrapper.c`` ``ipvs_cmd``: a DELDEST of an
  inhibited server becomes an EDITDEST with weight 0).
- **Quorum** (``ipwrapper.c``). The live weight is the sum of the configured weights of the UP
  servers (``weigh_live_realservers``). The initial state is ``sum >= quorum + hysteresis``
  (``set_quorum_states``). Then ``update_quorum_state``: threshold = ``quorum - hysteresis``
  while quorum is up, ``quorum + hysteresis`` while it is down; quorum is regained when
  ``sum >= threshold`` and lost when ``sum == 0 or sum < threshold``. keepalived clamps
  ``hysteresis`` to ``quorum - 1`` (``check_data.c`` ``validate_check_config``:
  "hysteresis %u >= quorum %u; setting hysteresis to %u"); so do we.
  Without a quorum block keepalived uses quorum 1, hysteresis 0
  (``check_data.c`` ``alloc_vs``), which makes "quorum lost" mean "no live weight"; we report
  that too, but there is no sorry server to switch to.
- **Sorry server.** It is in the pool exactly while quorum is lost (``update_quorum_state``
  adds it on loss, also at start when starting with quorum down, and deletes it on regain).
  While it is in use the live real servers are taken out too (``perform_quorum_state(vs,
  false)``, "Remove remaining alive real servers"), through the same ``ipvs_cmd``: so they are
  removed, or set to weight 0 with inhibit; individual UP/DOWN changes do not touch the pool
  until quorum returns (``perform_svr_state``: "Change only if we have quorum or no sorry
  server"), and on regain the live servers are added back.

Transitions come back from :meth:`HealthTracker.record` and :meth:`HealthTracker.set_servers`
as :class:`HealthEvent` values, each reported once, for Events, status and metrics.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from lvs_operator.api.types import HealthCheck, HealthCheckType, OnFailure, Quorum

K = TypeVar("K", bound=Hashable)

# keepalived's defaults when a virtual server has no quorum block (check_data.c alloc_vs).
_DEFAULT_QUORUM = 1
_DEFAULT_HYSTERESIS = 0


class EventKind(enum.StrEnum):
    SERVER_DOWN = "ServerDown"
    SERVER_UP = "ServerUp"
    QUORUM_LOST = "QuorumLost"
    QUORUM_REGAINED = "QuorumRegained"


@dataclass(frozen=True, slots=True)
class HealthEvent(Generic[K]):
    """One transition. ``server`` is None for the quorum events."""

    kind: EventKind
    at: float
    server: K | None = None
    detail: str = ""
    weight_sum: int | None = None
    threshold: int | None = None


@dataclass(frozen=True, slots=True)
class ServerHealth:
    """What is known about one real server."""

    up: bool
    consecutive_failures: int
    last_change: float
    last_detail: str
    checked: bool
    """Whether any probe result (success or failure) has been recorded yet."""


@dataclass(slots=True)
class _Server:
    up: bool
    retry_it: int
    failures: int
    last_change: float
    last_detail: str
    next_due: float
    checked: bool = False


class HealthTracker(Generic[K]):
    """Checker state for the real servers of one virtual service (keys: any hashable).

    ``quorum`` defaults to ``check.quorum``.
    """

    def __init__(
        self,
        check: HealthCheck,
        quorum: Quorum | None = None,
        *,
        alpha: bool = False,
    ) -> None:
        if quorum is None:
            quorum = check.quorum
        self._check = check
        self._quorum = quorum
        self._alpha = alpha
        minimum = quorum.minimum if quorum is not None else _DEFAULT_QUORUM
        hysteresis = quorum.hysteresis if quorum is not None else _DEFAULT_HYSTERESIS
        self._minimum = minimum
        self._hysteresis = min(hysteresis, minimum - 1)
        self._servers: dict[K, _Server] = {}
        self._configured: dict[K, int] = {}
        self._quorum_up: bool | None = None  # None until set_servers() first ran

    # ------------------------------------------------------------------ configuration

    @property
    def enabled(self) -> bool:
        """False for type None: nothing is probed and every server counts as UP."""
        return self._check.type is not HealthCheckType.NONE

    @property
    def hysteresis(self) -> int:
        """The hysteresis in effect (clamped to quorum - 1, like keepalived)."""
        return self._hysteresis

    def set_servers(self, configured: Mapping[K, int], now: float) -> list[HealthEvent[K]]:
        """Make the tracked set equal to ``configured`` (server -> configured weight).

        New servers start UP (DOWN with ``alpha``) and are due at once; servers no longer
        listed are forgotten. Weight changes count for quorum at once (keepalived's
        ``update_svr_wgt`` calls ``update_quorum_state``). The first call sets the initial
        quorum state and reports QuorumLost if it starts lost.
        """
        for key in list(self._servers):
            if key not in configured:
                del self._servers[key]
        for key in configured:
            if key not in self._servers:
                start_up = not (self._alpha and self.enabled)
                self._servers[key] = _Server(
                    up=start_up,
                    retry_it=self._check.retries,
                    failures=0,
                    last_change=now,
                    last_detail="",
                    next_due=now,
                )
        self._configured = {k: max(0, int(w)) for k, w in configured.items()}
        return self._update_quorum(now)

    # ------------------------------------------------------------------ scheduling

    def due(self, now: float) -> list[K]:
        """Servers whose next probe is due at ``now``, earliest first."""
        if not self.enabled:
            return []
        ready = [(s.next_due, i, k) for i, (k, s) in enumerate(self._servers.items())]
        return [k for due_at, _, k in sorted(ready) if due_at <= now]

    def next_due(self) -> float | None:
        """When the earliest probe is due (None when nothing is tracked or checks are off)."""
        if not self.enabled or not self._servers:
            return None
        return min(s.next_due for s in self._servers.values())

    def postpone(self, server: K, until: float) -> None:
        """Mark a probe as in flight: not due again before ``until`` (e.g. now + timeout).

        :meth:`record` or :meth:`skip` reschedules it properly when the result arrives.
        """
        s = self._servers.get(server)
        if s is not None:
            s.next_due = max(s.next_due, until)

    # ------------------------------------------------------------------ results

    def record(self, server: K, ok: bool, now: float, detail: str = "") -> list[HealthEvent[K]]:
        """Feed one probe result; returns the transitions it caused (possibly none).

        A result for a server that is no longer tracked is ignored.
        """
        s = self._servers.get(server)
        if s is None:
            return []
        check = self._check
        events: list[HealthEvent[K]] = []
        s.checked = True
        s.last_detail = detail
        if ok:
            s.failures = 0
            s.retry_it = 0
            s.next_due = now + check.interval_seconds
            if not s.up:
                s.up = True
                s.last_change = now
                events.append(HealthEvent(EventKind.SERVER_UP, now, server, detail))
        else:
            s.failures += 1
            if s.up and s.retry_it < check.retries:
                s.retry_it += 1
                s.next_due = now + check.delay_before_retry_seconds
            else:
                s.retry_it = 0
                s.next_due = now + check.interval_seconds
                if s.up:
                    s.up = False
                    s.last_change = now
                    events.append(HealthEvent(EventKind.SERVER_DOWN, now, server, detail))
        if events:
            events.extend(self._update_quorum(now))
        return events

    def skip(self, server: K, now: float, detail: str = "") -> None:
        """The probe could not be run (a local error): no verdict, try again after the interval."""
        s = self._servers.get(server)
        if s is not None:
            s.last_detail = detail
            s.next_due = now + self._check.interval_seconds

    # ------------------------------------------------------------------ results out

    def state(self, server: K) -> ServerHealth:
        s = self._servers[server]
        return ServerHealth(
            up=s.up,
            consecutive_failures=s.failures,
            last_change=s.last_change,
            last_detail=s.last_detail,
            checked=s.checked,
        )

    def servers(self) -> list[K]:
        return list(self._servers)

    @property
    def weight_sum(self) -> int:
        """Sum of the configured weights of the UP servers (keepalived weigh_live_realservers)."""
        return sum(self._configured.get(k, 0) for k, s in self._servers.items() if s.up)

    @property
    def quorum_ok(self) -> bool:
        return self._quorum_up is not False

    @property
    def sorry_active(self) -> bool:
        """True exactly while quorum is lost and there is a sorry server to use."""
        has_sorry = self._quorum is not None and self._quorum.sorry_server is not None
        return has_sorry and not self.quorum_ok

    def weights(self, configured: Mapping[K, int] | None = None) -> dict[K, int | None]:
        """Desired IPVS weight per tracked server; None means "no destination".

        ``configured`` overrides the weights given to :meth:`set_servers` (for the servers
        tracked here) without changing the quorum state.
        """
        base = self._configured if configured is None else configured
        inhibit = self._check.on_failure is OnFailure.INHIBIT
        gone: int | None = 0 if inhibit else None
        out: dict[K, int | None] = {}
        sorry = self.sorry_active
        for key, s in self._servers.items():
            if key not in base:
                continue
            if s.up and not sorry:
                out[key] = max(0, int(base[key]))
            else:
                out[key] = gone
        return out

    # ------------------------------------------------------------------ quorum

    def _update_quorum(self, now: float) -> list[HealthEvent[K]]:
        total = self.weight_sum
        if self._quorum_up is None:
            threshold = self._minimum + self._hysteresis
            self._quorum_up = total >= threshold
            if self._quorum_up:
                return []
            return [
                HealthEvent(
                    EventKind.QUORUM_LOST,
                    now,
                    detail=f"starting with quorum down: {total} < {threshold}",
                    weight_sum=total,
                    threshold=threshold,
                )
            ]
        if self._quorum_up:
            threshold = self._minimum - self._hysteresis
            if total == 0 or total < threshold:
                self._quorum_up = False
                return [
                    HealthEvent(
                        EventKind.QUORUM_LOST,
                        now,
                        detail=f"live weight {total} < {threshold}",
                        weight_sum=total,
                        threshold=threshold,
                    )
                ]
            return []
        threshold = self._minimum + self._hysteresis
        if total >= threshold:
            self._quorum_up = True
            return [
                HealthEvent(
                    EventKind.QUORUM_REGAINED,
                    now,
                    detail=f"live weight {total} >= {threshold}",
                    weight_sum=total,
                    threshold=threshold,
                )
            ]
        return []
