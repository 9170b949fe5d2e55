"""A node plan cut into NodePlan + NodePlanShard objects comes back whole, stays under the
size limit, and a small change rewrites only the shard it lands in."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import (
    Destination,
    DirectorPlan,
    IPVSService,
    NodePlan,
    ServiceKey,
    plan_to_json,
)
from lvs_operator.compiler.shards import (
    PlanSharder,
    ShardError,
    assemble_plan,
    merge_plans,
    shard_name,
    split_plan,
)

from .test_properties import clusters


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.integers(1, 9))
def test_split_then_merge_is_the_same_plan(docs, count):
    result = compile_cluster([parse_manifest(d) for d in docs])
    for plan in result.plans.values():
        root, parts = split_plan(plan, count)
        assert len(parts) == count
        assert plan_to_json(merge_plans(root, parts)) == plan_to_json(plan)


def big_director(services: int, dests: int, node: str = "dir-1") -> NodePlan:
    svcs = tuple(
        IPVSService(
            ServiceKey(4, "tcp", f"198.18.{i // 250}.{i % 250 + 1}", 80, 0),
            "wrr",
            destinations=tuple(
                Destination(f"198.19.{j // 250}.{j % 250 + 1}", 8080, "masq", 1,
                            source=f"default/vs-{i}")
                for j in range(dests)
            ),
            owner=f"default/vs-{i}",
        )
        for i in range(services)
    )
    return NodePlan(node, DirectorPlan(services=svcs))


def _publish(sharder: PlanSharder, plan: NodePlan, store: dict[str, dict]) -> dict:
    out = sharder.update(plan)
    assert out.spec is not None
    store.update(out.shards)
    for name in out.obsolete:
        del store[name]
    return out.spec


def test_a_large_plan_is_cut_into_shards_under_the_limit():
    plan = big_director(2000, 20)  # ~40,000 destinations, several MiB of JSON
    sharder = PlanSharder(target_bytes=256 * 1024, limit_bytes=768 * 1024)
    store: dict[str, dict] = {}
    spec = _publish(sharder, plan, store)
    sizes = [len(json.dumps(body)) for body in store.values()]
    assert len(store) == len(spec["shards"]) > 4
    assert max(sizes) < 768 * 1024
    assert len(json.dumps(spec)) < 64 * 1024
    assert plan_to_json(assemble_plan(spec, store)) == plan_to_json(plan)


def test_one_changed_destination_rewrites_one_shard_and_the_nodeplan():
    plan = big_director(400, 20)
    sharder = PlanSharder(target_bytes=32 * 1024, limit_bytes=96 * 1024)
    store: dict[str, dict] = {}
    spec = _publish(sharder, plan, store)
    assert len(spec["shards"]) > 8
    svc = plan.director.services[123]
    changed = svc._replace(destinations=(svc.destinations[0]._replace(weight=7),
                                         *svc.destinations[1:]))
    services = list(plan.director.services)
    services[123] = changed
    plan2 = plan._replace(director=plan.director._replace(services=tuple(services)))
    out = sharder.update(plan2)
    assert out.spec is not None and len(out.shards) == 1 and not out.obsolete
    store.update(out.shards)
    assert plan_to_json(assemble_plan(out.spec, store)) == plan_to_json(plan2)
    assert sharder.update(plan2).spec is None  # nothing changed: nothing to write


def test_shrinking_plan_drops_shards():
    sharder = PlanSharder(target_bytes=32 * 1024, limit_bytes=96 * 1024)
    store: dict[str, dict] = {}
    big = _publish(sharder, big_director(400, 20), store)
    out = sharder.update(NodePlan("dir-1"))
    assert out.spec is not None
    assert len(out.spec["shards"]) == 1
    assert set(out.obsolete) == {r["name"] for r in big["shards"]} - {shard_name("dir-1", 0)}


def test_restarted_publisher_writes_nothing_for_an_unchanged_plan():
    plan = big_director(300, 10)
    first = PlanSharder(target_bytes=32 * 1024)
    store: dict[str, dict] = {}
    spec = _publish(first, plan, store)
    second = PlanSharder(target_bytes=32 * 1024)
    second.known("dir-1", spec, store)
    assert second.update(plan).spec is None


def test_assembling_refuses_a_shard_written_for_another_plan():
    sharder = PlanSharder(target_bytes=32 * 1024)
    store: dict[str, dict] = {}
    spec = _publish(sharder, big_director(300, 10), store)
    name = spec["shards"][0]["name"]
    stale = dict(store[name], digest="0" * 20)
    with pytest.raises(ShardError, match="digest"):
        assemble_plan(spec, {**store, name: stale})
    missing = {k: v for k, v in store.items() if k != name}
    with pytest.raises(ShardError, match="missing"):
        assemble_plan(spec, missing)
    with pytest.raises(ValueError, match="formatVersion"):
        assemble_plan({**spec, "plan": {**spec["plan"], "formatVersion": 99}}, store)


def test_sharder_never_publishes_an_unfilled_cut_and_spreads_similar_keys():
    """Regression: tiny limits made the count oscillate and left a cut with no shards."""
    sharder = PlanSharder(target_bytes=4096, limit_bytes=8192)
    plan = big_director(40, 3)
    store: dict[str, dict] = {}
    spec = _publish(sharder, plan, store)
    assert len(spec["shards"]) >= 1
    assert plan_to_json(assemble_plan(spec, store)) == plan_to_json(plan)
    _root, parts = split_plan(plan, 8)
    assert sum(1 for p in parts if p.director.services) >= 6  # 40 keys over 8 slots
