"""The CRDs on a real kube-apiserver: accepted, printing their columns, and rejecting every
invalid manifest of the shared table with a message that names the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.data.invalid_manifests import INVALID_CASES
from tests.harness.controlplane import LocalControlPlane

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


@pytest.fixture(scope="module")
def crds(control_plane: LocalControlPlane) -> LocalControlPlane:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for name in ("virtualservices.lvs.dev", "realservers.lvs.dev"):
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              f"crd/{name}")
    return control_plane


def _example_objects() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "lvs.dev/v1alpha1":
                docs.append(doc)
    return docs


def test_every_example_is_accepted(crds: LocalControlPlane):
    docs = _example_objects()
    assert len(docs) >= 20
    crds.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-",
                 input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.desc for c in INVALID_CASES])
def test_invalid_manifest_is_rejected_naming_the_field(crds: LocalControlPlane, case):
    done = crds.kubectl("create", "--dry-run=server", "-f", "-", check=False,
                        input=json.dumps(case.manifest()))
    assert done.returncode != 0, f"the apiserver accepted: {case.desc}"
    assert "is invalid" in done.stderr, done.stderr
    assert case.field + ":" in done.stderr or case.field + "[" in done.stderr, done.stderr


def test_defaults_are_applied_by_the_apiserver(crds: LocalControlPlane):
    vs = {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
          "metadata": {"name": "defaults", "namespace": "default"},
          "spec": {"address": "192.0.2.99", "ports": [{"port": 80}],
                   "directors": {"nodeSelector": {}}, "backends": {"service": {"name": "x"}}}}
    out = crds.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                       input=json.dumps(vs)).stdout
    spec = json.loads(out)["spec"]
    assert spec["scheduler"] == {"name": "wlc", "flags": []}
    assert spec["forwarding"] == {"method": "NAT"}
    assert spec["ports"] == [{"port": 80, "protocol": "TCP"}]
    assert spec["drain"]["timeoutSeconds"] == 300


def test_printer_columns_and_short_names(crds: LocalControlPlane):
    crds.kubectl("create", "namespace", "columns")
    crds.kubectl("apply", "-n", "columns", "-f",
                 str(ROOT / "examples" / "nat-wrr-portmap" / "virtualservice.yaml"))
    table = crds.kubectl("get", "lvsvs", "-n", "columns").stdout.splitlines()
    assert table[0].split() == ["NAME", "VIP", "PORTS", "MARK", "SCHEDULER", "MODE", "BACKENDS",
                                "READY", "AGE"]
    row = table[1]
    assert row[table[0].index("VIP"):].split()[0] == "192.0.2.10"
    assert row[table[0].index("SCHEDULER"):].split()[:2] == ["wrr", "NAT"]
    assert row[table[0].index("MARK"):table[0].index("SCHEDULER")].strip() == ""  # no fwmark
    servers = crds.kubectl("get", "lvsrs", "-n", "columns").stdout.splitlines()
    assert servers[0].split() == ["NAME", "ADDRESS", "PORT", "WEIGHT", "STATE", "NODE", "HEALTH",
                                  "AGE"]
    assert servers[1].split()[:4] == ["web-nat-1", "198.51.100.11", "3", "Enabled"]
    both = crds.kubectl("get", "lvs", "-n", "columns", "-o", "name").stdout.split()  # category
    assert sorted(both) == ["realserver.lvs.dev/web-nat-1", "realserver.lvs.dev/web-nat-2",
                            "virtualservice.lvs.dev/web-nat"]
    explained = crds.kubectl("explain", "virtualservice.spec.forwarding.method").stdout
    assert "NAT, DR, TUN or FULLNAT" in explained
    # Leave no VirtualService behind: later tests run the operator on this API server, and
    # this one's VIP:port would (rightly) win a conflict against the demo's newer copy.
    crds.kubectl("delete", "-n", "columns", "-f",
                 str(ROOT / "examples" / "nat-wrr-portmap" / "virtualservice.yaml"))
