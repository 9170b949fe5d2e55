"""The operator's metrics: compile duration per publisher round, VirtualServices by condition
(conflicts among them), and the log lines of status changes, against an in-memory API."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest

from lvs_operator.controller.kube import ApiError
from lvs_operator.controller.operator import PLANS, Operator
from lvs_operator.controller.state import ControllerState
from lvs_operator.observability import JsonFormatter, OperatorMetrics

from .builders import DIRECTOR_LABELS, node, rs, vs
from .test_controller_state import World


def test_compile_time_is_noted_for_rounds_that_compile() -> None:
    world = World()
    assert world.state.plans_to_publish() == ([], [])
    assert world.state.last_compile is None  # nothing to compile
    world.apply(node("dir-1", **DIRECTOR_LABELS))
    world.apply(vs("web"))
    world.apply(rs("r0", "198.51.100.11", app="web"))
    world.round()
    kind, seconds = world.state.last_compile or ("", -1.0)
    assert kind == "full" and 0 <= seconds < 10
    world.round()
    assert world.state.last_compile is None  # a quiet round
    world.apply(rs("r1", "198.51.100.12", app="web"))
    world.round()
    assert world.state.last_compile is not None
    assert world.state.last_compile[0] == "incremental"


def test_virtualservices_are_counted_by_condition_and_conflicts_show() -> None:
    world = World()
    world.apply(node("dir-1", **DIRECTOR_LABELS))
    world.apply(vs("web", created="2026-01-01T00:00:00Z"))
    world.apply(vs("copy", created="2026-02-01T00:00:00Z"))  # same VIP:port, younger
    world.apply(rs("r0", "198.51.100.11", app="web"))
    world.round()
    counts = world.state.virtualservice_conditions()
    assert counts[("Accepted", "True", "Accepted")] == 1
    assert counts[("Accepted", "False", "PortConflict")] == 1
    assert sum(n for (c, _, _), n in counts.items() if c == "Programmed") == 2
    assert world.state.virtualservice_conditions() is counts  # not recounted without change
    world.state.forget("VirtualService", "default", "copy")
    counts = world.state.virtualservice_conditions()
    assert ("Accepted", "False", "PortConflict") not in counts
    assert counts[("Accepted", "True", "Accepted")] == 1


class FakeKube:
    """Just enough of KubeAPI for Operator.round: objects by path."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []

    def get(self, path: str, **_: str) -> dict[str, Any]:
        if path not in self.objects:
            raise ApiError(404, f"{path} not found")
        return copy.deepcopy(self.objects[path])

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = self.objects.get(path)
        if obj is None:
            raise ApiError(404, f"{path} not found")
        for key, value in body.items():
            if key == "metadata":
                obj["metadata"].update({k: v for k, v in value.items()
                                        if k != "resourceVersion"})
            else:
                obj[key] = value
                obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        return copy.deepcopy(obj)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/events"):
            self.events.append(body)
            return body
        obj = copy.deepcopy(body)
        obj["metadata"]["generation"] = 1
        self.objects[f"{path}/{obj['metadata']['name']}"] = obj
        return copy.deepcopy(obj)

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        obj = self.objects.setdefault(path.removesuffix("/status"), {"metadata": {}})
        obj["status"] = ops[0]["value"]
        return obj

    def delete(self, path: str) -> None:
        self.objects.pop(path, None)


def test_operator_rounds_feed_the_metrics_and_log_status_changes(
        caplog: pytest.LogCaptureFixture) -> None:
    state = ControllerState()
    api = FakeKube()
    metrics = OperatorMetrics(version="1.0.0")
    op = Operator(state, api, metrics=metrics)  # type: ignore[arg-type]
    for doc in (node("dir-1", **DIRECTOR_LABELS), vs("web", created="2026-01-01T00:00:00Z"),
                vs("copy", created="2026-02-01T00:00:00Z"),
                rs("r0", "198.51.100.11", app="web")):
        doc["metadata"].setdefault("uid", "uid-" + doc["metadata"]["name"])
        state.observe(doc)
        if doc["kind"] == "VirtualService":
            api.objects[f"/apis/lvs.dev/v1alpha1/namespaces/default/virtualservices/"
                        f"{doc['metadata']['name']}"] = copy.deepcopy(doc)
    state.synced = True
    caplog.set_level(logging.INFO, logger="lvs_operator")
    asyncio.run(op.round())
    reg = metrics.registry
    assert reg.get_sample_value("lvs_operator_compile_duration_seconds_count",
                                {"kind": "full"}) == 1
    assert reg.get_sample_value("lvs_operator_nodeplans_written_total") == 1
    assert f"{PLANS}/dir-1" in api.objects
    assert reg.get_sample_value("lvs_operator_virtualservices", {
        "condition": "Accepted", "status": "False", "reason": "PortConflict"}) == 1
    assert reg.get_sample_value("lvs_operator_virtualservices", {
        "condition": "Accepted", "status": "True", "reason": "Accepted"}) == 1
    asyncio.run(op.round())  # nothing changed: nothing compiled
    assert reg.get_sample_value("lvs_operator_compile_duration_seconds_count",
                                {"kind": "full"}) == 1
    assert reg.get_sample_value("lvs_operator_compile_duration_seconds_count",
                                {"kind": "incremental"}) is None
    conflict = [r for r in caplog.records if "PortConflict" in r.getMessage()]
    assert conflict and conflict[0].levelno == logging.WARNING
    line = JsonFormatter().format(conflict[0])
    assert '"object":{"kind":"VirtualService","name":"copy","namespace":"default"}' in line
    assert '"reason":"PortConflict"' in line


def test_a_failed_publish_names_the_node(caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(FakeKube):
        def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            if "nodeplan" in path:
                raise ApiError(500, "etcd is on fire")
            return super().create(path, body)

    state = ControllerState()
    op = Operator(state, Refusing(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    for doc in (node("dir-1", **DIRECTOR_LABELS), vs("web"), rs("r0", "198.51.100.11",
                                                                 app="web")):
        state.observe(doc)
    state.synced = True
    caplog.set_level(logging.INFO, logger="lvs_operator")
    asyncio.run(op.round())
    [record] = [r for r in caplog.records if "publishing the plan" in r.getMessage()]
    assert record.node == "dir-1"  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    assert '"node":"dir-1"' in line and '"object":{"kind":"NodePlan","name":"dir-1"}' in line
