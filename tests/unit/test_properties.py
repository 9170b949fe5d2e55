"""Properties the compiler must have for any input, checked with hypothesis.

- determinism: the same objects in any order give byte-identical plans and the same issues;
- incremental == batch: any sequence of upserts and deletes ends where a fresh compile of the
  surviving objects ends;
- every invalid value of every field in the schema is rejected with an error naming that field.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs_operator.api.objects import ObjectRef, parse_manifest
from lvs_operator.api.schema import SpecError, openapi_schema
from lvs_operator.api.types import RealServerSpec, VirtualServiceSpec
from lvs_operator.compiler.engine import Compiler, compile_cluster
from lvs_operator.compiler.plan import plan_to_json

from .builders import endpoint_slice, ep, node, rs, vs

# --------------------------------------------------------------------------- random clusters

VIPS = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "2001:db8::10"]
RIPS4 = [f"198.51.100.{i}" for i in range(1, 9)]
RIPS6 = ["2001:db8:1::1", "2001:db8:1::2"]
APPS = ["a", "b", "c"]
NODES = ["dir-1", "dir-2", "n-1", "n-2", "n-3"]


@st.composite
def virtual_services(draw: st.DrawFn, name: str) -> dict[str, Any]:
    address = draw(st.sampled_from(VIPS))
    method = draw(st.sampled_from(["NAT", "DR", "TUN", "FULLNAT"]))
    scheduler = draw(st.sampled_from(["rr", "wrr", "sh", "mh", "lc"]))
    flags = draw(st.sampled_from([[], ["sh-port"], ["sh-port", "sh-fallback"]])) if (
        scheduler == "sh") else []
    spec: dict[str, Any] = {
        "forwarding": {"method": method},
        "scheduler": {"name": scheduler, "flags": flags},
    }
    if draw(st.booleans()):
        spec["persistence"] = {"timeout": draw(st.integers(1, 3600))}
    created = draw(st.sampled_from(["", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]))
    app = draw(st.sampled_from(APPS))
    if draw(st.integers(0, 4)) == 0:
        doc = vs(name, address, ports=None, created=created, selector={"app": app},
                 firewallMark={"mark": draw(st.integers(1, 3)), "ports": [{"port": 80}]}, **spec)
    else:
        port = draw(st.sampled_from([80, 443]))
        proto = draw(st.sampled_from(["TCP", "UDP"]))
        doc = vs(name, address, ports=[(port, proto)], created=created, selector={"app": app},
                 **spec)
    if draw(st.booleans()):
        doc["spec"]["backends"]["service"] = {"name": app}
    return doc


@st.composite
def clusters(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for n in NODES:
        labels = {"lvs.dev/director": "true"} if n.startswith("dir") and draw(
            st.booleans()) else {}
        docs.append(node(n, **labels))
    for i in range(draw(st.integers(0, 5))):
        docs.append(draw(virtual_services(f"vs-{i}")))
    for i in range(draw(st.integers(0, 6))):
        address = draw(st.sampled_from(RIPS4 + RIPS6))
        docs.append(rs(f"rs-{i}", address, app=draw(st.sampled_from(APPS)),
                       weight=draw(st.integers(0, 5)),
                       state=draw(st.sampled_from(["Enabled", "Draining", "Disabled"])),
                       nodeName=draw(st.sampled_from([*NODES, "ghost"]))))
    for app in APPS:
        if draw(st.booleans()):
            eps = [ep(a, ready=draw(st.booleans()), serving=True, terminating=draw(st.booleans()),
                      node_name=draw(st.sampled_from(NODES)))
                   for a in draw(st.lists(st.sampled_from(RIPS4), max_size=4))]
            docs.append(endpoint_slice(f"{app}-x", app, eps, ports=[{"name": "", "port": 8080}]))
    return docs


def _snapshot(result) -> tuple[dict[str, str], list[str]]:
    plans = {n: plan_to_json(p) for n, p in result.plans.items()}
    return plans, [str(i) for i in result.all_issues()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.randoms(use_true_random=False))
def test_same_input_any_order_gives_byte_identical_plans(docs, rnd):
    objs = [parse_manifest(d) for d in docs]
    first = _snapshot(compile_cluster(objs))
    shuffled = list(objs)
    rnd.shuffle(shuffled)
    assert _snapshot(compile_cluster(shuffled)) == first
    assert _snapshot(compile_cluster(objs)) == first  # and again: no hidden state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=25))
def test_incremental_updates_end_where_a_full_compile_ends(docs, steps):
    objs = [parse_manifest(d) for d in docs]
    compiler = Compiler()
    live: dict[ObjectRef, Any] = {}
    for obj in objs:
        compiler.upsert(obj)
        live[obj.ref] = obj
    for index, delete in steps:
        if not objs:
            break
        obj = objs[index % len(objs)]
        if delete:
            compiler.delete(obj.ref)
            live.pop(obj.ref, None)
        else:
            compiler.upsert(obj)
            live[obj.ref] = obj
        compiler.plans()  # read in between, as the operator does after each event
    incremental = compiler.result()
    batch = compile_cluster(live.values())
    assert _snapshot(incremental) == _snapshot(batch)


# --------------------------------------------------------------------------- invalid values

_VALID_BASE = {
    "VirtualService": vs("base", backends={"service": {"name": "svc"}}),
    "RealServer": rs("base", "198.51.100.11", app="x"),
}


def _bad_values(schema: dict[str, Any]) -> list[Any]:
    """Values the schema itself says are invalid at this node."""
    if schema.get("x-kubernetes-int-or-string"):
        return [3.5, [], {"a": 1}, 0, 65536, "Not_A_Name"]
    kind = schema.get("type")
    bad: list[Any] = []
    if kind == "integer":
        bad += ["1", 2.5, True]
        if "minimum" in schema:
            bad.append(schema["minimum"] - 1)
        if "maximum" in schema:
            bad.append(schema["maximum"] + 1)
    elif kind == "boolean":
        bad += ["yes", 1]
    elif kind == "string":
        bad += [7]
        if "enum" in schema:
            bad.append("NotAllowed")
        if "maxLength" in schema:
            bad.append("a" * (schema["maxLength"] + 1))
        if "pattern" in schema:
            bad.append("!! ")
        if any(r["rule"].startswith("isIP") for r in schema.get("x-kubernetes-validations", [])):
            bad += ["198.51.100.300", "not-an-address"]
    elif kind == "array":
        bad += ["not-a-list"]
        if "maxItems" in schema:
            bad.append([] if schema.get("minItems") else None)
    elif kind == "object":
        bad += ["not-an-object"]
        if "additionalProperties" in schema:
            bad.append({"key": 1})
    return [b for b in bad if b is not None]


def _leaves(schema: dict[str, Any], path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, b) for b in _bad_values(schema)] if path else []
    for name, sub in schema.get("properties", {}).items():
        out += _leaves(sub, (*path, name))
    return out


MUTATIONS = [("VirtualService", p, b) for p, b in _leaves(openapi_schema(VirtualServiceSpec), ())]
MUTATIONS += [("RealServer", p, b) for p, b in _leaves(openapi_schema(RealServerSpec), ())]


def test_mutation_table_covers_the_schema():
    paths = {p for _, p, _ in MUTATIONS}
    assert len(MUTATIONS) > 150
    for expected in [("address",), ("ports",), ("scheduler", "name"), ("forwarding", "tunnel", "port"),
                     ("persistence", "timeout"), ("firewallMark", "mark"), ("backends", "weight"),
                     ("healthCheck", "http", "path"), ("ha", "vrrp", "virtualRouterID"),
                     ("weight",), ("nodeName",)]:
        assert expected in paths, expected


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(MUTATIONS))
def test_every_invalid_value_is_rejected_naming_its_field(mutation):
    kind, path, bad = mutation
    doc = copy.deepcopy(_VALID_BASE[kind])
    target = doc["spec"]
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[path[-1]] = bad
    field = "spec." + ".".join(path)
    try:
        parse_manifest(doc)
    except SpecError as exc:
        named = [e.path for e in exc.errors]
        assert any(p == field or p.startswith((field + ".", field + "[")) for p in named), (
            field, bad, named)
        assert all(e.message for e in exc.errors)
    else:
        raise AssertionError(f"{kind} with {field}={bad!r} was accepted")
