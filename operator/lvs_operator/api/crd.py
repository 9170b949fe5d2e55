"""Generate the CustomResourceDefinitions in `crds/` from the typed model.

`python -m lvs_operator.api.crd crds/` rewrites them; a unit test fails when the committed
files drift from the model, so the model stays the one source of truth.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .objects import API_GROUP
from .schema import openapi_schema
from .types import RealServerSpec, VirtualServiceSpec

__all__ = ["check_crds", "crd_documents", "dump", "render_crd", "write_crds"]

_CONDITION = {
    "type": "object",
    "description": "A condition in the Kubernetes convention (Accepted, Programmed, Ready, "
    "Degraded).",
    "required": ["type", "status", "lastTransitionTime", "reason", "message"],
    "properties": {
        "type": {"type": "string", "maxLength": 316},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "reason": {"type": "string", "maxLength": 1024},
        "message": {"type": "string", "maxLength": 32768},
    },
}

_NODE_STATUS = {
    "type": "object",
    "description": "What one node's agent has programmed for this object.",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string", "enum": ["Director", "Backend"]},
        "observedGeneration": {"type": "integer", "format": "int64"},
        "programmed": {"type": "boolean"},
        "message": {"type": "string"},
    },
}


def _status_schema(kind: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {
            "type": "array",
            "items": _CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "nodes": {
            "type": "array",
            "items": _NODE_STATUS,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    }
    if kind == "VirtualService":
        props["backends"] = {
            "type": "object",
            "description": "Resolved real servers.",
            "properties": {
                "total": {"type": "integer"},
                "ready": {"type": "integer"},
                "draining": {"type": "integer"},
            },
        }
    else:
        props["health"] = {"type": "string", "description": "Up, Down or Unknown."}
    return {"type": "object", "properties": props}


_COLUMNS = {
    "VirtualService": [
        {"name": "VIP", "type": "string", "jsonPath": ".spec.address"},
        {"name": "Ports", "type": "string", "jsonPath": ".spec.ports[*].port"},
        {"name": "Mark", "type": "integer", "jsonPath": ".spec.firewallMark.mark"},
        {"name": "Scheduler", "type": "string", "jsonPath": ".spec.scheduler.name"},
        {"name": "Mode", "type": "string", "jsonPath": ".spec.forwarding.method"},
        {"name": "Backends", "type": "integer", "jsonPath": ".status.backends.total"},
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "RealServer": [
        {"name": "Address", "type": "string", "jsonPath": ".spec.address"},
        {"name": "Port", "type": "integer", "jsonPath": ".spec.port"},
        {"name": "Weight", "type": "integer", "jsonPath": ".spec.weight"},
        {"name": "State", "type": "string", "jsonPath": ".spec.state"},
        {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"},
        {"name": "Health", "type": "string", "jsonPath": ".status.health"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

_NAMES = {
    "VirtualService": ("virtualservices", "virtualservice", ["lvsvs"]),
    "RealServer": ("realservers", "realserver", ["lvsrs"]),
}


def render_crd(kind: str, spec_cls: type) -> dict[str, Any]:
    plural, singular, short = _NAMES[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short,
                "categories": ["lvs"],
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _COLUMNS[kind],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": " ".join((spec_cls.__doc__ or "").split()),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(spec_cls),
                                "status": _status_schema(kind),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_documents() -> dict[str, dict[str, Any]]:
    """File name -> CRD document."""
    return {
        f"virtualservices.{API_GROUP}.yaml": render_crd("VirtualService", VirtualServiceSpec),
        f"realservers.{API_GROUP}.yaml": render_crd("RealServer", RealServerSpec),
    }


def dump(doc: dict[str, Any]) -> str:
    header = "# Generated from operator/lvs_operator/api/types.py by `make crds`; do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in crd_documents().items():
        path = directory / name
        path.write_text(dump(doc))
        written.append(path)
    return written


def check_crds(directory: Path) -> list[str]:
    """Names of CRD files that differ from what the model generates."""
    stale = []
    for name, doc in crd_documents().items():
        path = directory / name
        if not path.exists() or path.read_text() != dump(doc):
            stale.append(str(path))
    return stale


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    directory = Path(args[0] if args else "crds")
    if check:
        stale = check_crds(directory)
        for path in stale:
            print(f"{path} is out of date with operator/lvs_operator/api/types.py; run `make crds`")
        return 1 if stale else 0
    for p in write_crds(directory):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
