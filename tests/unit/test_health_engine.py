"""keepalived checker semantics of agent/health.py, on a fake clock.

Each expectation cites the keepalived source it follows (acassen/keepalived
v2.4.3-30-g9cbce3e2, keepalived/check/); the module docstring of health.py has the details.
"""

from __future__ import annotations

import pytest

from lvs_operator.agent.health import EventKind, HealthEvent, HealthTracker
from lvs_operator.api.types import (
    HealthCheck,
    HealthCheckType,
    OnFailure,
    Quorum,
    SorryServer,
)

A, B, C = "192.0.2.11", "192.0.2.12", "192.0.2.13"


def check(**kw: object) -> HealthCheck:
    base: dict[str, object] = {
        "retries": 3,
        "delay_before_retry_seconds": 2,
        "interval_seconds": 10,
    }
    base.update(kw)
    return HealthCheck(**base)  # type: ignore[arg-type]


def kinds(events: list[HealthEvent[str]]) -> list[tuple[EventKind, str | None]]:
    return [(e.kind, e.server) for e in events]


def tracker(
    servers: dict[str, int] | None = None,
    *,
    quorum: Quorum | None = None,
    alpha: bool = False,
    **kw: object,
) -> HealthTracker[str]:
    t: HealthTracker[str] = HealthTracker(check(**kw), quorum, alpha=alpha)
    t.set_servers(servers if servers is not None else {A: 5}, now=0.0)
    return t


def pass_first_check(t: HealthTracker[str], now: float = 0.0) -> None:
    for s in t.due(now):
        assert t.record(s, True, now) == []


# --------------------------------------------------------------------------- start


def test_new_servers_start_up_and_are_due_at_once() -> None:
    t = tracker({A: 5, B: 3})
    assert t.due(0.0) == [A, B]
    assert t.state(A).up and not t.state(A).checked
    assert t.weights() == {A: 5, B: 3}
    assert t.quorum_ok and not t.sorry_active


def test_first_check_failing_marks_down_at_once_without_retries() -> None:
    # check_data.c: retry_it = retry, "For non alpha mode, one failure is enough initially".
    t = tracker()
    events = t.record(A, False, 0.0, "connection refused")
    assert kinds(events)[0] == (EventKind.SERVER_DOWN, A)
    assert not t.state(A).up
    assert t.state(A).last_detail == "connection refused"
    assert t.due(9.9) == [] and t.due(10.0) == [A]  # next check after delay_loop


def test_alpha_starts_down_and_one_success_brings_it_up() -> None:
    # check_data.c: with alpha, set_checker_state(checker, false); UNSET_ALIVE(rs).
    t = tracker(alpha=True)
    assert not t.state(A).up
    assert t.weights() == {A: None}
    events = t.record(A, True, 0.5)
    assert kinds(events) == [(EventKind.SERVER_UP, A), (EventKind.QUORUM_REGAINED, None)]
    assert t.weights() == {A: 5}


# --------------------------------------------------------------------------- retries


def test_up_server_goes_down_after_exactly_retries_plus_one_failures() -> None:
    # check_tcp.c tcp_epilog: while UP, a failure with retry_it < retry schedules a retry after
    # delay_before_retry; the failure that finds retry_it >= retry marks DOWN.
    t = tracker(retries=3, delay_before_retry_seconds=2, interval_seconds=10)
    pass_first_check(t)
    assert t.due(9.0) == []
    now = 10.0
    assert t.due(now) == [A]
    for n in range(1, 4):  # failures 1..3 are retried, 2 s apart
        assert t.record(A, False, now, "timeout") == []
        assert t.state(A).up and t.state(A).consecutive_failures == n
        assert t.due(now + 1.9) == []
        now += 2.0
        assert t.due(now) == [A]
    events = t.record(A, False, now, "timeout")  # failure 4 = retries + 1
    assert kinds(events)[0] == (EventKind.SERVER_DOWN, A)
    assert now == 10.0 + 3 * 2.0  # DOWN retries x delay_before_retry after the first failure
    assert t.state(A).last_change == now and t.state(A).consecutive_failures == 4
    # while DOWN: no retries, plain delay_loop, failures change nothing
    assert t.due(now + 2.0) == [] and t.due(now + 10.0) == [A]
    assert t.record(A, False, now + 10.0) == []
    assert t.state(A).consecutive_failures == 5
    assert t.due(now + 19.9) == [] and t.due(now + 20.0) == [A]


def test_success_during_retries_resets_the_counter() -> None:
    t = tracker(retries=2, delay_before_retry_seconds=1, interval_seconds=5)
    pass_first_check(t)
    t.record(A, False, 5.0)
    t.record(A, False, 6.0)
    assert t.record(A, True, 7.0) == []
    assert t.state(A).consecutive_failures == 0
    assert t.due(11.9) == [] and t.due(12.0) == [A]
    # a fresh series needs retries + 1 failures again
    assert t.record(A, False, 12.0) == []
    assert t.record(A, False, 13.0) == []
    assert kinds(t.record(A, False, 14.0))[0] == (EventKind.SERVER_DOWN, A)


def test_zero_delay_before_retry_retries_immediately() -> None:
    t = tracker(retries=1, delay_before_retry_seconds=0, interval_seconds=5)
    pass_first_check(t)
    assert t.record(A, False, 5.0) == []
    assert t.due(5.0) == [A]
    assert kinds(t.record(A, False, 5.0))[0] == (EventKind.SERVER_DOWN, A)


def test_one_success_marks_up_again_and_transitions_are_reported_once() -> None:
    # check_tcp.c tcp_epilog: is_success && !is_up -> update_svr_checker_state(UP).
    t = tracker({A: 5, B: 5}, retries=1, delay_before_retry_seconds=1, interval_seconds=5)
    pass_first_check(t)
    t.record(A, False, 5.0)
    down = t.record(A, False, 6.0)
    assert kinds(down) == [(EventKind.SERVER_DOWN, A)]
    assert t.record(A, False, 11.0) == []
    up = t.record(A, True, 16.0, "connected")
    assert kinds(up) == [(EventKind.SERVER_UP, A)]
    assert up[0].at == 16.0 and up[0].detail == "connected"
    assert t.record(A, True, 21.0) == []
    assert t.state(A).up and t.state(A).last_change == 16.0


def test_skip_reschedules_without_counting_a_failure() -> None:
    # check_tcp.c tcp_connect_thread: "TCP socket bind failed. Rescheduling."
    t = tracker(retries=1)
    pass_first_check(t)
    t.skip(A, 10.0, "cannot bind")
    assert t.state(A).up and t.state(A).consecutive_failures == 0
    assert t.due(19.9) == [] and t.due(20.0) == [A]


def test_postpone_and_next_due() -> None:
    t = tracker({A: 1, B: 1})
    assert t.next_due() == 0.0
    t.postpone(A, 3.0)
    assert t.due(0.0) == [B]
    t.record(B, True, 0.5)
    assert t.next_due() == 3.0
    t.record(A, True, 3.2)
    assert t.next_due() == 10.5


def test_unknown_and_removed_servers() -> None:
    t = tracker({A: 1, B: 1})
    t.set_servers({B: 1}, now=1.0)
    assert t.servers() == [B]
    assert t.record(A, False, 2.0) == []  # a late result for a removed server is ignored
    with pytest.raises(KeyError):
        t.state(A)


def test_type_none_never_probes_and_counts_everything_up() -> None:
    t = tracker({A: 2}, type=HealthCheckType.NONE, alpha=True)
    assert t.due(100.0) == [] and t.next_due() is None
    assert t.weights() == {A: 2}


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("on_failure", "down_weight"), [(OnFailure.REMOVE, None), (OnFailure.INHIBIT, 0)]
)
def test_down_server_is_removed_or_inhibited(
    on_failure: OnFailure, down_weight: int | None
) -> None:
    # ipvswrapper.c ipvs_cmd: DELDEST of an inhibited server becomes EDITDEST weight 0.
    t = tracker({A: 5, B: 3}, on_failure=on_failure)
    t.record(A, False, 0.0)
    t.record(B, True, 0.0)
    assert t.weights() == {A: down_weight, B: 3}
    t.record(A, True, 10.0)
    assert t.weights() == {A: 5, B: 3}


def test_weights_take_configured_override() -> None:
    t = tracker({A: 5, B: 3})
    t.record(B, False, 0.0)
    assert t.weights({A: 7, B: 9}) == {A: 7, B: None}


# --------------------------------------------------------------------------- quorum


def quorum(minimum: int, hysteresis: int = 0, sorry: bool = True) -> Quorum:
    return Quorum(
        minimum=minimum,
        hysteresis=hysteresis,
        sorry_server=SorryServer(address="192.0.2.99") if sorry else None,
    )


def test_quorum_hysteresis_boundaries() -> None:
    # ipwrapper.c update_quorum_state: threshold = quorum - hysteresis while up (lost when
    # sum < threshold), quorum + hysteresis while down (regained when sum >= threshold).
    servers = {A: 2, B: 2, C: 2}
    t = tracker(servers, quorum=quorum(5, hysteresis=1), retries=0)  # up: 6 >= 5 + 1
    assert t.quorum_ok
    assert t.record(A, False, 0.0)[1:] == []  # sum 4 = quorum - hysteresis: still up
    assert t.quorum_ok and not t.sorry_active
    lost = t.record(B, False, 0.0)  # sum 2 < 4
    assert kinds(lost) == [(EventKind.SERVER_DOWN, B), (EventKind.QUORUM_LOST, None)]
    assert lost[1].weight_sum == 2 and lost[1].threshold == 4
    assert not t.quorum_ok and t.sorry_active
    assert t.record(A, True, 10.0)[1:] == []  # sum 4 < 5 + 1: still lost
    assert t.record(A, False, 20.0)[1:] == []  # (down again: nothing new)
    t.record(A, True, 30.0)
    regained = t.record(B, True, 30.0)  # sum 6 >= 6
    assert kinds(regained) == [(EventKind.SERVER_UP, B), (EventKind.QUORUM_REGAINED, None)]
    assert regained[1].threshold == 6
    assert t.quorum_ok and not t.sorry_active


def test_quorum_regained_at_exactly_quorum_plus_hysteresis() -> None:
    t = tracker({A: 3, B: 2}, quorum=quorum(4, hysteresis=1), retries=0)  # 5 >= 5: up
    assert t.quorum_ok
    t.record(B, False, 0.0)  # 3 < 3? no: 3 = quorum - hysteresis, still up
    assert t.quorum_ok
    t.record(A, False, 0.0)  # 0: lost
    assert not t.quorum_ok
    t.record(A, True, 1.0)  # 3 < 5: still lost
    assert not t.quorum_ok
    assert kinds(t.record(B, True, 1.0))[-1] == (EventKind.QUORUM_REGAINED, None)


def test_starting_below_quorum_plus_hysteresis_starts_lost() -> None:
    # ipwrapper.c set_quorum_states: up iff sum >= quorum + hysteresis; init reports
    # "Starting with quorum down" and adds the sorry server.
    t: HealthTracker[str] = HealthTracker(check(), quorum(4, hysteresis=1))
    events = t.set_servers({A: 2, B: 2}, now=0.0)  # 4 < 5
    assert kinds(events) == [(EventKind.QUORUM_LOST, None)]
    assert "starting" in events[0].detail
    assert t.sorry_active and t.weights() == {A: None, B: None}


def test_hysteresis_is_clamped_to_quorum_minus_one() -> None:
    # check_data.c: "hysteresis %u >= quorum %u; setting hysteresis to %u" (quorum - 1).
    t = tracker({A: 1}, quorum=quorum(2, hysteresis=5), retries=0)
    assert t.hysteresis == 1
    assert t.quorum_ok is False  # 1 < 2 + 1 at start


def test_sorry_server_takes_all_real_servers_out_while_quorum_is_lost() -> None:
    # ipwrapper.c update_quorum_state -> perform_quorum_state(vs, false): "Remove remaining
    # alive real servers"; perform_svr_state: changes only "if we have quorum or no sorry server".
    for on_failure, gone in ((OnFailure.REMOVE, None), (OnFailure.INHIBIT, 0)):
        t = tracker({A: 1, B: 1, C: 1}, quorum=quorum(2), retries=0, on_failure=on_failure)
        t.record(A, False, 0.0)
        assert t.weights() == {A: gone, B: 1, C: 1} and not t.sorry_active
        t.record(B, False, 0.0)  # sum 1 < 2
        assert t.sorry_active
        assert t.weights() == {A: gone, B: gone, C: gone}  # C is UP but out of the pool
        assert t.state(C).up
        t.record(A, True, 10.0)  # sum 2: regained, the live servers come back
        assert not t.sorry_active
        assert t.weights() == {A: 1, B: gone, C: 1}


def test_no_sorry_server_quorum_is_reported_but_pool_unchanged() -> None:
    t = tracker({A: 1, B: 1}, quorum=quorum(2, sorry=False), retries=0)
    events = t.record(A, False, 0.0)
    assert kinds(events) == [(EventKind.SERVER_DOWN, A), (EventKind.QUORUM_LOST, None)]
    assert not t.sorry_active
    assert t.weights() == {A: None, B: 1}


def test_default_quorum_is_one_live_weight() -> None:
    # check_data.c alloc_vs: quorum = 1, hysteresis = 0 without a quorum block.
    t = tracker({A: 1}, retries=0)
    assert kinds(t.record(A, False, 0.0))[-1] == (EventKind.QUORUM_LOST, None)
    assert not t.sorry_active  # no sorry server without a quorum block
    assert kinds(t.record(A, True, 5.0))[-1] == (EventKind.QUORUM_REGAINED, None)


def test_weight_zero_servers_do_not_count_for_quorum() -> None:
    # ipwrapper.c weigh_live_realservers sums the (effective) weights of the live servers.
    t = tracker({A: 0, B: 1}, quorum=quorum(1), retries=0)
    assert t.weight_sum == 1
    events = t.record(B, False, 0.0)
    assert events[-1].kind is EventKind.QUORUM_LOST and events[-1].weight_sum == 0


def test_configured_weight_changes_move_quorum() -> None:
    # ipwrapper.c update_svr_wgt(..., update_quorum) -> update_quorum_state.
    t = tracker({A: 3}, quorum=quorum(3))
    assert kinds(t.set_servers({A: 2}, now=1.0)) == [(EventKind.QUORUM_LOST, None)]
    assert t.set_servers({A: 2, B: 0}, now=2.0) == []
    assert kinds(t.set_servers({A: 2, B: 1}, now=3.0)) == [(EventKind.QUORUM_REGAINED, None)]


def test_each_transition_reported_once_over_a_long_run() -> None:
    t = tracker(
        {A: 1, B: 1}, quorum=quorum(2), retries=1, delay_before_retry_seconds=1, interval_seconds=3
    )
    now = 0.0
    seen: list[tuple[EventKind, str | None]] = []
    # B fails between t=20 and t=40, then recovers
    while now <= 60.0:
        for s in t.due(now):
            ok = s == A or not 20.0 <= now < 40.0
            seen += kinds(t.record(s, ok, now))
        now += 0.5
    assert seen == [
        (EventKind.SERVER_DOWN, B),
        (EventKind.QUORUM_LOST, None),
        (EventKind.SERVER_UP, B),
        (EventKind.QUORUM_REGAINED, None),
    ]


def test_quorum_comes_from_the_health_check_by_default() -> None:
    t: HealthTracker[str] = HealthTracker(check(quorum=quorum(3), retries=0))
    assert kinds(t.set_servers({A: 2}, now=0.0)) == [(EventKind.QUORUM_LOST, None)]
    assert t.sorry_active
