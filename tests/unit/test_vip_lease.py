"""Director HA over Leases (agent/vip_lease.py): agents compete for HA groups against an
in-memory API server with resourceVersion conflicts, on one simulated monotonic clock, the
way the agent's loop drives them (step when next_due() has come, add the VIP on "acquired",
remove it on "lost"/"released"). Timelines are checked tick by tick: never two VIPs at once.
Plus KubernetesLeaseClient against a loopback HTTP stub (status mapping, timeouts)."""

from __future__ import annotations

import copy
import http.server
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lvs_operator.agent.kubeapi import Credentials, KubeAPI
from lvs_operator.agent.vip_lease import (
    MIN_TIMEOUT,
    HAGroup,
    KubernetesLeaseClient,
    Transition,
    VIPElection,
    ha_lease_name,
    lease_api_client,
    lease_identity,
)
from lvs_operator.coordination import Elector, LeaseConflict, LeaseError

NS = "lvs-system"
TICK = 0.05


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Server:
    """Leases as the API server keeps them: resourceVersion bumps on every write, a stale
    resourceVersion or a create of an existing Lease is a 409. Per agent, the API can be
    `down` (every call fails at once) or `hung` (every call takes its full timeout, or until
    its bound, on the shared clock, then fails)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 0
        self.down: set[str] = set()
        self.hung: set[str] = set()
        self.calls: list[tuple[str, str, str]] = []  # (agent, verb, lease name)

    def client(self, agent: str, group: HAGroup) -> View:
        return View(self, agent, group.lease_namespace, group.lease_name)

    def spec(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.leases[(NS, name)]["spec"]
        return spec


class View:
    """One agent's LeaseClient for one Lease (and a BoundedLeaseClient)."""

    timeout = 1.0

    def __init__(self, server: Server, agent: str, namespace: str, name: str) -> None:
        self.server, self.agent, self.namespace, self.name = server, agent, namespace, name
        self.deadline: float | None = None

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    def bound(self, deadline: float | None) -> None:
        self.deadline = deadline

    def _enter(self, verb: str) -> None:
        s = self.server
        s.calls.append((self.agent, verb, self.name))
        if self.agent in s.hung:
            wait = self.timeout
            if self.deadline is not None:
                wait = min(wait, max(self.deadline - s.clock(), MIN_TIMEOUT))
            s.clock.advance(wait)
            raise LeaseError("timed out")
        if self.agent in s.down:
            raise LeaseError("connection refused")

    def get(self) -> dict[str, Any] | None:
        self._enter("get")
        obj = self.server.leases.get((self.namespace, self.name))
        return copy.deepcopy(obj)

    def create(self, obj: Any) -> dict[str, Any]:
        self._enter("create")
        if (self.namespace, self.name) in self.server.leases:
            raise LeaseConflict("409: already exists")
        assert "resourceVersion" not in obj["metadata"]
        return self._store(obj)

    def replace(self, obj: Any) -> dict[str, Any]:
        self._enter("replace")
        current = self.server.leases.get((self.namespace, self.name))
        if current is None:
            raise LeaseError("404: not found")
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise LeaseConflict("409: the object has been modified")
        return self._store(obj)

    def _store(self, obj: Any) -> dict[str, Any]:
        self.server.rv += 1
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["resourceVersion"] = str(self.server.rv)
        self.server.leases[(self.namespace, self.name)] = stored
        return copy.deepcopy(stored)


def group(name: str = "192.0.2.10", **kw: Any) -> HAGroup:
    """Timings 3 s / 2 s / 1 s unless given (what the numbers in these tests are written
    for; the defaults, 2 s / 1.5 s / 0.5 s, are exercised in test_ha_keeper.py)."""
    defaults = {"virtual_services": ("web/www",), "lease_duration": 3, "renew_deadline": 2.0,
                "retry_period": 1.0}
    return HAGroup(name, NS, ha_lease_name(name), **{**defaults, **kw})


class Agent:
    """One node's agent loop, as far as HA goes: step when due, VIPs from the transitions."""

    def __init__(self, name: str, server: Server, groups: list[HAGroup],
                 rand: Callable[[], float] = lambda: 0.0) -> None:
        self.name, self.clock = name, server.clock
        self.election = VIPElection(f"{name}_test", lambda g: server.client(name, g), groups,
                                    clock=server.clock, wall=lambda: 1.7e9 + server.clock(),
                                    rand=rand)
        self.vips: set[str] = set()
        self.running = True
        self.log: list[tuple[float, Transition]] = []

    def apply(self, transitions: list[Transition]) -> None:
        for t in transitions:
            self.log.append((self.clock(), t))
            if t.kind == "acquired":
                assert t.group not in self.vips
                self.vips.add(t.group)
            else:
                self.vips.discard(t.group)

    def tick(self) -> None:
        if self.running and self.election.next_due() <= self.clock():
            self.apply(self.election.step())

    def when(self, kind: str, group: str = "192.0.2.10") -> list[float]:
        return [at for at, t in self.log if t.kind == kind and t.group == group]


def run(agents: list[Agent], seconds: float,
        until: Callable[[], bool] | None = None) -> Iterator[float]:
    """Tick the agents for `seconds` (or until `until()`), checking after every tick that no
    group is held by two agents, and no VIP on two running ones (a stopped agent stands for a
    dead node, whose addresses went with it); yields the times."""
    clock = agents[0].clock
    end = clock() + seconds
    while clock() < end:
        for agent in agents:
            agent.tick()
        for i, a in enumerate(agents):
            for b in agents[i + 1:]:
                both = a.election.held() & b.election.held()
                assert not both, f"two holders at {clock():.2f}: {both}"
                if a.running and b.running:
                    assert not a.vips & b.vips, f"two VIPs at {clock():.2f}: {a.vips & b.vips}"
        yield clock()
        if until is not None and until():
            return
        clock.advance(TICK)


def settle(agents: list[Agent], seconds: float,
           until: Callable[[], bool] | None = None) -> float:
    last = agents[0].clock()
    for last in run(agents, seconds, until):  # noqa: B007 (the loop runs the timeline)
        pass
    return last


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Server:
    return Server(clock)


def pair(server: Server, *groups: HAGroup) -> tuple[Agent, Agent]:
    gs = list(groups) or [group()]
    return Agent("node-a", server, gs), Agent("node-b", server, gs)


def holder_and_standby(a: Agent, b: Agent) -> tuple[Agent, Agent]:
    settle([a, b], 5)
    assert (a.vips, b.vips) in ((set(), {"192.0.2.10"}), ({"192.0.2.10"}, set()))
    return (a, b) if a.vips else (b, a)


# ---- the election


def test_exactly_one_of_two_agents_holds(server: Server) -> None:
    a, b = pair(server)
    for _ in run([a, b], 60):
        pass
    holder, standby = holder_and_standby(a, b)
    assert holder is a  # a stepped first and created the Lease
    assert holder.election.held() == {"192.0.2.10"} and standby.election.held() == set()
    assert standby.election.holder("192.0.2.10") == "node-a_test"
    assert len(holder.log) == 1 and standby.log == []
    lease = server.leases[(NS, "lvs-ha-192.0.2.10")]
    assert lease["spec"]["holderIdentity"] == "node-a_test"
    assert lease["spec"]["leaseDurationSeconds"] == 3
    assert lease["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "lvs-operator"}
    assert lease["metadata"]["annotations"] == {"lvs.dev/ha-group": "192.0.2.10",
                                                "lvs.dev/virtual-services": "web/www"}
    # renewals every retry period, standby reads every retry period: ~2 calls/s each
    per_second = len([c for c in server.calls if c[0] == "node-a"]) / 65
    assert 1.5 < per_second < 2.5


def test_the_holder_stopping_hands_over_within_duration_plus_retry(server: Server) -> None:
    a, b = pair(server)
    holder, standby = holder_and_standby(a, b)
    elector = holder.election._slots["192.0.2.10"].elector
    assert elector is not None and elector.renewed_at is not None
    holder.running = False  # the process froze or the node died: no more steps, no release
    stopped, last_renewal = holder.clock(), elector.renewed_at
    settle([a, b], 10, until=lambda: bool(standby.vips))
    acquired = standby.when("acquired")[0]
    assert acquired - stopped <= 3 + 1 + TICK  # lease duration + retry period
    assert acquired - last_renewal >= 3.0  # never before the lease ran out
    assert server.spec("lvs-ha-192.0.2.10")["holderIdentity"] == "node-b_test"
    assert server.spec("lvs-ha-192.0.2.10")["leaseTransitions"] == 1
    # the frozen one judges by its clock alone: it does not hold, whatever its VIP says
    assert holder.election.held() == set()
    holder.running = True
    holder.tick()
    assert holder.when("lost") and holder.vips == set()


def test_an_unreachable_api_ends_holding_at_the_renew_deadline_before_any_takeover(
        server: Server) -> None:
    a, b = pair(server)
    holder, standby = holder_and_standby(a, b)
    elector = holder.election._slots["192.0.2.10"].elector
    assert elector is not None and elector.renewed_at is not None
    server.down.add(holder.name)
    last_renewal = elector.renewed_at
    settle([a, b], 10, until=lambda: bool(standby.vips))
    lost, = holder.when("lost")
    acquired, = standby.when("acquired")
    assert last_renewal + 2.0 <= lost <= last_renewal + 2.0 + TICK  # the renew deadline
    assert acquired >= last_renewal + 3.0  # the lease duration, as the standby saw it
    assert acquired - lost >= 1.0 - TICK  # strictly apart: the margin to remove the VIP
    assert "renew deadline of 2 s" in holder.log[-1][1].detail
    assert "connection refused" in holder.log[-1][1].detail
    # the API comes back: the former holder is a standby now, and stays one
    server.down.clear()
    settle([a, b], 30)
    assert standby.vips == {"192.0.2.10"} and holder.vips == set()
    assert holder.election.holder("192.0.2.10") == "node-b_test"


def test_a_hung_api_cannot_hold_a_step_past_the_renew_deadline(server: Server) -> None:
    """Every request of the holder's hangs for its whole timeout: the requests are cut short
    at the renew deadline and step() returns then, with the loss."""
    a, b = pair(server)
    holder, standby = holder_and_standby(a, b)
    elector = holder.election._slots["192.0.2.10"].elector
    assert elector is not None and elector.renewed_at is not None
    server.hung.add(holder.name)
    deadline = elector.renewed_at + 2.0
    settle([a, b], 10, until=lambda: bool(standby.vips))
    lost, = holder.when("lost")
    assert lost <= deadline + MIN_TIMEOUT + TICK
    assert standby.when("acquired")[0] - lost >= 1.0 - MIN_TIMEOUT - TICK


def test_a_hung_api_is_bounded_across_groups(server: Server) -> None:
    """Three groups, all held by a: a standby's request cannot delay dropping a held VIP."""
    groups = [group(f"192.0.2.{i}") for i in (10, 11, 12)]
    a = Agent("node-a", server, groups)
    settle([a], 3)
    b = Agent("node-b", server, groups)
    settle([a, b], 3)
    assert a.vips == {"192.0.2.10", "192.0.2.11", "192.0.2.12"}
    deadlines = {g: e.renewed_at + 2.0 for g, s in a.election._slots.items()
                 if (e := s.elector) is not None and e.renewed_at is not None}
    server.hung.add("node-a")
    settle([a, b], 10, until=lambda: len(b.vips) == 3)
    for name, deadline in deadlines.items():
        lost, = a.when("lost", name)
        assert lost <= deadline + MIN_TIMEOUT + TICK, name


@pytest.mark.parametrize("seed", range(12))
def test_random_outages_and_freezes_never_split_the_brain(server: Server, seed: int) -> None:
    rng = random.Random(seed)
    gs = [group("192.0.2.10"), group("192.0.2.11")]
    agents = [Agent(f"node-{n}", server, gs, rand=rng.random) for n in "abc"]
    for _ in range(40):
        for agent in agents:
            r = rng.random()
            if r < 0.15:
                server.down.symmetric_difference_update({agent.name})
            elif r < 0.25:
                server.hung.symmetric_difference_update({agent.name})
            elif r < 0.32:
                agent.running = not agent.running
        settle(agents, rng.uniform(0.5, 4.0))  # asserts no overlap at every tick
    server.down.clear()
    server.hung.clear()
    for agent in agents:
        agent.running = True
    settle(agents, 10)
    for g in ("192.0.2.10", "192.0.2.11"):
        assert sum(g in a.vips for a in agents) == 1, g
    handovers = sum(1 for a in agents for _, t in a.log if t.kind == "acquired")
    assert handovers > 2, "the outages moved the VIPs around"


def test_a_candidate_that_cannot_serve_releases_and_stays_out(server: Server) -> None:
    a, b = pair(server)
    holder, standby = holder_and_standby(a, b)
    changes = holder.election.update([group(can_hold=False, why_not="NoCarrier")])
    holder.apply(changes)
    assert [(t.kind, t.group) for t in changes] == [("released", "192.0.2.10")]
    assert "cannot hold: NoCarrier" in changes[0].detail
    assert holder.election.held() == set() and holder.vips == set()
    assert server.spec("lvs-ha-192.0.2.10")["holderIdentity"] == ""
    released = holder.clock()
    settle([a, b], 10, until=lambda: bool(standby.vips))
    assert standby.when("acquired")[0] - released <= 1.0 + TICK  # one retry period
    calls = len([c for c in server.calls if c[0] == holder.name])
    settle([a, b], 10)
    assert len([c for c in server.calls if c[0] == holder.name]) == calls, "not competing"
    # it can serve again: a standby, the holder keeps the VIP
    holder.election.update([group()])
    settle([a, b], 10)
    assert standby.vips == {"192.0.2.10"} and holder.vips == set()


def test_a_standby_that_cannot_serve_does_not_take_a_free_lease(server: Server) -> None:
    a, b = pair(server)
    holder, standby = holder_and_standby(a, b)
    standby.election.update([group(can_hold=False)])
    holder.apply(holder.election.release_all())
    settle([a, b], 10)
    assert standby.vips == set() and server.spec("lvs-ha-192.0.2.10")["holderIdentity"] == ""


def test_release_all_hands_over_within_one_retry_period(server: Server) -> None:
    a, b = pair(server)
    holder, standby = holder_and_standby(a, b)
    changes = holder.election.release_all()
    holder.apply(changes)
    assert [t.kind for t in changes] == ["released"]
    assert holder.election.held() == set()
    assert holder.election.next_due() == float("inf")
    assert holder.election.step() == []
    released = holder.clock()
    settle([a, b], 5, until=lambda: bool(standby.vips))
    assert standby.when("acquired")[0] - released <= 1.0 + TICK


def test_update_removing_a_held_group_releases_it(server: Server) -> None:
    g10, g11 = group("192.0.2.10"), group("192.0.2.11")
    a = Agent("node-a", server, [g10, g11])
    settle([a], 2)
    b = Agent("node-b", server, [g10, g11])
    settle([a, b], 3)
    assert a.vips == {"192.0.2.10", "192.0.2.11"}
    changes = a.election.update([g11])
    a.apply(changes)
    assert [(t.kind, t.group) for t in changes] == [("released", "192.0.2.10")]
    assert "the group was removed" in changes[0].detail
    assert a.election.held() == {"192.0.2.11"}
    settle([a, b], 3)
    assert b.vips == {"192.0.2.10"} and a.vips == {"192.0.2.11"}
    assert set(a.election.groups()) == {"192.0.2.11"}


def test_update_changes_the_annotation_and_a_new_lease_means_a_new_election(
        server: Server) -> None:
    a = Agent("node-a", server, [group()])
    settle([a], 2)
    a.apply(a.election.update([group(virtual_services=("web/www", "web/tls"))]))
    settle([a], 2)
    assert server.leases[(NS, "lvs-ha-192.0.2.10")]["metadata"]["annotations"][
        "lvs.dev/virtual-services"] == "web/tls,web/www"
    assert a.vips == {"192.0.2.10"} and len(a.log) == 1  # no flap
    changes = a.election.update([HAGroup("192.0.2.10", NS, "other")])
    assert [t.kind for t in changes] == ["released"]
    a.apply(changes)
    settle([a], 2)
    assert a.vips == {"192.0.2.10"}
    assert server.spec("other")["holderIdentity"] == "node-a_test"


def test_steps_are_due_only_when_something_is(server: Server, clock: Clock) -> None:
    a = Agent("node-a", server, [group()])
    assert a.election.next_due() <= clock()
    a.tick()
    assert a.vips == {"192.0.2.10"}
    assert a.election.next_due() == clock() + 1.0  # the next renewal
    calls = len(server.calls)
    assert a.election.step() == [] and len(server.calls) == calls, "nothing due, no call"
    b = Agent("node-b", server, [group()])
    b.tick()
    assert b.election.next_due() == clock() + 1.0  # a standby reads every retry period
    a.running = False
    standby = b.election._slots["192.0.2.10"].elector
    assert standby is not None
    while b.election.next_due() < standby.observed_at + 3.0:  # reads every retry period ...
        clock.t = b.election.next_due()
        b.tick()
        assert b.vips == set()
    # ... then steps exactly when the last record seen runs out, as seen from b
    assert b.election.next_due() == standby.observed_at + 3.0
    clock.t = b.election.next_due()
    b.tick()
    assert b.vips == {"192.0.2.10"}


def test_held_is_judged_by_the_clock_without_a_step(server: Server, clock: Clock) -> None:
    a = Agent("node-a", server, [group()])
    a.tick()
    clock.advance(1.99)
    assert a.election.held() == {"192.0.2.10"}
    clock.advance(0.01)
    assert a.election.held() == set()
    assert a.election.next_due() <= clock()
    changes = a.election.step()
    assert [t.kind for t in changes] == ["lost"]


def test_groups_and_names_are_checked() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        group(lease_duration=3, renew_deadline=3.0)
    with pytest.raises(ValueError, match="whole number"):
        group(lease_duration=2.5)
    with pytest.raises(ValueError, match="must not be empty"):
        HAGroup("x", NS, "")
    with pytest.raises(ValueError, match="listed twice"):
        VIPElection("a_1", lambda g: None, [group(), group()])  # type: ignore[arg-type,return-value]
    assert ha_lease_name("192.0.2.10") == "lvs-ha-192.0.2.10"
    assert ha_lease_name("2001:db8::") == "lvs-ha-2001-0db8-0000-0000-0000-0000-0000-0000"
    identity = lease_identity("node-a")
    assert identity.startswith("node-a_") and len(identity) == len("node-a_") + 8
    assert lease_identity("node-a") == identity  # one per process
    with pytest.raises(ValueError):
        lease_identity("")


def test_one_elector_per_group_shares_nothing(server: Server, clock: Clock) -> None:
    """The core Elector holds no thread and no timer: many of them in one loop."""
    threads = threading.active_count()
    a = Agent("node-a", server, [group(f"192.0.2.{i}") for i in range(1, 51)])
    a.tick()
    assert len(a.vips) == 50
    assert all(isinstance(s.elector, Elector) for s in a.election._slots.values())
    assert threading.active_count() == threads  # no executor, no timer thread
    clock.advance(1.0)
    a.tick()
    assert len(a.vips) == 50 and len(server.calls) == 50 * 2 + 50 * 2  # create, get+put


# ---- KubernetesLeaseClient against a loopback HTTP stub


class Stub(http.server.BaseHTTPRequestHandler):
    replies: list[tuple[int, dict[str, Any]]] = []
    seen: list[tuple[str, str, Any]] = []
    delay = 0.0

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        Stub.seen.append((self.command, self.path, body))
        if Stub.delay:
            time.sleep(Stub.delay)
        status, obj = Stub.replies.pop(0)
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _reply

    def log_message(self, *args: Any) -> None:
        pass


def loopback_api(port: int) -> KubeAPI:
    return lease_api_client(KubeAPI(Credentials(server=f"http://127.0.0.1:{port}")))


@pytest.fixture
def stub() -> Iterator[KubernetesLeaseClient]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    Stub.replies, Stub.seen, Stub.delay = [], [], 0.0
    api = loopback_api(srv.server_address[1])
    try:
        yield KubernetesLeaseClient(api, NS, "lvs-ha-192.0.2.10", timeout=0.5)
    finally:
        Stub.delay = 0.0
        srv.shutdown()
        srv.server_close()


def status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "code": code, "message": message}


def test_the_kubernetes_client_maps_statuses(stub: KubernetesLeaseClient) -> None:
    lease = {"metadata": {"name": "lvs-ha-192.0.2.10", "namespace": NS,
                          "resourceVersion": "7"}, "spec": {"holderIdentity": "a"}}
    Stub.replies = [(404, status(404, "not found")), (201, lease), (200, lease),
                    (409, status(409, "the object has been modified")),
                    (409, status(409, "already exists")),
                    (403, status(403, "leases is forbidden")), (200, lease)]
    assert stub.get() is None
    assert stub.create({"metadata": {"name": "lvs-ha-192.0.2.10"}}) == lease
    assert stub.replace(lease) == lease
    with pytest.raises(LeaseConflict, match="HTTP 409: the object has been modified"):
        stub.replace(lease)
    with pytest.raises(LeaseConflict, match="already exists"):
        stub.create(lease)
    with pytest.raises(LeaseError, match=re.escape(
            "reading Lease lvs-system/lvs-ha-192.0.2.10: HTTP 403: leases is forbidden")) as exc:
        stub.get()
    assert not isinstance(exc.value, LeaseConflict)
    assert stub.get() == lease
    base = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    assert [(m, p) for m, p, _ in Stub.seen] == [
        ("GET", f"{base}/lvs-ha-192.0.2.10"), ("POST", base), ("PUT", f"{base}/lvs-ha-192.0.2.10"),
        ("PUT", f"{base}/lvs-ha-192.0.2.10"), ("POST", base), ("GET", f"{base}/lvs-ha-192.0.2.10"),
        ("GET", f"{base}/lvs-ha-192.0.2.10")]
    assert Stub.seen[2][2] == lease  # written whole, as JSON


def test_the_kubernetes_client_times_out_and_honours_the_bound(
        stub: KubernetesLeaseClient) -> None:
    Stub.delay = 2.0
    Stub.replies = [(200, {})] * 3
    t0 = time.monotonic()
    with pytest.raises(LeaseError, match="reading Lease"):
        stub.get()
    assert time.monotonic() - t0 < 1.2  # the 0.5 s timeout, not the 2 s answer
    stub.bound(time.monotonic() + 0.1)
    assert stub.request_timeout() <= 0.1
    t0 = time.monotonic()
    with pytest.raises(LeaseError):
        stub.replace({"metadata": {}})
    assert time.monotonic() - t0 < 0.6
    stub.bound(time.monotonic() - 5)
    assert stub.request_timeout() == MIN_TIMEOUT
    stub.bound(None)
    assert stub.request_timeout() == 0.5


def test_the_kubernetes_client_reports_a_refused_connection() -> None:
    srv = http.server.HTTPServer(("127.0.0.1", 0), Stub)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there now
    with pytest.raises(LeaseError, match=r"reading Lease lvs-system/x: .*(refused|Errno)"):
        KubernetesLeaseClient(loopback_api(port), NS, "x", timeout=0.5).get()


def test_a_renewal_that_returns_after_the_deadline_does_not_hold(server: Server,
                                                                 clock: Clock) -> None:
    """A client that cannot be bounded answers, but too late: no VIP, and no busy loop."""

    class Slow(View):
        def replace(self, obj: Any) -> dict[str, Any]:
            clock.advance(2.5)
            return super().replace(obj)

    election = VIPElection("node-a_test", lambda g: Slow(server, "node-a", NS, g.lease_name),
                           [group()], clock=clock, rand=lambda: 0.0)
    assert [t.kind for t in election.step()] == ["acquired"]  # the create is quick
    clock.advance(1.0)
    changes = election.step()  # renewed, but 2.5 s after it started: not held
    assert [t.kind for t in changes] == ["lost"]
    assert "renew deadline of 2 s" in changes[0].detail
    assert election.held() == set()
    assert election.next_due() == clock()  # a fresh candidate, due once ...
    calls = len(server.calls)
    election.step()
    assert len(server.calls) == calls + 2  # ... (it finds the Lease in its name and renews)
    assert election.held() == set()  # late again: never held, whatever the Lease says
    assert [t.kind for t in election.step()] == []  # nothing was reported held, nothing lost


def test_the_agent_role_grants_exactly_the_verbs_the_client_uses(
        stub: KubernetesLeaseClient) -> None:
    from lvs_operator.api.rbac import AGENT_HA_LEASE_RULES, AGENT_RULES

    lease = {"metadata": {"name": "x", "namespace": NS, "resourceVersion": "1"}, "spec": {}}
    Stub.replies = [(404, status(404, "not found")), (201, lease), (200, lease), (200, lease)]
    election = VIPElection("node-a_test", lambda g: stub, [group()], rand=lambda: 0.0)
    election.step()
    election.release_all()
    verbs = {"GET": "get", "POST": "create", "PUT": "update"}
    used = sorted({verbs[m] for m, _, _ in Stub.seen}, key=["get", "create", "update"].index)
    rule, = AGENT_HA_LEASE_RULES
    assert rule == {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": used}
    assert not any("leases" in r["resources"] for r in AGENT_RULES)  # not cluster-wide
