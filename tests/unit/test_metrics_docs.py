"""docs/metrics.md is the list of every exported series: each table row (name, type, labels)
must be what the operator's and the agent's registries expose, and the Grafana dashboard may
use no other series."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from lvs_operator.agent.reconcile import reconcile
from lvs_operator.agent.state import AgentState
from lvs_operator.kernel.fake import FakeIPVS
from lvs_operator.observability import AgentMetrics, OperatorMetrics

from .test_reconcile import KEY, fake_kernel, plans, web

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "charts" / "lvs-operator" / "dashboards" / "lvs-operator.json"
TEMPLATE = ROOT / "charts" / "lvs-operator" / "templates" / "grafana-dashboard.yaml"
ROW = re.compile(r"^\| `(lvs_[a-z0-9_]+)` \| (counter|gauge|histogram) \|([^|]*)\| (.+) \|$")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, labels), from every table row of docs/metrics.md."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `lvs_"):
            continue
        match = ROW.match(line)
        assert match, f"malformed row in {DOC.name}: {line}"
        name, kind, labels, meaning = match.groups()
        assert name not in rows, f"{name} is documented twice"
        assert len(meaning) > 15, f"{name}: say what it means"
        rows[name] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def exposed(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str]]]:
    """name (as in the text format: counters with _total) -> (type, label names)."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        assert family.samples, f"{name}: populate it in this test so its labels are checked"
        assert len(family.documentation) > 20, f"{name}: help text"
        out[name] = (family.type, frozenset(labels))
    return out


def operator_registry() -> CollectorRegistry:
    metrics = OperatorMetrics(version="1.0.0")
    metrics.compile_duration.labels("full").observe(0.5)
    metrics.set_virtualservices({("Accepted", "False", "PortConflict"): 1})
    return metrics.registry


def agent_registry() -> CollectorRegistry:
    metrics = AgentMetrics(version="1.0.0")
    metrics.observe_pass(full=True, seconds=0.1, failed=False, generation=1,
                         operations=["ipvs/add-service"])
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("198.51.100.11"))
    assert reconcile(plan, kernel, state).ok
    assert isinstance(kernel.ipvs, FakeIPVS)
    kernel.ipvs.add_traffic(KEY, ("198.51.100.11", 80), conns=1)
    metrics.watch_ipvs(kernel.ipvs.dump, lambda: plan,
                       owns=lambda k: k in state.owned_services)
    service = ("default", "web", "tcp", "192.0.2.10", "80")
    metrics.watch_health(lambda: [((*service, "198.51.100.11", "80"), False, 4)],
                         lambda: [(service, True, False)])
    return metrics.registry


def test_the_documented_series_are_exactly_the_exported_ones() -> None:
    doc = documented()
    want_operator = {n: v for n, v in doc.items() if n.startswith("lvs_operator_")}
    want_agent = {n: v for n, v in doc.items() if not n.startswith("lvs_operator_")}
    assert exposed(operator_registry()) == want_operator
    assert exposed(agent_registry()) == want_agent
    # the traffic series the issue asks for
    for name in ("lvs_service_connections_total", "lvs_service_incoming_bytes_total",
                 "lvs_service_connections_per_second", "lvs_backend_active_connections",
                 "lvs_backend_inactive_connections", "lvs_backend_weight", "lvs_backend_state",
                 "lvs_agent_operations_total", "lvs_agent_errors_total",
                 "lvs_agent_drift_repaired_total", "lvs_operator_compile_duration_seconds"):
        assert name in doc, name


def test_backends_off_drops_exactly_the_backend_series() -> None:
    metrics = AgentMetrics()
    metrics.watch_ipvs(lambda: [], lambda: None, backends=False)
    names = {f.name for f in metrics.registry.collect()}
    assert not {n for n in names if n.startswith("lvs_backend_")}
    assert "lvs_service_connections" in names


def _strings(node: Any, key: str) -> list[str]:
    """Every string under `key` anywhere in the dashboard, and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in (key, "definition") and isinstance(v, str):
                found.append(v)
            elif k == "query" and isinstance(v, dict | str):
                found.extend([v] if isinstance(v, str) else _strings(v, "query"))
            else:
                found.extend(_strings(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(_strings(item, key))
    return found


def test_the_dashboard_uses_only_documented_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    doc = documented()
    exprs = _strings(dashboard, "expr")
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        for name in re.findall(r"\blvs_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            series = base if doc.get(base, ("",))[0] == "histogram" else name
            assert series in doc, f"undocumented series {name!r} in: {expr}"
            used.add(series)
    # the panels the issue asks for
    for name in ("lvs_service_connections_total", "lvs_service_incoming_bytes_total",
                 "lvs_service_outgoing_bytes_total", "lvs_backend_active_connections",
                 "lvs_backend_weight", "lvs_backend_state", "lvs_agent_reconcile_duration_seconds",
                 "lvs_agent_operations_total", "lvs_agent_errors_total",
                 "lvs_operator_compile_duration_seconds", "lvs_operator_nodeplans_written_total"):
        assert name in used, name
    quantiles = " ".join(exprs)
    assert "histogram_quantile(0.5, sum by (le, instance) (rate(lvs_agent_reconcile" in quantiles
    assert "histogram_quantile(0.99, sum by (le, instance) (rate(lvs_agent_reconcile" in quantiles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "lvs-operator"


def test_the_chart_ships_that_dashboard_when_asked() -> None:
    text = TEMPLATE.read_text()
    assert text.startswith("{{- if .Values.metrics.grafanaDashboard.enabled }}")
    assert 'grafana_dashboard: "1"' in text
    assert '.Files.Get "dashboards/lvs-operator.json"' in text
    values = (ROOT / "charts" / "lvs-operator" / "values.yaml").read_text()
    assert "grafanaDashboard:\n    enabled: false" in values
