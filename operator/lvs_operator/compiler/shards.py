"""A node plan as API objects no larger than etcd allows: one `NodePlan` plus `NodePlanShard`s.

A director of 10,000 VirtualServices with 100 backends each has a million destinations: tens
of megabytes of JSON, and no single Kubernetes object may pass 1 MiB. So the plan is cut in
two: node-wide settings that stay small (sysctls, tunnel devices) live in the `NodePlan`
itself, and every keyed record (IPVS services with their destinations, VIPs, ipsets, mark and
SNAT rules, lo VIPs) goes to one of `count` shards chosen by a stable hash of its identity
key. The `NodePlan` lists each shard's name and digest, so an agent fetches only the shards
whose digest changed and can tell a shard written for a newer plan from the one it expects.

`PlanSharder` keeps the previous cut of each node and reports which objects to write: a
change to one backend rewrites one shard and the `NodePlan`, not the whole plan.
Pure code: no I/O, same plan in, byte-identical objects out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .nodeplan import address_order, service_order
from .plan import (
    PLAN_FORMAT_VERSION,
    BackendPlan,
    DirectorPlan,
    NodePlan,
    plan_from_dict,
    plan_to_dict,
)

__all__ = [
    "SHARD_LIMIT_BYTES",
    "SHARD_TARGET_BYTES",
    "PlanSharder",
    "PublishedPlan",
    "ShardError",
    "ShardRef",
    "assemble_plan",
    "merge_plans",
    "shard_name",
    "split_plan",
]

# A shard is re-cut (the count doubles) when one grows past the limit; the count halves when
# the whole plan would fit in a quarter of the shards at the target size. Both far below
# etcd's 1.5 MiB request limit and the 1 MiB the design allows.
SHARD_TARGET_BYTES = 256 * 1024
SHARD_LIMIT_BYTES = 768 * 1024
MAX_SHARDS = 4096


class ShardError(ValueError):
    """Shards that do not form the plan their NodePlan describes (yet)."""


def shard_name(node: str, index: int) -> str:
    """`<node>.<index>`: unique per node, since the index is the last dot-free label."""
    return f"{node}.{index}"


def _slot(key: object, count: int) -> int:
    # A real hash of the key's text: stable across processes (hash() is salted per process),
    # and it spreads near-identical keys (192.0.2.1, 192.0.2.2, ...) evenly, which crc32 did not.
    if count <= 1:
        return 0
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def split_plan(plan: NodePlan, count: int) -> tuple[NodePlan, list[NodePlan]]:
    """(node-wide part, `count` shard parts); `merge_plans` puts them back together."""
    if count < 1:
        raise ValueError("count must be at least 1")
    d, b = plan.director, plan.backend
    buckets: list[dict[str, list[Any]]] = [
        {f: [] for f in ("services", "vips", "ipsets", "marks", "snats", "lo")}
        for _ in range(count)
    ]
    for name, records in (
        ("services", d.services),
        ("vips", d.vips),
        ("ipsets", d.ipsets),
        ("marks", d.mark_rules),
        ("snats", d.snat_rules),
        ("lo", b.vips),
    ):
        for rec in records:
            buckets[_slot(rec.key, count)][name].append(rec)
    root = NodePlan(
        plan.node,
        DirectorPlan(sysctls=d.sysctls),
        BackendPlan(tunnels=b.tunnels, sysctls=b.sysctls),
    )
    parts = [
        NodePlan(
            plan.node,
            DirectorPlan(
                services=tuple(x["services"]),
                vips=tuple(x["vips"]),
                ipsets=tuple(x["ipsets"]),
                mark_rules=tuple(x["marks"]),
                snat_rules=tuple(x["snats"]),
            ),
            BackendPlan(vips=tuple(x["lo"])),
        )
        for x in buckets
    ]
    return root, parts


def merge_plans(root: NodePlan, parts: Iterable[NodePlan]) -> NodePlan:
    """The whole plan, in the compiler's canonical order, from `split_plan`'s pieces."""
    services, vips, ipsets, marks, snats, lo = [], [], [], [], [], []  # type: ignore[var-annotated]
    for p in parts:
        services.extend(p.director.services)
        vips.extend(p.director.vips)
        ipsets.extend(p.director.ipsets)
        marks.extend(p.director.mark_rules)
        snats.extend(p.director.snat_rules)
        lo.extend(p.backend.vips)
    services.sort(key=lambda s: service_order(s.key))
    vips.sort(key=address_order)
    lo.sort(key=address_order)
    ipsets.sort(key=lambda s: s.key)
    marks.sort(key=lambda m: m.key)
    snats.sort(key=lambda s: s.key)
    return NodePlan(
        root.node,
        DirectorPlan(
            services=tuple(services),
            vips=tuple(vips),
            ipsets=tuple(ipsets),
            mark_rules=tuple(marks),
            snat_rules=tuple(snats),
            sysctls=root.director.sysctls,
        ),
        BackendPlan(vips=tuple(lo), tunnels=root.backend.tunnels, sysctls=root.backend.sysctls),
    )


def _records(part: NodePlan) -> int:
    d = part.director
    return (len(d.services) + len(d.vips) + len(d.ipsets) + len(d.mark_rules)
            + len(d.snat_rules) + len(part.backend.vips))


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class ShardRef:
    name: str
    digest: str


@dataclass(frozen=True, slots=True)
class PublishedPlan:
    """What to write for one node: the NodePlan spec (always, if anything changed), the shard
    specs that changed, and the shard names that are no longer part of the plan."""

    node: str
    spec: dict[str, Any] | None  # None: nothing changed
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    obsolete: tuple[str, ...] = ()


def _root_spec(node: str, root: NodePlan, refs: Sequence[ShardRef]) -> dict[str, Any]:
    return {
        "node": node,
        "formatVersion": PLAN_FORMAT_VERSION,
        "plan": plan_to_dict(root),
        "shards": [{"name": r.name, "digest": r.digest} for r in refs],
    }


class _NodeCut:
    """The previous cut of one node: what each shard held and its digest."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.parts: list[NodePlan | None] = [None] * count
        self.refs: list[ShardRef | None] = [None] * count
        self.sizes: list[int] = [0] * count
        self.root_spec: dict[str, Any] | None = None


class PlanSharder:
    """Cuts node plans into shards and remembers the last cut, so that publishing after a
    change costs one pass over the plan's records plus the JSON of the shards that changed."""

    def __init__(
        self, target_bytes: int = SHARD_TARGET_BYTES, limit_bytes: int = SHARD_LIMIT_BYTES
    ) -> None:
        self.target_bytes = target_bytes
        self.limit_bytes = limit_bytes
        self._cuts: dict[str, _NodeCut] = {}

    def known(self, node: str, spec: Mapping[str, Any], shards: Mapping[str, Mapping[str, Any]]
              ) -> None:
        """Seed the memory with what is already published (after an operator restart), so an
        unchanged plan is not written again."""
        refs = [ShardRef(str(r["name"]), str(r["digest"])) for r in spec.get("shards", [])]
        cut = _NodeCut(max(1, len(refs)))
        cut.root_spec = dict(spec)
        for i, ref in enumerate(refs):
            body = shards.get(ref.name)
            if body is None or body.get("digest") != ref.digest:
                continue
            try:
                cut.parts[i] = plan_from_dict(dict(body["plan"]))
            except (KeyError, TypeError, ValueError):
                continue
            cut.refs[i] = ref
            cut.sizes[i] = len(_canonical(body["plan"]))
        self._cuts[node] = cut

    def forget(self, node: str) -> list[str]:
        """The shard names of a node that no longer gets a plan."""
        cut = self._cuts.pop(node, None)
        return [] if cut is None else [shard_name(node, i) for i in range(cut.count)]

    def update(self, plan: NodePlan) -> PublishedPlan:
        node = plan.node
        cut = self._cuts.get(node)
        if cut is None:
            cut = self._cuts[node] = _NodeCut(1)
        published_count = cut.count
        root, parts = split_plan(plan, cut.count)
        changed = self._serialise_changed(node, cut, parts)
        grown = False
        # Re-cut until the sizes fit; once grown, never shrink in the same update (no
        # oscillation), and stop at a cut that is filled: it is always the one published.
        for _ in range(MAX_SHARDS.bit_length()):
            wanted = self._wanted_count(cut, parts)
            if wanted == cut.count or (grown and wanted < cut.count):
                break
            grown = grown or wanted > cut.count
            cut = self._cuts[node] = _NodeCut(wanted)
            root, parts = split_plan(plan, cut.count)
            changed = self._serialise_changed(node, cut, parts)
        refs = [r for r in cut.refs if r is not None]
        if len(refs) != cut.count:  # would publish a plan missing records: never
            raise AssertionError(f"shard cut of node {node} is incomplete")
        spec = _root_spec(node, root, refs)
        obsolete = tuple(shard_name(node, i) for i in range(cut.count, published_count))
        if spec == cut.root_spec and not changed and not obsolete:
            return PublishedPlan(node, None)
        cut.root_spec = spec
        return PublishedPlan(node, spec, changed, obsolete)

    def _wanted_count(self, cut: _NodeCut, parts: list[NodePlan]) -> int:
        total = sum(cut.sizes)
        wanted = cut.count
        while wanted < MAX_SHARDS and total > wanted * self.target_bytes:
            wanted *= 2
        while wanted > 1 and total * 4 < wanted * self.target_bytes:
            wanted //= 2
        biggest = max(range(cut.count), key=lambda i: cut.sizes[i])
        if (
            wanted == cut.count
            and cut.sizes[biggest] > self.limit_bytes
            and _records(parts[biggest]) > 1  # one record that big cannot be split further
            and wanted < MAX_SHARDS
        ):
            wanted *= 2
        return wanted

    def _serialise_changed(
        self, node: str, cut: _NodeCut, parts: list[NodePlan]
    ) -> dict[str, dict[str, Any]]:
        changed: dict[str, dict[str, Any]] = {}
        for i, part in enumerate(parts):
            if cut.parts[i] == part and cut.refs[i] is not None:
                continue
            body = plan_to_dict(part)
            text = _canonical(body)
            digest = _digest(text)
            name = shard_name(node, i)
            cut.parts[i] = part
            cut.sizes[i] = len(text)
            if cut.refs[i] is not None and cut.refs[i] == ShardRef(name, digest):
                continue
            cut.refs[i] = ShardRef(name, digest)
            changed[name] = {
                "node": node,
                "index": i,
                "digest": digest,
                "formatVersion": PLAN_FORMAT_VERSION,
                "plan": body,
            }
        return changed


def assemble_plan(spec: Mapping[str, Any], shards: Mapping[str, Mapping[str, Any]]) -> NodePlan:
    """The agent's side: a NodePlan spec and the shard specs it lists -> the whole plan.

    Raises ShardError when a listed shard is missing or carries another digest (the operator
    is between writing shards and the NodePlan: wait for the next NodePlan), ValueError for a
    plan format this code does not read."""
    try:
        root = plan_from_dict(dict(spec["plan"]))
        refs = [(str(r["name"]), str(r["digest"])) for r in spec.get("shards", [])]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"NodePlan spec is malformed: {exc}") from exc
    parts = []
    for name, digest in refs:
        body = shards.get(name)
        if body is None:
            raise ShardError(f"NodePlanShard {name} is missing")
        if body.get("digest") != digest:
            raise ShardError(
                f"NodePlanShard {name} has digest {body.get('digest')!r}, the NodePlan "
                f"expects {digest!r}"
            )
        try:
            parts.append(plan_from_dict(dict(body["plan"])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"NodePlanShard {name} is malformed: {exc}") from exc
    if root.node != spec.get("node"):
        raise ValueError(f"NodePlan plan names node {root.node!r}, spec {spec.get('node')!r}")
    return merge_plans(root, parts)
