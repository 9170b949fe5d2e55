"""Leader election over a Lease (controller/leader.py) against an in-memory Lease store with
resourceVersion conflicts, driven by a fake monotonic clock: acquire, stand by, take over
after expiry as observed here, lose a 409 race cleanly, lose leadership past the renew
deadline, release on shutdown. Plus the asyncio drivers with real (short) timings."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from lvs_operator.controller.kube import ApiError
from lvs_operator.controller.leader import (
    LeaseConflict,
    LeaseElector,
    LeaseError,
    LeaseRecord,
)

NS, NAME = "lvs-system", "lvs-operator"


class Clock:
    def __init__(self, t: float = 500.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class LeaseStore:
    """One Lease, as the API server keeps it: resourceVersion bumps on every write, a write
    with another resourceVersion is a 409, create of an existing one is a 409. `down` makes
    every call fail like an unreachable server; `before_write` runs once before the next
    create/replace (to let a rival write in between a read and a write)."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.block: threading.Event | None = None  # set: calls wait on it (a hung request)
        self.before_write: Callable[[], None] | None = None
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def describe(self) -> str:
        return f"{NS}/{NAME}"

    def _enter(self) -> None:
        if self.block is not None:
            self.block.wait(10)
        if self.down:
            raise LeaseError("0: connection refused")

    def _hook(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()

    def get(self) -> dict[str, Any] | None:
        self._enter()
        return copy.deepcopy(self.obj)

    def create(self, obj: Any) -> dict[str, Any]:
        self._enter()
        self._hook()
        if self.obj is not None:
            raise LeaseConflict("409: leases.coordination.k8s.io already exists")
        assert "resourceVersion" not in obj.get("metadata", {})
        return self._store("create", obj)

    def replace(self, obj: Any) -> dict[str, Any]:
        self._enter()
        self._hook()
        if self.obj is None:
            raise LeaseError("404: not found")
        if obj["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise LeaseConflict("409: the object has been modified")
        return self._store("replace", obj)

    def _store(self, how: str, obj: Any) -> dict[str, Any]:
        self.rv += 1
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["resourceVersion"] = str(self.rv)
        self.obj = stored
        self.writes.append((how, copy.deepcopy(stored["spec"])))
        return copy.deepcopy(stored)

    def spec(self) -> dict[str, Any]:
        assert self.obj is not None
        spec: dict[str, Any] = self.obj["spec"]
        return spec


def elector(store: LeaseStore, identity: str, clock: Clock, *, wall: float = 1.7e9,
            **timing: Any) -> LeaseElector:
    return LeaseElector(store, identity, clock=clock, wall=lambda: wall + clock.t,
                        rand=lambda: 0.0, **timing)


@pytest.fixture
def store() -> LeaseStore:
    return LeaseStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_absent_lease_is_created_and_held(store: LeaseStore, clock: Clock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    a = elector(store, "a", clock)
    assert not a.is_leader()
    with caplog.at_level(logging.INFO, "lvs_operator.leader"):
        assert a.step()
    assert a.is_leader()
    assert store.writes[0][0] == "create"
    spec = store.spec()
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]
    assert spec["renewTime"].endswith("Z") and "." in spec["renewTime"]  # MicroTime
    assert store.obj is not None and store.obj["metadata"] == {
        "name": NAME, "namespace": NS, "resourceVersion": "1"}
    assert "became leader" in caplog.text


def test_renewals_keep_the_acquire_time_and_move_the_renew_time(store: LeaseStore,
                                                                clock: Clock) -> None:
    a = elector(store, "a", clock)
    a.step()
    acquired = store.spec()["acquireTime"]
    clock.advance(2)
    assert a.step()
    assert store.writes[-1][0] == "replace"
    assert store.spec()["acquireTime"] == acquired
    assert store.spec()["renewTime"] > acquired
    assert store.spec()["leaseTransitions"] == 0


def test_no_takeover_while_the_holder_renews(store: LeaseStore, clock: Clock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.step()
    with caplog.at_level(logging.INFO, "lvs_operator.leader"):
        for _ in range(60):  # two minutes, far past the lease duration
            clock.advance(2)
            assert a.step()
            assert not b.step()
    assert not b.is_leader() and a.is_leader()
    assert b.holder == "a"
    assert store.spec()["holderIdentity"] == "a"
    assert caplog.text.count("standing by: lease lvs-system/lvs-operator held by a") == 1


def test_takeover_after_the_lease_expires_as_observed_here(store: LeaseStore, clock: Clock,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    a = elector(store, "a", clock)
    a.step()  # ... and then a dies
    clock.advance(10)
    b = elector(store, "b", clock)  # started after a's last renewal: first sight counts
    assert not b.step()
    clock.advance(14.9)
    assert not b.step(), "the lease runs for 15 s from when b first saw this record"
    clock.advance(0.1)
    with caplog.at_level(logging.INFO, "lvs_operator.leader"):
        assert b.step()
    assert b.is_leader()
    spec = store.spec()
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    assert spec["acquireTime"] == spec["renewTime"]
    assert "became leader: Lease lvs-system/lvs-operator is held by b from a" in caplog.text
    # a comes back (it was only paused): it has lost, and says so
    with caplog.at_level(logging.INFO, "lvs_operator.leader"):
        assert not a.step()
    assert a.lost and not a.is_leader()
    assert a.lost_reason == "lost the lease to b"
    assert "lost the lease to b" in caplog.text


@pytest.mark.parametrize("skew", [-3.2e8, 3.2e8])
def test_wall_clocks_are_never_compared(store: LeaseStore, clock: Clock, skew: float) -> None:
    """A holder whose clock is ten years off changes nothing: only our observation counts."""
    a = elector(store, "a", clock, wall=1.7e9 + skew)
    b = elector(store, "b", clock)
    a.step()
    assert not b.step()
    for _ in range(10):
        clock.advance(2)
        a.step()
        assert not b.step()
    clock.advance(14.9)  # a stops renewing
    assert not b.step()
    clock.advance(0.2)
    assert b.step()


def test_a_409_race_for_an_expired_lease_is_lost_cleanly(store: LeaseStore, clock: Clock
                                                         ) -> None:
    a = elector(store, "a", clock)
    a.step()
    b, c = elector(store, "b", clock), elector(store, "c", clock)
    assert not b.step() and not c.step()
    clock.advance(15)
    store.before_write = b.step  # b reads and writes between c's read and c's write
    assert not c.step()
    assert b.is_leader() and not c.is_leader() and not c.lost
    assert store.spec()["holderIdentity"] == "b"
    assert [how for how, _ in store.writes] == ["create", "replace"]  # c wrote nothing
    clock.advance(2)
    assert b.step()
    assert not c.step()  # a plain standby now
    assert c.holder == "b"


def test_a_create_race_is_lost_cleanly(store: LeaseStore, clock: Clock) -> None:
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    store.before_write = a.step
    assert not b.step()
    assert a.is_leader() and not b.is_leader()
    assert store.spec()["holderIdentity"] == "a"
    assert not b.step()
    assert b.holder == "a"


def test_renewals_failing_past_the_deadline_lose_leadership(store: LeaseStore, clock: Clock,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    a = elector(store, "a", clock)
    a.step()
    store.down = True
    for _ in range(4):
        clock.advance(2)
        assert a.step(), "still within the renew deadline"
    clock.advance(1.9)
    assert a.is_leader()  # 9.9 s since the last renewal started
    clock.advance(0.1)
    assert not a.is_leader(), "the fence closes by the clock alone, before any step"
    with caplog.at_level(logging.INFO, "lvs_operator.leader"):
        assert not a.step()
    assert a.lost
    assert "renew deadline of 10 s" in (a.lost_reason or "")
    assert "connection refused" in (a.lost_reason or "")
    assert "lost the lease" in caplog.text
    store.down = False
    clock.advance(2)
    assert not a.step(), "losing is final: the process exits and comes back as a candidate"
    assert not a.release()


def test_release_lets_a_standby_take_over_at_once(store: LeaseStore, clock: Clock) -> None:
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    a.step()
    assert not b.step()
    clock.advance(1)
    assert a.release()
    assert not a.is_leader() and a.lost
    spec = store.spec()
    assert spec["holderIdentity"] == ""
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    assert b.step(), "no holder: taken without waiting out the lease"
    assert store.spec()["holderIdentity"] == "b"
    assert store.spec()["leaseTransitions"] == 1
    assert not a.release(), "released once; not the holder any more"


def test_release_by_a_standby_writes_nothing(store: LeaseStore, clock: Clock) -> None:
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    a.step()
    b.step()
    writes = len(store.writes)
    assert not b.release()
    assert len(store.writes) == writes


def test_api_errors_keep_a_standby_waiting_and_say_why(store: LeaseStore, clock: Clock) -> None:
    b = elector(store, "b", clock)
    store.down = True
    assert not b.step()
    assert b.last_error is not None and "connection refused" in b.last_error
    store.down = False
    assert b.step()
    assert b.last_error is None


def test_timings_are_checked(store: LeaseStore, clock: Clock) -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        elector(store, "a", clock, lease_duration=5, renew_deadline=6, retry_period=1)
    with pytest.raises(ValueError, match="retry period"):
        elector(store, "a", clock, lease_duration=5, renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="whole number"):
        elector(store, "a", clock, lease_duration=4.5, renew_deadline=2, retry_period=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identity"):
        elector(store, "", clock)


def test_record_round_trip() -> None:
    record = LeaseRecord("a", 15, "2024-01-01T00:00:00.000001Z", "2024-01-01T00:00:02.5Z", 3)
    assert LeaseRecord.from_object({"spec": record.to_spec()}) == record
    assert LeaseRecord.from_object({}) == LeaseRecord("", 0)


# ---- the asyncio drivers, on the real clock with short timings


def test_acquire_then_hold_until_renewals_fail() -> None:
    store = LeaseStore()

    async def scenario() -> tuple[str, float]:
        a = LeaseElector(store, "a", lease_duration=2, renew_deadline=0.6, retry_period=0.1)
        try:
            await asyncio.wait_for(a.acquire(), 5)
            assert a.is_leader()
            holding = asyncio.ensure_future(a.hold())
            await asyncio.sleep(0.35)
            assert not holding.done() and a.is_leader()
            store.down = True
            t0 = time.monotonic()
            reason = await asyncio.wait_for(holding, 5)
            return reason, time.monotonic() - t0
        finally:
            a.close()

    reason, took = asyncio.run(scenario())
    assert "renew deadline" in reason
    assert took < 1.0


def test_a_hung_renewal_loses_leadership_at_the_deadline() -> None:
    store = LeaseStore()

    async def scenario() -> tuple[str, float, bool]:
        a = LeaseElector(store, "a", lease_duration=2, renew_deadline=0.6, retry_period=0.1)
        try:
            await a.acquire()
            holding = asyncio.ensure_future(a.hold())
            await asyncio.sleep(0.25)
            store.block = threading.Event()  # the next request never answers
            t0 = time.monotonic()
            reason = await asyncio.wait_for(holding, 5)
            took = time.monotonic() - t0
            leader = a.is_leader()
            store.block.set()
            return reason, took, leader
        finally:
            a.close()

    reason, took, leader = asyncio.run(scenario())
    assert not leader
    assert "renew deadline" in reason
    assert took < 1.0


def test_a_standby_acquires_once_the_holder_releases() -> None:
    store = LeaseStore()

    async def scenario() -> float:
        a = LeaseElector(store, "a", lease_duration=5, renew_deadline=3, retry_period=0.1)
        b = LeaseElector(store, "b", lease_duration=5, renew_deadline=3, retry_period=0.1)
        try:
            await a.acquire()
            waiting = asyncio.ensure_future(b.acquire())
            await asyncio.sleep(0.3)
            assert not waiting.done()
            t0 = time.monotonic()
            assert await a.release_async()
            await asyncio.wait_for(waiting, 3)
            return time.monotonic() - t0
        finally:
            a.close()
            b.close()

    took = asyncio.run(scenario())
    assert took < 1.0  # a retry period or so, not the 5 s lease
    assert store.spec()["holderIdentity"] == "b"


# ---- the operator's write fence


def test_the_operator_refuses_api_calls_once_the_fence_closes() -> None:
    from lvs_operator.controller.operator import Operator
    from lvs_operator.controller.state import ControllerState

    calls: list[str] = []
    open_ = [True]

    async def scenario() -> None:
        op = Operator(ControllerState(None), None, fence=lambda: open_[0])  # type: ignore[arg-type]
        await op._call(calls.append, "first")
        open_[0] = False
        with pytest.raises(ApiError, match="not the leader"):
            await op._call(calls.append, "second")

    asyncio.run(scenario())
    assert calls == ["first"]


def test_operator_flags_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from lvs_operator.controller.main import _parser

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("POD_NAME", raising=False)
    args = _parser().parse_args([])
    assert not args.leader_elect
    assert args.leader_election_namespace == "lvs-system"
    assert args.leader_election_name == "lvs-operator"
    assert args.leader_election_id.endswith(f"-{__import__('os').getpid()}")
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15, 10.0, 2.0)
    assert args.health_address is None
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    monkeypatch.setenv("POD_NAME", "lvs-operator-7d9f-abcde")
    args = _parser().parse_args(["--leader-elect", "--health-address", "0.0.0.0:8080"])
    assert args.leader_elect
    assert args.leader_election_namespace == "ops"
    assert args.leader_election_id == "lvs-operator-7d9f-abcde"
    assert args.health_address == ("0.0.0.0", 8080)


def test_operator_rejects_inconsistent_timings(capsys: pytest.CaptureFixture[str]) -> None:
    from lvs_operator.controller.main import main

    with pytest.raises(SystemExit) as exc:
        main(["--leader-elect", "--lease-duration", "4", "--renew-deadline", "5"])
    assert exc.value.code == 2
    assert "--renew-deadline" in capsys.readouterr().err
