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

__all__ = [
    "check_crds",
    "crd_documents",
    "dump",
    "render_crd",
    "render_plan_crd",
    "write_crds",
]

_CONDITION = {
    "type": "object",
    "description": "A condition in the Kubernetes convention (Accepted, Programmed, Ready, "
    "Degraded, Healthy).",
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
                "ready": {"type": "integer", "description": "Taking new connections: not "
                          "draining and not failing a health check."},
                "draining": {"type": "integer"},
                "down": {"type": "integer", "description": "Real servers a director reports "
                         "failing their health checks (only with spec.healthCheck)."},
            },
        }
    else:
        props["health"] = {
            "type": "string",
            "description": "Up, Down or Unknown: the verdict of the health checks of the "
            "VirtualServices it backs, as their directors report it.",
            "enum": ["Up", "Down", "Unknown"],
        }
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


# The operator -> agent contract (compiler/shards.py): cluster-scoped, written by the operator
# only; the agent reads them and writes NodePlan status. The plan body is the versioned plan
# format (`formatVersion`), validated by the agent, so the schema keeps it opaque.
_PLAN_BODY = {
    "type": "object",
    "description": "Plan records in the plan format named by formatVersion (see lvsctl plan "
    "--format json).",
    "x-kubernetes-preserve-unknown-fields": True,
}
_NODEPLAN_SPEC = {
    "type": "object",
    "required": ["node", "formatVersion", "plan", "shards"],
    "properties": {
        "node": {"type": "string", "maxLength": 253},
        "formatVersion": {"type": "integer"},
        "plan": _PLAN_BODY,
        "shards": {
            "type": "array",
            "description": "The NodePlanShards that hold the rest of the plan, with the digest "
            "each must carry.",
            "maxItems": 4096,
            "items": {
                "type": "object",
                "required": ["name", "digest"],
                "properties": {
                    "name": {"type": "string", "maxLength": 253},
                    "digest": {"type": "string", "maxLength": 64},
                },
            },
        },
    },
}
_VS_NAME = {"type": "string", "maxLength": 317, "description": "namespace/name"}
_NODEPLAN_HEALTH = {
    "type": "object",
    "description": "The verdicts of this director's health checks: counters, and only the "
    "servers that are down (the operator turns them into RealServer and VirtualService "
    "status and Events).",
    "properties": {
        "checked": {"type": "integer", "description": "Real servers under check (one per "
                    "IPVS service and destination)."},
        "down": {"type": "integer", "description": "Of those, how many are down."},
        "servers": {
            "type": "array",
            "description": "The down servers, sorted; at most 256 (see truncated).",
            "maxItems": 256,
            "items": {
                "type": "object",
                "required": ["virtualService", "address", "port"],
                "properties": {
                    "virtualService": _VS_NAME,
                    "realServer": _VS_NAME,
                    "address": {"type": "string", "maxLength": 64},
                    "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                    "detail": {"type": "string", "maxLength": 256,
                               "description": "What the last probe saw."},
                },
            },
        },
        "quorumLost": {"type": "array", "maxItems": 256, "items": _VS_NAME,
                       "description": "VirtualServices whose live weight is below quorum."},
        "sorryServer": {"type": "array", "maxItems": 256, "items": _VS_NAME,
                        "description": "VirtualServices served by their sorry server."},
        "truncated": {"type": "boolean", "description": "A list was cut at 256 entries."},
    },
}
_NODEPLAN_STATUS = {
    "type": "object",
    "description": "Written by the node's agent.",
    "properties": {
        "observedGeneration": {
            "type": "integer",
            "format": "int64",
            "description": "The NodePlan generation the agent has applied.",
        },
        "conditions": {
            "type": "array",
            "items": _CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "lastSyncTime": {"type": "string", "format": "date-time"},
        "agent": {"type": "string", "description": "Agent version and host."},
        "services": {"type": "integer"},
        "destinations": {"type": "integer"},
        "draining": {"type": "integer"},
        "failures": {"type": "array", "maxItems": 50, "items": {"type": "string"}},
        "warnings": {"type": "array", "maxItems": 50, "items": {"type": "string"}},
        "health": _NODEPLAN_HEALTH,
    },
}
_SHARD_SPEC = {
    "type": "object",
    "required": ["node", "index", "digest", "formatVersion", "plan"],
    "properties": {
        "node": {"type": "string", "maxLength": 253},
        "index": {"type": "integer", "minimum": 0},
        "digest": {"type": "string", "maxLength": 64},
        "formatVersion": {"type": "integer"},
        "plan": _PLAN_BODY,
    },
}


def render_plan_crd(kind: str) -> dict[str, Any]:
    """NodePlan (one per node, named after it) and NodePlanShard."""
    is_root = kind == "NodePlan"
    plural = "nodeplans" if is_root else "nodeplanshards"
    if is_root:
        columns = [
            {"name": "Shards", "type": "string", "jsonPath": ".spec.shards[*].name",
             "priority": 1},
            {"name": "Generation", "type": "integer", "jsonPath": ".metadata.generation"},
            {"name": "Applied", "type": "integer", "jsonPath": ".status.observedGeneration"},
            {
                "name": "Programmed",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Programmed")].status',
            },
            {"name": "Services", "type": "integer", "jsonPath": ".status.services"},
            {"name": "Last-Sync", "type": "date", "jsonPath": ".status.lastSyncTime"},
        ]
    else:
        columns = [
            {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
            {"name": "Index", "type": "integer", "jsonPath": ".spec.index"},
            {"name": "Digest", "type": "string", "jsonPath": ".spec.digest"},
        ]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    version: dict[str, Any] = {
        "name": "v1alpha1",
        "served": True,
        "storage": True,
        "additionalPrinterColumns": columns,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": (
                    "The kernel state one node's agent must program, published by the operator."
                    if is_root
                    else "Part of a NodePlan: the records whose identity hashes to this shard."
                ),
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": _NODEPLAN_SPEC if is_root else _SHARD_SPEC,
                    **({"status": _NODEPLAN_STATUS} if is_root else {}),
                },
            }
        },
    }
    if is_root:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": plural[:-1],
                "shortNames": ["lvsnp"] if is_root else ["lvsnps"],
                "categories": ["lvs"],
            },
            "versions": [version],
        },
    }


def crd_documents() -> dict[str, dict[str, Any]]:
    """File name -> CRD document."""
    return {
        f"virtualservices.{API_GROUP}.yaml": render_crd("VirtualService", VirtualServiceSpec),
        f"realservers.{API_GROUP}.yaml": render_crd("RealServer", RealServerSpec),
        f"nodeplans.{API_GROUP}.yaml": render_plan_crd("NodePlan"),
        f"nodeplanshards.{API_GROUP}.yaml": render_plan_crd("NodePlanShard"),
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
    """`[--check] DIR...`: write (or check) the CRDs in each directory: `crds/` for kubectl
    users and the chart's `crds/`, which Helm installs before anything else."""
    check = "--check" in argv
    directories = [Path(a) for a in argv if a != "--check"] or [Path("crds")]
    if check:
        stale = [path for d in directories for path in check_crds(d)]
        for path in stale:
            print(f"{path} is out of date with operator/lvs_operator/api/types.py; run `make crds`")
        return 1 if stale else 0
    for directory in directories:
        for p in write_crds(directory):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
