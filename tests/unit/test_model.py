"""The API model and the CRDs generated from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator.api.crd import crd_documents, dump
from lvs_operator.api.objects import RealServer, VirtualService, parse_manifest, parse_manifests
from lvs_operator.api.schema import SpecError
from lvs_operator.api.types import ForwardingMethod, SchedulerName
from lvs_operator.cli.manifests import load_documents
from tests.data.invalid_manifests import INVALID_CASES, valid_virtual_service

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.desc for c in INVALID_CASES])
def test_invalid_manifest_is_rejected_naming_the_field(case):
    with pytest.raises(SpecError) as info:
        parse_manifest(case.manifest())
    paths = [e.path for e in info.value.errors]
    assert any(p == case.field or p.startswith(case.field) for p in paths), paths
    assert str(info.value).startswith(f"{case.kind} default/")


def test_invalid_table_is_large_enough_for_the_apiserver_tier():
    assert len(INVALID_CASES) >= 25
    assert len({c.desc for c in INVALID_CASES}) == len(INVALID_CASES)


def test_every_example_parses():
    objects, errors = parse_manifests(load_documents([str(ROOT / "examples")]))
    assert errors == []
    kinds = {type(o).__name__ for o in objects}
    assert {"VirtualService", "RealServer", "Node", "Service", "EndpointSlice"} <= kinds
    methods = {o.spec.forwarding.method for o in objects if isinstance(o, VirtualService)}
    assert methods == set(ForwardingMethod)


def test_defaults_follow_ipvsadm():
    doc = valid_virtual_service()
    del doc["spec"]["scheduler"]
    doc["spec"]["persistence"] = {}
    vs = parse_manifest(doc)
    assert isinstance(vs, VirtualService)
    assert vs.spec.scheduler.name is SchedulerName.WLC
    assert vs.spec.persistence is not None and vs.spec.persistence.timeout == 360
    assert vs.spec.forwarding.method is ForwardingMethod.NAT
    rs = parse_manifest({"apiVersion": "lvs.dev/v1alpha1", "kind": "RealServer",
                         "metadata": {"name": "r"}, "spec": {"address": "198.51.100.1"}})
    assert isinstance(rs, RealServer) and rs.spec.weight == 1


def test_all_errors_are_reported_at_once_with_the_value():
    doc = valid_virtual_service()
    doc["spec"]["ports"] = [{"port": 0}, {"port": 80, "protocol": "ICMP"}]
    doc["spec"]["bogus"] = True
    with pytest.raises(SpecError) as info:
        parse_manifest(doc)
    rendered = {str(e) for e in info.value.errors}
    assert "spec.ports[0].port: must be at least 1 (got 0)" in rendered
    assert any(r.startswith("spec.ports[1].protocol: must be one of: TCP, UDP, SCTP") for r in rendered)
    assert any(r.startswith("spec.bogus: unknown field") for r in rendered)


def test_unsupported_version_of_our_group_is_an_error():
    doc = valid_virtual_service()
    doc["apiVersion"] = "lvs.dev/v9"
    with pytest.raises(SpecError, match="apiVersion"):
        parse_manifest(doc)


def test_other_kinds_are_ignored():
    assert parse_manifest({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "x"}}) is None


# --------------------------------------------------------------------------- CRDs


def test_committed_crds_are_generated_from_the_model():
    """Run `make crds` after changing operator/lvs_operator/api/types.py."""
    for name, doc in crd_documents().items():
        assert (ROOT / "crds" / name).read_text() == dump(doc), name


def _walk(schema: dict[str, Any], path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


@pytest.mark.parametrize("name", sorted(crd_documents()))
def test_crd_is_a_structural_apiextensions_v1_object(name):
    crd = yaml.safe_load((ROOT / "crds" / name).read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    # The user's objects are namespaced; the operator->agent plans are per node (cluster-wide).
    plan_kinds = {"NodePlan", "NodePlanShard"}
    kind = spec["names"]["kind"]
    assert spec["scope"] == ("Cluster" if kind in plan_kinds else "Namespaced")
    [version] = spec["versions"]
    assert version["served"] and version["storage"]
    if kind != "NodePlanShard":  # shards have no status: the NodePlan carries the agent's
        assert version["subresources"] == {"status": {}}
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root, ""):
        # structural: every node has a type, or is int-or-string
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for req in node.get("required", []):
            assert req in node["properties"], (path, req)
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                # map keys must be required or defaulted, or the apiserver refuses the CRD
                assert key in item.get("required", []) or "default" in item["properties"][key]
        if "enum" in node and "default" in node:
            assert node["default"] in node["enum"], path
        if node.get("type") == "array" and any(
            "x-kubernetes-validations" in s for _, s in _walk(node["items"], "")
        ):
            assert "maxItems" in node, f"{path}: CEL cost needs maxItems"
        if node.get("type") == "string" and "x-kubernetes-validations" in node:
            assert "maxLength" in node, f"{path}: CEL cost needs maxLength"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["rule"] and rule["message"]
    for col in version["additionalPrinterColumns"]:
        first = col["jsonPath"].split(".")[1].split("[")[0]
        assert first in ("spec", "status", "metadata"), col
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Age"}
