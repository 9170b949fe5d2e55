"""The health and metrics endpoint (observability/): /healthz, /readyz and /metrics on
127.0.0.1 and a free port, the documented series of the operator and the agent, and the
agent's own liveness and readiness checks driven with a fake clock."""

from __future__ import annotations

import asyncio
import http.client
import re
from collections.abc import Iterator
from typing import Any

import pytest

from lvs_operator.observability import (
    AgentMetrics,
    HealthServer,
    LoopWatch,
    OperatorMetrics,
    build_version,
    parse_address,
)

from .test_agent_cluster import NODE, Rig
from .test_reconcile import plans, web


class Switch:
    """A check whose answer the test sets."""

    def __init__(self, ok: bool, message: str) -> None:
        self.ok, self.message = ok, message

    def __call__(self) -> tuple[bool, str]:
        return self.ok, self.message


def get(server: HealthServer, path: str, accept: str | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def operator_metrics() -> OperatorMetrics:
    return OperatorMetrics(version="1.2.3")


@pytest.fixture
def served(operator_metrics: OperatorMetrics) -> Iterator[tuple[HealthServer, Switch, Switch]]:
    healthz, readyz = Switch(True, "ok"), Switch(False, "standby: the Lease has not been read")
    server = HealthServer(("127.0.0.1", 0), healthz=healthz, readyz=readyz,
                          registry=operator_metrics.registry)
    with server:
        yield server, healthz, readyz


def test_healthz_and_readyz_answer_200_or_503_with_the_check_message(
        served: tuple[HealthServer, Switch, Switch]) -> None:
    server, healthz, readyz = served
    assert server.port > 0
    assert get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert get(server, "/readyz")[0::2] == (503, "standby: the Lease has not been read\n")
    readyz.ok, readyz.message = True, "leader"
    assert get(server, "/readyz")[0::2] == (200, "leader\n")
    readyz.message = "standby: lease held by lvs-operator-0"
    assert get(server, "/readyz")[0::2] == (200, "standby: lease held by lvs-operator-0\n")
    healthz.ok, healthz.message = False, "the publisher has stopped"
    assert get(server, "/healthz")[0::2] == (503, "the publisher has stopped\n")
    assert get(server, "/healthz?verbose")[0] == 503
    assert get(server, "/nope")[0] == 404


def test_a_check_that_raises_is_a_503_not_a_dead_server(operator_metrics: OperatorMetrics
                                                         ) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    with HealthServer(("127.0.0.1", 0), healthz=broken, readyz=broken,
                      registry=operator_metrics.registry) as server:
        status, _, body = get(server, "/healthz")
        assert status == 503 and "RuntimeError: boom" in body
        assert get(server, "/healthz")[0] == 503  # still serving


def series(text: str) -> dict[str, float]:
    """`name{labels}` -> value, from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def helps(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# HELP (\S+) (.+)$", text, re.M))


def test_operator_metrics_are_served_with_help(served: tuple[HealthServer, Switch, Switch],
                                               operator_metrics: OperatorMetrics) -> None:
    server = served[0]
    operator_metrics.leader.set(1)
    operator_metrics.publish_rounds.inc(3)
    operator_metrics.nodeplans_written.inc(2)
    status, content_type, text = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert series(text) == {
        "lvs_operator_leader": 1.0,
        "lvs_operator_publish_rounds_total": 3.0,
        "lvs_operator_nodeplans_written_total": 2.0,
        'lvs_operator_build_info{version="1.2.3"}': 1.0,
    }
    documented = helps(text)
    for name in ("lvs_operator_leader", "lvs_operator_publish_rounds_total",
                 "lvs_operator_nodeplans_written_total", "lvs_operator_build_info"):
        assert len(documented[name]) > 20, name
    assert re.search(r"^# TYPE lvs_operator_publish_rounds_total counter$", text, re.M)
    assert re.search(r"^# TYPE lvs_operator_leader gauge$", text, re.M)


def test_openmetrics_when_the_scraper_asks(served: tuple[HealthServer, Switch, Switch]) -> None:
    status, content_type, text = get(served[0], "/metrics",
                                     accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_agent_metrics_are_served_with_help() -> None:
    metrics = AgentMetrics(version="9.9.9")
    metrics.observe_pass(full=True, seconds=0.2, failed=False, generation=4)
    metrics.observe_pass(full=False, seconds=0.003, failed=True, generation=5)
    with HealthServer(("127.0.0.1", 0), healthz=Switch(True, "ok"),
                      readyz=Switch(True, "generation 5 applied"),
                      registry=metrics.registry) as server:
        status, _, text = get(server, "/metrics")
    assert status == 200
    got = series(text)
    assert got['lvs_agent_reconcile_passes_total{kind="full"}'] == 1.0
    assert got['lvs_agent_reconcile_passes_total{kind="cached"}'] == 1.0
    assert got["lvs_agent_reconcile_failures_total"] == 1.0
    assert got["lvs_agent_plan_generation"] == 5.0
    assert got['lvs_agent_build_info{version="9.9.9"}'] == 1.0
    assert got["lvs_agent_reconcile_duration_seconds_count"] == 2.0
    assert got["lvs_agent_reconcile_duration_seconds_sum"] == pytest.approx(0.203)
    assert got['lvs_agent_reconcile_duration_seconds_bucket{le="0.005"}'] == 1.0
    assert got['lvs_agent_reconcile_duration_seconds_bucket{le="0.25"}'] == 2.0
    assert got['lvs_agent_reconcile_duration_seconds_bucket{le="+Inf"}'] == 2.0
    assert not any(name.endswith("_created") for name in got)
    documented = helps(text)
    for name in ("lvs_agent_reconcile_passes_total", "lvs_agent_reconcile_duration_seconds",
                 "lvs_agent_plan_generation", "lvs_agent_reconcile_failures_total",
                 "lvs_agent_build_info"):
        assert len(documented[name]) > 20, name


def test_each_process_has_its_own_registry() -> None:
    one, two = AgentMetrics(), AgentMetrics()
    one.failures.inc()
    assert two.registry.get_sample_value("lvs_agent_reconcile_failures_total") == 0.0
    assert one.registry.get_sample_value("lvs_agent_reconcile_failures_total") == 1.0
    assert OperatorMetrics().registry.get_sample_value(
        "lvs_operator_build_info", {"version": build_version()}) == 1.0


def test_a_taken_port_fails_at_start(operator_metrics: OperatorMetrics) -> None:
    with HealthServer(("127.0.0.1", 0), healthz=Switch(True, "ok"), readyz=Switch(True, "ok"),
                      registry=operator_metrics.registry) as first:
        second = HealthServer(("127.0.0.1", first.port), healthz=Switch(True, "ok"),
                              readyz=Switch(True, "ok"), registry=operator_metrics.registry)
        with pytest.raises(OSError):
            second.start()


@pytest.mark.parametrize(("text", "want"), [
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    (":9474", ("", 9474)),
    ("[::]:9474", ("::", 9474)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["8080", "host:", "host:http", ":::80", "h:70000"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_loop_watch_fails_when_the_loop_stalls() -> None:
    now = [100.0]
    watch = LoopWatch(period=1.0, clock=lambda: now[0])

    async def started() -> None:
        watch.start()
        await asyncio.sleep(0)
        assert watch.check(60.0) == (True, "event loop running")
        watch.stop()

    asyncio.run(started())
    now[0] += 30
    assert watch.check(60.0)[0]
    now[0] += 32
    ok, message = watch.check(60.0)
    assert not ok and "has not run for 61.0 s" in message


# ---- the agent's checks


def agent_rig(**kw: Any) -> Rig:
    return Rig(interval=10.0, **kw)


def test_agent_ready_after_its_first_pass() -> None:
    rig = agent_rig()
    assert rig.agent.readiness() == (False, f"NodePlan {NODE} not read yet")
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    assert rig.agent.readiness() == (True, "generation 1 applied")
    registry = rig.agent.metrics.registry
    assert registry.get_sample_value("lvs_agent_reconcile_passes_total", {"kind": "full"}) == 1
    assert registry.get_sample_value("lvs_agent_plan_generation") == 1
    assert registry.get_sample_value("lvs_agent_reconcile_duration_seconds_count") == 1


def test_agent_without_a_nodeplan_is_ready_and_says_so() -> None:
    rig = agent_rig()
    rig.agent.step()
    assert rig.agent.readiness() == (True, f"no NodePlan for node {NODE} yet")
    assert rig.agent.liveness() == (True, "ok")


def test_agent_liveness_follows_the_loop() -> None:
    rig = agent_rig()
    rig.publish(plans(*web("198.51.100.11")))
    for _ in range(20):  # steps wait on the fake clock: minutes pass, the loop lives
        rig.agent.step()
        assert rig.agent.liveness() == (True, "ok")
    # A step ends waiting on the watch for up to an interval (the fake clock moved by it):
    # a loop that then stops stepping stays live until max(3 x interval, 60 s) has passed.
    rig.clock.t += 40.0
    assert rig.agent.liveness()[0]
    rig.clock.t += 30.0
    ok, message = rig.agent.liveness()
    assert not ok
    assert re.fullmatch(r"the agent loop has not run for \d+ s \(limit 60 s\)", message)
    rig.agent.step()
    assert rig.agent.liveness()[0]


def test_agent_liveness_limit_grows_with_the_interval() -> None:
    rig = Rig(interval=30.0)
    rig.agent.step()
    rig.clock.t += 55.0
    assert rig.agent.liveness()[0]
    rig.clock.t += 40.0
    ok, message = rig.agent.liveness()
    assert not ok and message.endswith("(limit 90 s)")
