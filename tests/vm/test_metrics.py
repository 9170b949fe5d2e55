"""`/metrics` of a real lvs-agent over real IPVS: every documented agent series is there with
the right labels, and the traffic series move by exactly the traffic sent.

    client 203.0.113.2 --- [director] VIP 203.0.113.10:80 (NAT, wrr) --- rs1 198.51.100.11:8080 (w3)
                                                                      --- rs2 198.51.100.12:8080 (w1)

The agent runs as the installed command does, standalone with a plan file (`--plan FILE
--watch --netns DIRECTOR --health-address 127.0.0.1:PORT`): it programs the director's
namespace and serves the real HTTP endpoint. The test scrapes it before and after a bounded
burst of HTTP requests from the client namespace (fresh connection each).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import plan_to_dict
from tests.unit.builders import rs, vs
from tests.unit.test_metrics_docs import documented
from tests.vm.lvslab import LAB_NODES, MakeNetns, get, routed, who_http

AGENT = [sys.executable, "-m", "lvs_operator.agent.main"]
VIP, PORT, TARGET = "203.0.113.10", 80, 8080
WEIGHTS = {"198.51.100.11": 3, "198.51.100.12": 1}
NAMES = {"198.51.100.11": "rs1", "198.51.100.12": "rs2"}
REQUESTS = 12  # bounded: one new connection each
SERVICE = {"namespace": "shop", "name": "web", "protocol": "tcp", "address": VIP,
           "port": str(PORT)}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _scrape(port: int) -> Samples:
    status, text = _http(port, "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, series: str, /, **labels: str) -> float:
    return samples[(series, tuple(sorted(labels.items())))]


def _backend(address: str) -> dict[str, str]:
    return {**SERVICE, "backend_address": address, "backend_port": str(TARGET)}


def _wait(check: Callable[[], bool], seconds: float, what: str, agent: subprocess.Popen[str]
          ) -> None:
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds * 4) + 1):  # bounded in count and in time
        if agent.poll() is not None:
            raise AssertionError(f"the agent exited ({agent.returncode}) waiting for {what}")
        try:
            if check():
                return
        except (OSError, KeyError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def _write_plan(path: Path) -> None:
    docs = [vs("web", VIP, namespace="shop", ports=[{"port": PORT, "targetPort": TARGET}],
               scheduler={"name": "wrr"}, forwarding={"method": "NAT"},
               # checked RealServers: the lvs_health_* series are served too (both stay up)
               healthCheck={"type": "TCP", "connectTimeoutSeconds": 1, "intervalSeconds": 5}),
            *[rs(NAMES[ip], ip, app="web", namespace="shop", weight=w)
              for ip, w in WEIGHTS.items()]]
    objects = [parse_manifest(d) for d in [*LAB_NODES, *docs]]
    result = compile_cluster([o for o in objects if o is not None])
    errors = [str(i) for i in result.all_issues() if i.severity == "Error"]
    assert not errors, errors
    plan = result.plans["director"]
    [svc] = plan.director.services
    assert {d.address: d.weight for d in svc.destinations} == WEIGHTS
    assert svc.owner == "shop/web"
    path.write_text(json.dumps([plan_to_dict(plan)]))


def test_metrics_follow_real_traffic(make_netns: MakeNetns, tmp_path: Path) -> None:
    lab = routed(make_netns)
    plan = tmp_path / "plan.json"
    _write_plan(plan)
    port = _free_port()
    servers = ExitStack()  # listening before the agent starts: its health checks pass
    for name in NAMES.values():
        servers.enter_context(who_http(lab[name], TARGET, name))
    agent = subprocess.Popen(
        [*AGENT, "--node", "director", "--plan", str(plan), "--watch", "--interval", "5",
         "--netns", lab["director"].name, "--state-dir", str(tmp_path / "state"),
         "--health-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: _http(port, "/readyz")[0] == 200, 90, "/readyz", agent)
        assert _http(port, "/healthz") == (200, "ok\n")
        _wait(lambda: _value(_scrape(port), "lvs_service_connections_total", **SERVICE) == 0,
              30, "the service in /metrics", agent)
        before = _scrape(port)
        _check_every_documented_series(before)

        answers = Counter(get(lab["client"], VIP, PORT)[0] for _ in range(REQUESTS))
        assert sum(answers.values()) == REQUESTS
        assert answers == {"rs1": REQUESTS * 3 // 4, "rs2": REQUESTS // 4}  # wrr 3:1

        # the kernel folds its per-CPU counters into what netlink reports every 2 s
        def moved() -> bool:
            nonlocal after
            after = _scrape(port)
            return _value(after, "lvs_service_connections_total", **SERVICE) >= REQUESTS

        after: Samples = {}
        _wait(moved, 15, "the connection counter to move", agent)
        time.sleep(2.5)  # one more estimator tick: packets of the last connections' close
        after = _scrape(port)
        measured = _check_traffic(before, after, answers)
        ipvsadm = lab["director"].run(["ipvsadm", "-Ln", "--stats", "--exact"]).stdout
        out = os.environ.get("LVS_VM_OUTDIR")
        if out:
            Path(out, "test_metrics.json").write_text(json.dumps(measured, indent=1))
        print("\nmetrics before/after:", json.dumps(measured, indent=1), "\n", ipvsadm)
    finally:
        servers.close()
        agent.send_signal(signal.SIGTERM)
        try:
            output, _ = agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            output, _ = agent.communicate(timeout=10)
        print("\nthe agent's output:\n" + output[-6000:])
    assert agent.returncode == 0, output


def _check_every_documented_series(samples: Samples) -> None:
    """Every documented agent series is present, with exactly its documented labels."""
    agent_series = {n: v for n, v in documented().items() if not n.startswith("lvs_operator_")}
    assert len(agent_series) > 25
    for name, (kind, labels) in agent_series.items():
        sample_name = f"{name}_count" if kind == "histogram" else name
        found = [dict(lbl) for (n, lbl) in samples if n == sample_name]
        assert found, f"{name} is documented but not served"
        for lbl in found:
            assert set(lbl) == labels, (name, lbl)
    services = {lbl for (n, lbl) in samples if n == "lvs_service_connections_total"}
    assert services == {tuple(sorted(SERVICE.items()))}
    backends = {dict(lbl)["backend_address"]: dict(lbl)
                for (n, lbl) in samples if n == "lvs_backend_weight"}
    assert set(backends) == set(WEIGHTS)
    for address in WEIGHTS:
        assert backends[address] == _backend(address)
        assert _value(samples, "lvs_backend_weight", **_backend(address)) == WEIGHTS[address]
        assert _value(samples, "lvs_backend_state", **_backend(address), state="ready") == 1
        assert _value(samples, "lvs_backend_state", **_backend(address), state="draining") == 0
    assert _value(samples, "lvs_agent_ipvs_up") == 1
    assert _value(samples, "lvs_agent_operations_total", kind="ipvs/add-service") == 1
    assert _value(samples, "lvs_agent_operations_total", kind="ipvs/add-dest") == 2
    assert _value(samples, "lvs_agent_errors_total") == 0
    assert _value(samples, "lvs_agent_reconcile_passes_total", kind="full") >= 1


def _check_traffic(before: Samples, after: Samples, answers: Counter[str]
                   ) -> dict[str, dict[str, float]]:
    def delta(name: str, labels: dict[str, str]) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    measured: dict[str, dict[str, float]] = {}
    for name in ("lvs_service_connections_total", "lvs_service_incoming_packets_total",
                 "lvs_service_outgoing_packets_total", "lvs_service_incoming_bytes_total",
                 "lvs_service_outgoing_bytes_total", "lvs_service_active_connections",
                 "lvs_service_inactive_connections", "lvs_service_connections_per_second",
                 "lvs_service_incoming_bytes_per_second"):
        measured[name] = {"before": _value(before, name, **SERVICE),
                          "after": _value(after, name, **SERVICE)}
    for address, name in NAMES.items():
        for series in ("lvs_backend_connections_total", "lvs_backend_incoming_packets_total",
                       "lvs_backend_outgoing_packets_total", "lvs_backend_active_connections",
                       "lvs_backend_inactive_connections", "lvs_backend_weight"):
            measured[f"{series}{{{name}}}"] = {
                "before": _value(before, series, **_backend(address)),
                "after": _value(after, series, **_backend(address))}

    assert delta("lvs_service_connections_total", SERVICE) == REQUESTS
    for direction in ("incoming", "outgoing"):  # NAT: replies come back through the director
        # each HTTP exchange is at least SYN, request, ACK(s), FIN each way
        assert delta(f"lvs_service_{direction}_packets_total", SERVICE) >= 3 * REQUESTS
        assert delta(f"lvs_service_{direction}_bytes_total", SERVICE) > 40 * 3 * REQUESTS
    for address, name in NAMES.items():
        labels = _backend(address)
        assert delta("lvs_backend_connections_total", labels) == answers[name]
        assert delta("lvs_backend_incoming_packets_total", labels) >= 3 * answers[name]
        assert delta("lvs_backend_outgoing_packets_total", labels) >= 3 * answers[name]
        assert delta("lvs_backend_incoming_bytes_total", labels) > 0
        assert delta("lvs_backend_outgoing_bytes_total", labels) > 0
        assert _value(after, "lvs_backend_weight", **labels) == WEIGHTS[address]
    # every connection is closed; its entry lingers (FIN_WAIT/TIME_WAIT: inactive) for minutes
    active = {a: _value(after, "lvs_backend_active_connections", **_backend(a)) for a in NAMES}
    inactive = {a: _value(after, "lvs_backend_inactive_connections", **_backend(a))
                for a in NAMES}
    assert _value(after, "lvs_service_active_connections", **SERVICE) == sum(active.values())
    assert _value(after, "lvs_service_inactive_connections", **SERVICE) == sum(inactive.values())
    for address, name in NAMES.items():
        assert 0 <= active[address] <= answers[name]
        assert 0 < active[address] + inactive[address] <= answers[name]
    total = sum(active.values()) + sum(inactive.values())
    assert total <= REQUESTS
    return measured
