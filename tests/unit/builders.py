"""Tiny builders so tests read like the LVS setup they describe."""

from __future__ import annotations

import copy
from typing import Any

from lvs_operator.api.objects import ClusterObject, parse_manifest

DIRECTOR_LABELS = {"lvs.dev/director": "true"}


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def vs(name: str, address: str = "192.0.2.10", ports: Any = ((80, "TCP"),), *,
       created: str = "", namespace: str = "default", selector: dict[str, str] | None = None,
       **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "address": address,
        "directors": {"nodeSelector": {"matchLabels": dict(DIRECTOR_LABELS)}},
        "backends": {"realServerSelector": {"matchLabels": selector or {"app": name}}},
    }
    if ports:
        body["ports"] = [
            p if isinstance(p, dict) else {"port": p[0], "protocol": p[1]} for p in ports
        ]
    for key, value in spec.items():
        body[key] = copy.deepcopy(value)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService", "metadata": meta,
            "spec": body}


def rs(name: str, address: str, *, app: str, namespace: str = "default",
       **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lvs.dev/v1alpha1",
        "kind": "RealServer",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"address": address, **spec},
    }


def endpoint_slice(name: str, service: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]], address_type: str = "IPv4",
                   namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }


def ep(address: str, *, ready: bool = True, serving: bool | None = None,
       terminating: bool = False, node_name: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    out: dict[str, Any] = {"addresses": [address], "conditions": cond}
    if node_name:
        out["nodeName"] = node_name
    return out


def service(name: str, ports: list[dict[str, Any]], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"ports": ports}}


def objects(*docs: dict[str, Any]) -> list[ClusterObject]:
    out = []
    for d in docs:
        obj = parse_manifest(d)
        assert obj is not None, d
        out.append(obj)
    return out


def cluster(*docs: dict[str, Any], directors: tuple[str, ...] = ("dir-1",),
            others: tuple[str, ...] = ("node-1", "node-2")) -> list[ClusterObject]:
    """The given objects plus director and plain nodes."""
    nodes = [node(n, **DIRECTOR_LABELS) for n in directors] + [node(n) for n in others]
    return objects(*nodes, *docs)
