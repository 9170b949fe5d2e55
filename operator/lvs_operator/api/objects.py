"""Cluster objects as the compiler sees them, and the parser from Kubernetes manifests.

Our own kinds (VirtualService, RealServer) are parsed through the schema-driven parser, so
every error names its field. Built-in kinds (Service, EndpointSlice, v1 Endpoints, Node) are
read by hand: only the fields LVS needs, and fast, because a large cluster has a million
endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .schema import FieldError, SpecError, parse
from .types import RealServerSpec, VirtualServiceSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "ClusterObject",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "Node",
    "ObjectRef",
    "RealServer",
    "Service",
    "ServicePort",
    "VirtualService",
    "parse_manifest",
    "parse_manifests",
]

API_GROUP = "lvs.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Identity of an object: what errors, status and Events are attached to."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if not self.namespace:
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class VirtualService:
    ref: ObjectRef
    spec: VirtualServiceSpec
    labels: Mapping[str, str]
    generation: int = 1
    creation_timestamp: str = ""
    uid: str = ""


@dataclass(frozen=True, slots=True)
class RealServer:
    ref: ObjectRef
    spec: RealServerSpec
    labels: Mapping[str, str]
    generation: int = 1
    creation_timestamp: str = ""
    uid: str = ""


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str
    target_port: int | str | None


@dataclass(frozen=True, slots=True)
class Service:
    ref: ObjectRef
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint's conditions as EndpointSlice reports them; `ready` takes new traffic,
    `serving and terminating` means drain."""

    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    ref: ObjectRef
    service_name: str
    address_type: str  # IPv4 | IPv6 | FQDN
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]
    from_legacy_endpoints: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    ref: ObjectRef
    labels: Mapping[str, str]


ClusterObject = VirtualService | RealServer | Service | EndpointSlice | Node


def _meta(doc: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[ObjectRef, dict[str, Any]]:
    meta = doc.get("metadata") or {}
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise SpecError(f"{kind} (unnamed)", [FieldError("metadata.name", "is required")])
    namespace = (meta.get("namespace") or "default") if namespaced else ""
    return ObjectRef(kind, namespace, meta["name"]), dict(meta)


def _labels(meta: Mapping[str, Any]) -> dict[str, str]:
    labels = meta.get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _ours(
    doc: Mapping[str, Any], ref: ObjectRef, meta: dict[str, Any]
) -> VirtualService | RealServer:
    spec_cls = VirtualServiceSpec if ref.kind == "VirtualService" else RealServerSpec
    spec, errors = parse(spec_cls, doc.get("spec"), "spec")
    if errors or spec is None:
        raise SpecError(str(ref), errors)
    labels = _labels(meta)
    generation = int(meta.get("generation") or 1)
    created = str(meta.get("creationTimestamp") or "")
    uid = str(meta.get("uid") or "")
    if isinstance(spec, VirtualServiceSpec):
        return VirtualService(ref, spec, labels, generation, created, uid)
    assert isinstance(spec, RealServerSpec)
    return RealServer(ref, spec, labels, generation, created, uid)


def _service(doc: Mapping[str, Any], ref: ObjectRef) -> Service:
    ports = []
    for p in (doc.get("spec") or {}).get("ports") or ():
        ports.append(
            ServicePort(
                name=str(p.get("name") or ""),
                port=int(p["port"]),
                protocol=str(p.get("protocol") or "TCP"),
                target_port=p.get("targetPort"),
            )
        )
    return Service(ref=ref, ports=tuple(ports))


def _endpoint_slice(
    doc: Mapping[str, Any], ref: ObjectRef, meta: Mapping[str, Any]
) -> EndpointSlice:
    service = _labels(meta).get(SERVICE_NAME_LABEL, "")
    ports = tuple(
        EndpointPort(str(p.get("name") or ""), int(p["port"]), str(p.get("protocol") or "TCP"))
        for p in doc.get("ports") or ()
        if p.get("port") is not None
    )
    endpoints = []
    for ep in doc.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        # Kubernetes: a nil `ready` means ready; nil `serving` means the same as ready.
        ready = cond.get("ready") is not False
        serving = cond.get("serving")
        endpoints.append(
            Endpoint(
                addresses=tuple(ep.get("addresses") or ()),
                ready=ready,
                serving=ready if serving is None else bool(serving),
                terminating=bool(cond.get("terminating")),
                node_name=ep.get("nodeName"),
            )
        )
    return EndpointSlice(
        ref=ref,
        service_name=service,
        address_type=str(doc.get("addressType") or "IPv4"),
        ports=ports,
        endpoints=tuple(endpoints),
    )


def _legacy_endpoints(doc: Mapping[str, Any], ref: ObjectRef) -> EndpointSlice:
    """v1 Endpoints, the fallback when a cluster has no EndpointSlices: one slice per subset."""
    ports: tuple[EndpointPort, ...] = ()
    endpoints: list[Endpoint] = []
    for subset in doc.get("subsets") or ():
        ports = tuple(
            EndpointPort(str(p.get("name") or ""), int(p["port"]), str(p.get("protocol") or "TCP"))
            for p in subset.get("ports") or ()
        )
        for ready, key in ((True, "addresses"), (False, "notReadyAddresses")):
            for a in subset.get(key) or ():
                endpoints.append(Endpoint((a["ip"],), ready, ready, False, a.get("nodeName")))
    family = "IPv6" if any(":" in e.addresses[0] for e in endpoints) else "IPv4"
    return EndpointSlice(ref, ref.name, family, ports, tuple(endpoints), from_legacy_endpoints=True)


def parse_manifest(doc: Mapping[str, Any]) -> ClusterObject | None:
    """One manifest to one cluster object; None for kinds LVS does not read.

    Raises SpecError (never anything else for bad input) naming the object and each field.
    """
    api_version = str(doc.get("apiVersion") or "")
    kind = str(doc.get("kind") or "")
    if api_version == API_VERSION and kind in ("VirtualService", "RealServer"):
        ref, meta = _meta(doc, kind, namespaced=True)
        return _ours(doc, ref, meta)
    if api_version.startswith(API_GROUP + "/"):
        raise SpecError(
            f"{kind} {api_version}",
            [
                FieldError(
                    "apiVersion",
                    f"unsupported; this version of lvs-operator reads "
                    f"{API_VERSION} VirtualService and RealServer",
                    api_version,
                )
            ],
        )
    try:
        if api_version == "v1" and kind == "Service":
            ref, _ = _meta(doc, kind, namespaced=True)
            return _service(doc, ref)
        if api_version == "discovery.k8s.io/v1" and kind == "EndpointSlice":
            ref, meta = _meta(doc, kind, namespaced=True)
            return _endpoint_slice(doc, ref, meta)
        if api_version == "v1" and kind == "Endpoints":
            ref, _ = _meta(doc, kind, namespaced=True)
            return _legacy_endpoints(doc, ref)
        if api_version == "v1" and kind == "Node":
            ref, meta = _meta(doc, kind, namespaced=False)
            return Node(ref=ref, labels=_labels(meta))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, SpecError):
            raise
        name = (doc.get("metadata") or {}).get("name", "(unnamed)")
        raise SpecError(f"{kind} {name}", [FieldError("", f"malformed {kind}: {exc!r}")]) from exc
    return None


def parse_manifests(
    docs: Iterable[Mapping[str, Any]],
) -> tuple[list[ClusterObject], list[SpecError]]:
    """Parse many manifests; invalid ones are reported, valid ones are kept."""
    objects: list[ClusterObject] = []
    errors: list[SpecError] = []
    for doc in docs:
        if not doc:
            continue
        if doc.get("kind") == "List":
            sub, sub_errors = parse_manifests(doc.get("items") or ())
            objects.extend(sub)
            errors.extend(sub_errors)
            continue
        try:
            obj = parse_manifest(doc)
        except SpecError as exc:
            errors.append(exc)
            continue
        if obj is not None:
            objects.append(obj)
    return objects, errors
