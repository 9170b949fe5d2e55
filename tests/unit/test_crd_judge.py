"""The generated CRDs (OpenAPI schema + CEL rules) judge manifests exactly as the Python model.

Every `Rule` in `lvs_operator.api.types` is written twice: CEL for the apiserver, Python for
us. Here the CEL half runs, from the CRD YAML in `crds/`, through `crd_judge` (structural
defaulting, OpenAPI validation, CEL with the Kubernetes IP/CIDR library), and must:

- reject every manifest in INVALID_CASES (and EXTRA_CASES, which make every rule fire), naming
  the same field as the Python model;
- accept every VirtualService and RealServer under `examples/`;
- agree with the Python model, accept for accept and reject for reject, on random
  combinations of the risky fields (hypothesis).

REGRESSIONS holds the disagreements this judge found (since fixed in the model).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lvs_operator.api.objects import parse_manifest
from lvs_operator.api.schema import FieldError, SpecError
from lvs_operator.api.types import is_cidr, is_ip, is_unicast_ip
from tests.data.invalid_manifests import (
    INVALID_CASES,
    InvalidCase,
    valid_real_server,
    valid_virtual_service,
)

from .crd_judge import (
    BLOCKING,
    CEL_SKIPPED,
    DUPLICATE,
    INVALID,
    NOT_SUPPORTED,
    REQUIRED,
    TOO_LONG,
    TYPE_INVALID,
    UNKNOWN_FIELD,
    CRDJudge,
    JudgeError,
    cel_eval,
    go_pattern_match,
    judges_by_kind,
    k8s_is_cidr,
    k8s_is_ip,
    k8s_parse_cidr,
    k8s_parse_ip,
    schema_path,
)

ROOT = Path(__file__).resolve().parents[2]
JUDGES: dict[str, CRDJudge] = judges_by_kind(sorted((ROOT / "crds").glob("*.yaml")))
VS, RS = "VirtualService", "RealServer"


def judge(doc: dict[str, Any], *, strict: bool = False) -> list[JudgeError]:
    return JUDGES[doc["kind"]].validate(doc, strict=strict)


def model(doc: dict[str, Any]) -> list[FieldError]:
    """The Python model's errors; anything but SpecError escapes (and fails the test)."""
    try:
        parse_manifest(doc)
    except SpecError as exc:
        return exc.errors
    return []


def names(path: str, field: str) -> bool:
    return path == field or path.startswith(field)


def show(errors: list[Any]) -> str:
    return "\n".join(f"  - {e}" for e in errors) or "  (none)"


# =========================================================================== the tables

# Cases INVALID_CASES lacks, so that every CEL rule of both CRDs is falsified at least once
# (test_every_cel_rule_is_exercised). Same shape, same promise: both judges name `field`.
EXTRA_CASES: list[InvalidCase] = [
    InvalidCase("realServerSelector Exists with values",
                "spec.backends.realServerSelector.matchExpressions[0].values",
                set={"backends": {"realServerSelector": {"matchExpressions": [
                    {"key": "app", "operator": "Exists", "values": ["web"]}]}}}),
    InvalidCase("fwmark except range not a CIDR", "spec.firewallMark.exceptRanges",
                set={"firewallMark": {"mark": 7, "ports": [{"port": 80}],
                                      "exceptRanges": ["198.51.100.7/+8"]}}, unset=("ports",)),
    InvalidCase("fwmark except range of the other family", "spec.firewallMark",
                set={"firewallMark": {"mark": 7, "ports": [{"port": 80}],
                                      "exceptRanges": ["2001:db8::7/128"]}}, unset=("ports",)),
    InvalidCase("sourceNAT loopback", "spec.forwarding.sourceNAT.address",
                set={"forwarding": {"method": "FULLNAT", "sourceNAT": {"address": "127.0.0.1"}}}),
    InvalidCase("sorry server not an IP", "spec.healthCheck.quorum.sorryServer.address",
                set={"healthCheck": {"quorum": {"sorryServer": {"address": "sorry.example"}}}}),
    InvalidCase("VRRP unicast peer not an IP", "spec.ha.vrrp.unicastPeers",
                set={"ha": {"mode": "VRRP", "vrrp": {"virtualRouterID": 7,
                                                     "unicastPeers": ["198.51.100.1", "peer-2"]}}}),
    InvalidCase("vrrp settings with mode Lease", "spec.ha.vrrp",
                set={"ha": {"mode": "Lease", "vrrp": {"virtualRouterID": 7}}}),
    InvalidCase("lease settings with mode None", "spec.ha.lease",
                set={"ha": {"mode": "None", "lease": {}}}),
    InvalidCase("persistence prefix 0 on IPv6", "spec.persistence.prefixLength",
                set={"address": "2001:db8::10", "persistence": {"prefixLength": 0}}),
    InvalidCase("persistence engine sip on a TCP fwmark", "spec.persistence.engine",
                set={"persistence": {"engine": "sip"},
                     "firewallMark": {"mark": 7, "ports": [{"port": 5060}]}}, unset=("ports",)),
    InvalidCase("targetPort name on TUN", "spec.ports",
                set={"forwarding": {"method": "TUN"},
                     "ports": [{"port": 80, "targetPort": "http"}]}),
    InvalidCase("RealServer IPv6 link-local", "spec.address", kind=RS, set={"address": "fe80::1"}),
]

ALL_CASES = INVALID_CASES + EXTRA_CASES


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.desc for c in INVALID_CASES])
def test_crd_rejects_invalid_case(case: InvalidCase) -> None:
    errors = judge(case.manifest())
    assert errors, f"the CRD accepts {case.desc!r}"
    assert any(names(e.path, case.field) for e in errors), (
        f"{case.desc}: no error names {case.field}; got:\n{show(errors)}"
    )


@pytest.mark.parametrize("case", EXTRA_CASES, ids=[c.desc for c in EXTRA_CASES])
def test_both_halves_reject_extra_case(case: InvalidCase) -> None:
    doc = case.manifest()
    crd, py = judge(doc), model(doc)
    assert any(names(e.path, case.field) for e in crd), f"CRD:\n{show(crd)}"
    assert any(names(e.path, case.field) for e in py), f"model:\n{show(py)}"


def test_every_cel_rule_is_exercised() -> None:
    """Each (node, rule) of both CRDs is falsified by some case: no rule escapes the tables."""
    fired: set[tuple[str, str]] = set()
    for case in ALL_CASES:
        for e in judge(case.manifest()):
            if e.rule is not None and e.node is not None:
                fired.add((schema_path(e.node), e.rule))
    missing = [
        f"{kind} {path or '<root>'}: {rule}"
        for kind, j in JUDGES.items()
        for path, rule in j.rules()
        if (path, rule) not in fired
    ]
    assert not missing, "rules no case makes fail:\n" + "\n".join(missing)


def _example_docs() -> list[Any]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if isinstance(doc, dict) and doc.get("kind") in JUDGES:
                    rel = path.relative_to(ROOT / "examples")
                    out.append(pytest.param(doc, id=f"{rel.parent}/{doc['metadata']['name']}"))
    return out


EXAMPLES = _example_docs()


def test_examples_were_found() -> None:
    kinds = {p.values[0]["kind"] for p in EXAMPLES}
    assert kinds == {VS, RS}, kinds


@pytest.mark.parametrize("doc", EXAMPLES)
def test_crd_accepts_example(doc: dict[str, Any]) -> None:
    errors = judge(doc)
    assert not errors, show(errors)
    assert not model(doc)


# =========================================================================== building blocks


def test_defaulting_fills_nested_defaults_top_down() -> None:
    doc = valid_virtual_service()
    del doc["spec"]["forwarding"], doc["spec"]["scheduler"]
    doc["spec"]["ports"] = [{"port": 53}]
    doc["spec"]["healthCheck"] = {"type": "HTTP", "http": {}, "quorum": {}}
    doc["spec"]["ha"] = {"lease": {}}
    spec = JUDGES[VS].default(doc)["spec"]
    assert spec["forwarding"] == {"method": "NAT"}
    assert spec["scheduler"] == {"name": "wlc", "flags": []}
    assert spec["ports"] == [{"port": 53, "protocol": "TCP"}]
    assert spec["drain"] == {
        "timeoutSeconds": 300, "expireNodestConn": True, "expireQuiescentTemplate": True,
    }
    assert spec["onePacketScheduling"] is False
    assert spec["healthCheck"]["http"] == {"path": "/", "expectedStatusCodes": [200]}
    assert spec["healthCheck"]["quorum"] == {"minimum": 1, "hysteresis": 0}
    assert spec["ha"] == {
        "mode": "Lease",
        "lease": {"durationSeconds": 2, "renewDeadlineMilliseconds": 1500,
                  "retryPeriodMilliseconds": 500},
    }
    assert spec["directors"]["nodeSelector"]["matchExpressions"] == []
    assert "persistence" not in spec and "firewallMark" not in spec  # no default: stays absent
    assert not judge(doc)


def test_defaulting_treats_null_as_absent() -> None:
    doc = valid_virtual_service()
    doc["spec"]["forwarding"] = None  # has a default: defaulted
    doc["spec"]["persistence"] = None  # no default: dropped
    doc["spec"]["ports"] = [{"port": 80, "protocol": None}]
    spec = JUDGES[VS].default(doc)["spec"]
    assert spec["forwarding"] == {"method": "NAT"}
    assert "persistence" not in spec
    assert spec["ports"] == [{"port": 80, "protocol": "TCP"}]
    rs = valid_real_server()
    rs["spec"]["address"] = None
    assert [(e.path, e.type) for e in judge(rs) if e.path] == [("spec.address", REQUIRED)]


def test_unknown_fields_are_pruned_or_strict() -> None:
    doc = valid_virtual_service()
    doc["spec"]["scheduler"]["flagz"] = ["sh-port"]
    doc["spec"]["bogus"] = 1
    doc["metadata"]["labels"] = {"kept": "yes"}  # metadata is not the CRD schema's business
    stored, errors = JUDGES[VS].admit(doc)
    assert not errors
    assert "flagz" not in stored["spec"]["scheduler"] and "bogus" not in stored["spec"]
    assert stored["metadata"]["labels"] == {"kept": "yes"}
    strict = judge(doc, strict=True)
    assert {(e.path, e.type) for e in strict} == {
        ("spec.scheduler.flagz", UNKNOWN_FIELD), ("spec.bogus", UNKNOWN_FIELD),
    }
    assert model(doc)  # the Python model is strict too


def test_status_is_ignored_on_create() -> None:
    doc = valid_real_server()
    doc["status"] = {"health": 7, "conditions": [{"type": "Ready"}]}
    stored, errors = JUDGES[RS].admit(doc)
    assert not errors and "status" not in stored


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (8080, set()),
        ("http", set()),
        ("web-8080", set()),
        (0, {INVALID}),  # minimum: 1
        (70000, {INVALID}),  # maximum: 65535
        ("HTTP", {INVALID}),  # pattern: lowercase IANA name
        ("a" * 16, {TOO_LONG, INVALID}),  # maxLength 15, and the pattern
        ("", {INVALID}),
        (True, {TYPE_INVALID}),
        (8.5, {TYPE_INVALID}),
        (2**64, {TYPE_INVALID}),  # not an int64: the apiserver decodes it as a float
        ([80], {TYPE_INVALID}),
    ],
    ids=repr,
)
def test_int_or_string(target: Any, expected: set[str]) -> None:
    doc = valid_virtual_service()
    doc["spec"]["ports"] = [{"port": 80, "targetPort": target}]
    got = {e.type for e in judge(doc) if e.path == "spec.ports[0].targetPort"}
    assert got == expected
    assert bool(model(doc)) == bool(expected)


@pytest.mark.parametrize(
    ("ports", "duplicate_at"),
    [
        ([{"port": 80}, {"port": 80, "protocol": "TCP"}], "spec.ports[1]"),  # after defaulting
        ([{"port": 80}, {"port": 443}, {"port": 80}], "spec.ports[2]"),
        ([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], None),
        ([{"port": 80, "name": "a"}, {"port": 80, "name": "b"}], "spec.ports[1]"),
    ],
)
def test_list_map_duplicate_keys(ports: list[dict[str, Any]], duplicate_at: str | None) -> None:
    doc = valid_virtual_service()
    doc["spec"]["ports"] = ports
    dups = [e.path for e in judge(doc) if e.type == DUPLICATE]
    assert dups == ([duplicate_at] if duplicate_at else [])
    assert bool(model(doc)) == bool(duplicate_at)


def test_list_set_duplicates() -> None:
    doc = valid_virtual_service()
    doc["spec"]["scheduler"] = {"name": "sh", "flags": ["sh-port", "sh-fallback", "sh-port"]}
    errors = judge(doc)
    assert [(e.path, e.type) for e in errors] == [("spec.scheduler.flags[2]", DUPLICATE)]


def test_blocking_errors_skip_cel_like_the_apiserver() -> None:
    doc = valid_virtual_service()
    doc["spec"]["forwarding"] = {"method": "DR"}  # with a remapped port: a CEL failure ...
    doc["spec"]["ports"] = [{"port": 80, "protocol": "ICMP", "targetPort": 8080}]
    errors = judge(doc)  # ... that is never reported, because an enum error blocks CEL
    assert [(e.path, e.type) for e in errors] == [
        ("spec.ports[0].protocol", NOT_SUPPORTED), ("", INVALID),
    ]
    assert errors[-1].message == CEL_SKIPPED
    assert NOT_SUPPORTED in BLOCKING


def test_non_blocking_errors_keep_cel() -> None:
    doc = valid_virtual_service()
    doc["spec"]["forwarding"] = {"method": "DR"}
    doc["spec"]["ports"] = [{"port": 0, "targetPort": 8080}]
    errors = judge(doc)
    assert sorted((e.path, e.type, e.rule is not None) for e in errors) == [
        ("spec.ports", INVALID, True), ("spec.ports[0].port", INVALID, False),
    ]


def test_rule_field_path_reason_and_evaluation_errors() -> None:
    doc = valid_virtual_service()
    doc["spec"]["backends"] = {"weight": 1}
    [err] = judge(doc)
    assert (err.path, err.type, err.node) == ("spec.backends", REQUIRED, "spec.backends")
    doc = valid_virtual_service()
    doc["spec"]["forwarding"] = {"method": "TUN", "tunnel": {"type": "gue"}}
    [err] = judge(doc)
    assert (err.path, err.node) == ("spec.forwarding.tunnel.port", "spec.forwarding.tunnel")
    # ip() of a bad address is an evaluation error, reported at the rule's node (spec).
    doc = valid_virtual_service()
    doc["spec"]["address"] = "192.0.2.300"
    doc["spec"]["persistence"] = {"prefixLength": 24}
    errors = judge(doc)
    assert {e.path for e in errors} == {"spec.address", "spec"}
    assert any("evaluating rule" in e.message for e in errors if e.path == "spec")


# --------------------------------------------------------------------------- IP library

IP_TABLE = [
    # text, isIP, family, isGlobalUnicast
    ("192.0.2.10", True, 4, True),
    ("10.0.0.1", True, 4, True),  # private is still "global unicast" (Go)
    ("0.1.2.3", True, 4, True),
    ("2001:db8::10", True, 6, True),
    ("fd00::1", True, 6, True),
    ("::1.2.3.4", True, 6, True),  # IPv4-compatible, not IPv4-mapped
    ("255.255.255.255", True, 4, False),
    ("0.0.0.0", True, 4, False),
    ("::", True, 6, False),
    ("127.0.0.1", True, 4, False),
    ("127.255.0.1", True, 4, False),
    ("::1", True, 6, False),
    ("224.0.0.1", True, 4, False),
    ("239.1.1.1", True, 4, False),
    ("ff02::1", True, 6, False),
    ("169.254.1.1", True, 4, False),
    ("fe80::1", True, 6, False),
    ("febf::1", True, 6, False),
    ("fec0::1", True, 6, True),
    ("01.2.3.4", False, None, None),  # leading zero
    ("1.2.3.04", False, None, None),
    ("::ffff:1.2.3.4", False, None, None),  # IPv4-mapped
    ("::ffff:c0a8:1", False, None, None),  # IPv4-mapped, hex spelling
    ("fe80::1%eth0", False, None, None),  # zone
    ("2001:db8::1%eth0", False, None, None),
    ("192.0.2.300", False, None, None),
    ("1.2.3", False, None, None),
    ("1.2.3.4.5", False, None, None),
    ("1.2.3.4 ", False, None, None),
    (" 1.2.3.4", False, None, None),
    ("1::2::3", False, None, None),
    ("12345::", False, None, None),
    ("1:2:3:4:5:6:7:8:9", False, None, None),
    ("1:2:3:4:5:6:7:8::", False, None, None),
    ("1:2:3:4:5:6:1.2.3.4", True, 6, True),
    ("::01.2.3.4", False, None, None),
    ("", False, None, None),
    ("\u0661.\u0662.\u0663.\u0664", False, None, None),  # Arabic-Indic digits
    ("192.0.2.1/32", False, None, None),
]


@pytest.mark.parametrize(("text", "valid", "family", "unicast"), IP_TABLE, ids=repr)
def test_ip_functions(text: str, valid: bool, family: int | None, unicast: bool | None) -> None:
    assert bool(cel_eval("isIP(self)", text)) is valid
    if valid:
        assert int(cel_eval("ip(self).family()", text)) == family
        assert bool(cel_eval("ip(self).isGlobalUnicast()", text)) is unicast
        assert bool(cel_eval("isIP(self) && ip(self).isGlobalUnicast()", text)) is unicast
    else:
        with pytest.raises(Exception, match="IP"):
            cel_eval("ip(self).family()", text)
        assert not bool(cel_eval("isIP(self) && ip(self).isGlobalUnicast()", text))


CIDR_TABLE = [
    ("198.51.100.0/24", True, 4),
    ("198.51.100.7/24", True, 4),  # host bits may be set
    ("0.0.0.0/0", True, 4),
    ("2001:db8::/32", True, 6),
    ("::/0", True, 6),
    ("2001:db8::1/128", True, 6),
    ("198.51.100.0", False, None),
    ("198.51.100.0/33", False, None),
    ("2001:db8::/129", False, None),
    ("1.2.3.4/08", False, None),  # leading zero in the length
    ("1.2.3.4/+8", False, None),
    ("1.2.3.4/-1", False, None),
    ("1.2.3.4/", False, None),
    ("1.2.3.4/\u0663", False, None),  # non-ASCII digit
    ("01.2.3.4/8", False, None),
    ("::ffff:1.2.3.4/120", False, None),
    ("fe80::%eth0/64", False, None),
    ("1.2.3.4/8/8", False, None),
]


@pytest.mark.parametrize(("text", "valid", "family"), CIDR_TABLE, ids=repr)
def test_cidr_functions(text: str, valid: bool, family: int | None) -> None:
    assert bool(cel_eval("isCIDR(self)", text)) is valid
    if valid:
        assert int(cel_eval("cidr(self).ip().family()", text)) == family
        assert int(cel_eval("cidr(self).prefixLength()", text)) == k8s_parse_cidr(text)[1]
    else:
        with pytest.raises(Exception, match="CIDR"):
            cel_eval("cidr(self).ip()", text)


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("self == 80", "http", False),  # cel-go heterogeneous equality, not an error
        ("self != 80", "http", True),
        ("self.a == self.b", {"a": 80, "b": 80}, True),
        ("self in [80, 'http']", "http", True),
        ("self.x in ['In', 'NotIn']", {"x": "Exists"}, False),
        ("type(self) == int", 80, True),
        ("type(self) == int", "80", False),
        ("type(self) == string", "80", True),
        ("has(self.a)", {"a": None}, True),
        ("has(self.b)", {"a": 1}, False),
        ("[1, 2] + [3] == [1, 2, 3]", 0, True),
        ("self.all(c, c.startsWith('sh-'))", ["sh-port", "sh-fallback"], True),
        ("self.all(c, c.startsWith('sh-'))", ["sh-port", "mh-port"], False),
        ("self.matches('^[a-z]+$')", "abc\n", False),  # RE2: $ is the end of text
        ("size(self) == 2", "ñé", True),  # code points
    ],
)
def test_cel_semantics(rule: str, value: Any, expected: bool) -> None:
    assert bool(cel_eval(rule, value)) is expected


def test_has_needs_its_operand_like_cel_go() -> None:
    """celpy alone answers false for has(self.a.b) when `a` is absent; cel-go errors."""
    assert bool(cel_eval("has(self.a.b)", {"a": {"b": 1}}))
    assert not bool(cel_eval("has(self.a.b)", {"a": {}}))
    with pytest.raises(Exception, match="no such member"):
        cel_eval("has(self.a.b)", {})
    assert bool(cel_eval("!has(self.a) || !has(self.a.b)", {}))  # the guard the CRDs use


def test_openapi_pattern_is_re2() -> None:
    """The apiserver runs `pattern` through Go's regexp, where `\\s` is [\\t\\n\\f\\r ] only
    (Python's re: all Unicode whitespace); so the model's patterns avoid `\\s`."""
    assert go_pattern_match(r"^/[^\s]*$", "/index.html")
    assert not go_pattern_match(r"^/[^\s]*$", "/a b")
    assert go_pattern_match(r"^/[^\s]*$", "/a\x0bb")  # vertical tab is not \s in RE2
    assert go_pattern_match(r"^/[^\s]*$", "/a\u00a0b")  # nor is NO-BREAK SPACE
    assert not go_pattern_match(r"^[a-z]+$", "abc\n")


def _patterns() -> list[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.add(node["pattern"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for j in JUDGES.values():
        walk(j.schema)
    return sorted(found)


PATTERNS = _patterns()
_PROBE_TEXT = st.text(
    alphabet=st.sampled_from(
        [*"az09AZ_-.:/ ~!\t\n\r\x0b\x0c", "\u00a0", "\u0663", "\u00b2", "\u2028", "\u00e9"]
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(text=_PROBE_TEXT, suffix=st.sampled_from(["", "\n", " ", "\u00a0"]))
def test_crd_patterns_mean_the_same_to_python_and_go(text: str, suffix: str) -> None:
    """The model checks `pattern` with Python's re.fullmatch, the apiserver with Go's RE2:
    each CRD pattern must give both the same answer (`\\s`, `\\d`, `\\w` and `$` differ)."""
    assert PATTERNS, "no patterns in the CRDs?"
    for pattern in PATTERNS:
        for candidate in (text + suffix, "/" + text + suffix, "a" + text):
            python = re.fullmatch(pattern, candidate) is not None
            assert python == go_pattern_match(pattern, candidate), (pattern, candidate)


# A hypothesis differential of the two address implementations: the judge's port of Go's
# net/netip (the CEL half) and the model's ipaddress-based helpers (the Python half).
_ADDR_PARTS = st.sampled_from(
    ["0", "1", "01", "00", "10", "127", "169", "254", "255", "256", "192", "2", "300", "", "ffff",
     "db8", "2001", "fe80", "febf", "ff02", "0000", "12345", "a", "G", ".", ":", "::", "/", " ",
     "%eth0", "%", "\u0663", "\u00b2", "\uff11"]
)
_SEPARATORS = st.sampled_from([".", ":", "::", "/"])


@st.composite
def _address_like(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_ADDR_PARTS, min_size=1, max_size=9))
    seps = draw(st.lists(_SEPARATORS, min_size=len(parts), max_size=len(parts)))
    text = "".join(p + s for p, s in zip(parts, seps, strict=True))[:-1]
    if draw(st.booleans()):
        text += "/" + draw(st.sampled_from(["0", "8", "24", "32", "33", "64", "128", "129", "08"]))
    return text


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_address_like(), st.sampled_from([t for t, *_ in IP_TABLE + CIDR_TABLE])))
def test_address_helpers_agree_with_go(text: str) -> None:
    assert k8s_is_ip(text) == is_ip(text), text
    if is_ip(text):
        assert k8s_parse_ip(text).is_global_unicast() == is_unicast_ip(text), text
    assert k8s_is_cidr(text) == is_cidr(text), text


# =========================================================================== agreement

V4 = ["192.0.2.10", "198.51.100.7"]
V6 = ["2001:db8::10", "2001:db8:1::1"]
BAD_ADDRESSES = [
    "127.0.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "169.254.0.1", "::1", "::",
    "fe80::1", "ff02::1", "::ffff:192.0.2.1", "01.2.3.4", "192.0.2.300", "2001:db8::g",
    "1.2.3", "lvs.example", "",
]
CIDRS = {4: ["198.51.100.0/24", "203.0.113.66/32", "0.0.0.0/0"], 6: ["2001:db8::/32", "::/0"]}
BAD_CIDRS = ["198.51.100.0", "198.51.100.0/33", "2001:db8::/129", "1.2.3.4/08",
             "::ffff:1.2.3.4/120", "300.1.1.1/8"]
FLAGS = {"sh": ["sh-port", "sh-fallback"], "mh": ["mh-port", "mh-fallback"]}
ABSENT: Any = object()  # "leave the key out"

# Where a generated VirtualService may carry a flaw: a value wrong on its own, or wrong next
# to the (otherwise consistent) values around it.
VS_SITES = [
    "address", "method", "tunnel", "tunnel.type", "tunnel.port", "tunnel.checksum",
    "sourceNAT", "sourceNAT.address", "scheduler.name", "scheduler.flags", "port",
    "protocol", "targetPort", "port.name", "ports.duplicate", "shape", "mark", "mark.ports",
    "mark.ranges", "timeout", "prefixLength", "engine", "onePacketScheduling", "backends",
]
RS_SITES = ["address", "port", "weight", "upperThreshold", "lowerThreshold", "state", "nodeName"]


class _Dice:
    """The choices for one manifest: consistent, valid values everywhere except at up to two
    flawed sites, so each boundary meets otherwise valid neighbours and both verdicts come up
    often. Hypothesis supplies only the seed: its own choices, this deep in a strategy, favour
    some list positions so strongly that some boundary values (prefixLength 33 on IPv4, say)
    never came up in 300 examples; a seeded Random gives every value its share."""

    def __init__(self, draw: st.DrawFn, sites: list[str]) -> None:
        self.rnd = random.Random(draw(st.integers(0, 2**64 - 1)))
        self.flawed = set(self.rnd.sample(sites, self.rnd.choice([0, 1, 1, 1, 2])))
        for site in sorted(self.flawed):
            event(f"flaw: {site}")

    def pick(self, site: str, good: list[Any], bad: list[Any]) -> Any:
        return self.rnd.choice(bad if site in self.flawed else good)

    def any(self, values: list[Any]) -> Any:
        return self.rnd.choice(values)

    def chance(self, percent: int) -> bool:
        return self.rnd.randrange(100) < percent

    def some(self, values: list[Any], low: int, high: int) -> list[Any]:
        """low..high distinct values, in random order."""
        return self.rnd.sample(values, self.rnd.randint(low, min(high, len(values))))


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not ABSENT:
        target[key] = value


def _forwarding(d: _Dice, family: int) -> Any:
    tunnel_sites = {"tunnel.type", "tunnel.port", "tunnel.checksum"}
    if d.flawed & tunnel_sites:
        methods = ["TUN"]
    elif "sourceNAT.address" in d.flawed:
        methods = ["FULLNAT"]
    elif "targetPort" in d.flawed:
        methods = ["DR", "TUN", "NAT", "FULLNAT"]  # half of them cannot remap ports
    else:
        methods = [ABSENT, "NAT", "DR", "TUN", "TUN", "FULLNAT", "FULLNAT"]
    method = d.pick("method", methods, ["LOCAL", "tun", "", 3])
    if method is ABSENT and d.chance(30):
        return d.any([ABSENT, None, {}])  # all of them mean the default (NAT)
    fwd: dict[str, Any] = {}
    _put(fwd, "method", method)
    if (method == "TUN" and (d.chance(70) or d.flawed & tunnel_sites)) or "tunnel" in d.flawed:
        tunnel: dict[str, Any] = {}
        kind = d.pick("tunnel.type", [ABSENT, "ipip", "gue", "gue", "gre"], ["vxlan", "GUE"])
        _put(tunnel, "type", kind)
        if kind == "gue":
            _put(tunnel, "port", d.pick("tunnel.port", [6080, 1, 65535], [ABSENT, ABSENT, 0, 65536]))
        else:
            _put(tunnel, "port", d.pick("tunnel.port", [ABSENT], [6080, 1]))
        good = {"gue": ["none", "csum", "remcsum"], "gre": ["none", "csum"]}.get(kind, [])
        bad = {"gue": ["crc"], "gre": ["remcsum", "remcsum", "crc"]}.get(kind, ["none", "csum"])
        _put(tunnel, "checksum", d.pick("tunnel.checksum", [ABSENT, *good], bad))
        fwd["tunnel"] = tunnel
    if (method == "FULLNAT" and (d.chance(60) or "sourceNAT.address" in d.flawed)) or (
            "sourceNAT" in d.flawed):
        snat: dict[str, Any] = {}
        own, other = (V4, V6) if family == 4 else (V6, V4)
        _put(snat, "address", d.pick("sourceNAT.address", [ABSENT, *own],
                                     other * 4 + d.some(BAD_ADDRESSES, 4, 4)))
        fwd["sourceNAT"] = snat
    return fwd


def _scheduler(d: _Dice) -> Any:
    if d.chance(15) and not d.flawed & {"scheduler.name", "scheduler.flags"}:
        return ABSENT
    sched: dict[str, Any] = {}
    name = d.pick("scheduler.name", [ABSENT, "rr", "wrr", "wlc", "sh", "sh", "mh", "mh", "dh"],
                  ["bogus", "SH", "mh-port"])
    _put(sched, "name", name)
    if d.chance(60) or "scheduler.flags" in d.flawed:
        flags = d.some(FLAGS.get(name, []), 0, 2)
        if "scheduler.flags" in d.flawed:
            flags.append(d.any(["sh-port", "mh-port", "sh-fallback", "sh-magic", *flags]))
        sched["flags"] = flags
    return sched


def _ports(d: _Dice, protocols: list[Any], remap: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for number in d.some([80, 443, 53, 5060], 1, 3):
        port: dict[str, Any] = {"port": d.pick("port", [number], [0, 65536, "80"])}
        _put(port, "protocol", d.pick("protocol", protocols, ["ICMP", "tcp"]))
        good = [ABSENT, 443, 8080, 65535, 1, "http", "dns-udp", "web-8080", "80", "a" * 15]
        bad = [0, 65536] * 3 + ["HTTP", "-web", "web-", "a" * 16, "", 80.5, True]
        if not remap:  # DR/TUN: only targetPort == port
            good, bad = [ABSENT, ABSENT, number], [8080, number + 1, "http", str(number)] * 2 + bad
        _put(port, "targetPort", d.pick("targetPort", good, bad))
        _put(port, "name", d.pick("port.name", [ABSENT, ABSENT, "http", "a" * 15],
                                  ["Web", "a" * 16, "-a", ""]))
        out.append(port)
    if "ports.duplicate" in d.flawed:
        twin = dict(d.any(out))
        twin.pop("targetPort", None)
        if twin.get("protocol", "TCP") == "TCP" and d.chance(50):
            twin.pop("protocol", None)  # TCP by default: still a duplicate
        out.append(twin)
    return out


def _firewall_mark(d: _Dice, family: int, protocols: list[Any]) -> dict[str, Any]:
    mark: dict[str, Any] = {"mark": d.pick("mark", [1, 99, 4294967295], [0, 4294967296, -1])}
    ports: list[dict[str, Any]] = []
    for n in d.some([80, 443, 5060], 1, 2):
        port = {"port": n}
        _put(port, "protocol", d.any(protocols))
        ports.append(port)
    mark["ports"] = d.pick("mark.ports", [ports], [[], [{"port": 0}], [{"protocol": "TCP"}]])
    for key in ("sourceRanges", "exceptRanges"):
        if d.chance(50) or "mark.ranges" in d.flawed:
            ranges = d.some(CIDRS[family], 0, 2)
            if "mark.ranges" in d.flawed and d.chance(60):
                ranges.append(d.any(BAD_CIDRS + CIDRS[10 - family] * 3))
            mark[key] = ranges
    return mark


def _persistence(d: _Dice, family: int, all_udp: bool) -> Any:
    if d.chance(40) and not d.flawed & {"timeout", "prefixLength", "engine"}:
        return d.any([ABSENT, ABSENT, None])
    pers: dict[str, Any] = {}
    _put(pers, "timeout", d.pick("timeout", [ABSENT, 1, 360, 2678400], [0, 2678401, "60"]))
    good = [ABSENT, 0, 24, 32] if family == 4 else [ABSENT, 1, 48, 64, 128]
    bad = [33, 33, 64, -1, 129] if family == 4 else [0, 0, -1, 129]
    _put(pers, "prefixLength", d.pick("prefixLength", good, bad))
    engines = [ABSENT, "sip"] if all_udp else [ABSENT]
    _put(pers, "engine", d.pick("engine", engines, ["sip", "sip", "rtsp"]))
    return pers


@st.composite
def virtual_services(draw: st.DrawFn) -> dict[str, Any]:
    """VirtualServices around the risky fields: forwarding method and tunnel, scheduler and
    flags, targetPort (int, name, absent) against the method, persistence prefixLength and
    engine against the address family and protocols, ports against firewallMark."""
    d = _Dice(draw, VS_SITES)
    doc = valid_virtual_service()
    spec = doc["spec"]
    for key in ("forwarding", "scheduler", "ports"):
        del spec[key]
    family = d.any([4, 6])
    spec["address"] = d.pick("address", V4 if family == 4 else V6, BAD_ADDRESSES)
    forwarding = _forwarding(d, family)
    _put(spec, "forwarding", forwarding)
    _put(spec, "scheduler", _scheduler(d))
    method = forwarding.get("method", "NAT") if isinstance(forwarding, dict) else "NAT"
    if d.flawed & {"engine", "onePacketScheduling"}:
        protocols = d.any([[ABSENT, "TCP"], [ABSENT, "TCP", "UDP", "SCTP"]])  # not all UDP
    else:
        protocols = d.any([[ABSENT, "TCP"], ["UDP"], [ABSENT, "TCP", "UDP", "SCTP"]])
    if d.flawed & {"mark", "mark.ports", "mark.ranges"}:
        shapes = ["fwmark"]
    elif d.flawed & {"port", "protocol", "targetPort", "port.name", "ports.duplicate",
                     "onePacketScheduling"}:
        shapes = ["ports"]
    else:
        shapes = ["ports", "ports", "fwmark"]
    shape = d.pick("shape", shapes, ["both", "neither"])
    if shape in ("ports", "both"):
        spec["ports"] = _ports(d, protocols, remap=method not in ("DR", "TUN"))
    if shape in ("fwmark", "both"):
        spec["firewallMark"] = _firewall_mark(d, family, protocols)
    all_udp = all(p == "UDP" for p in protocols)
    _put(spec, "persistence", _persistence(d, family, all_udp))
    one_packet = [ABSENT, False, True] if all_udp or shape == "fwmark" else [ABSENT, False]
    _put(spec, "onePacketScheduling", d.pick("onePacketScheduling", one_packet, [True, "yes"]))
    spec["backends"] = d.pick("backends", [
        {"realServerSelector": {"matchLabels": {"app": "web"}}},
        {"service": {"name": "web"}, "upperThreshold": 10, "lowerThreshold": 10},
        {"realServerSelector": {}, "service": {"name": "web"}, "weight": 0},
    ], [
        {"service": {"name": "web"}, "upperThreshold": 5, "lowerThreshold": 10},
        {"service": {"name": "Web"}},
        {"weight": 2},
        {"realServerSelector": None, "service": None},
        {"service": {}},
    ])
    return doc


@st.composite
def real_servers(draw: st.DrawFn) -> dict[str, Any]:
    d = _Dice(draw, RS_SITES)
    doc = valid_real_server()
    spec: dict[str, Any] = {"address": d.pick("address", [*V4, *V6], [*BAD_ADDRESSES, None])}
    _put(spec, "port", d.pick("port", [ABSENT, 1, 8080, 65535], [0, 65536, "8080"]))
    _put(spec, "weight", d.pick("weight", [ABSENT, 0, 1, 65535], [-1, 65536, True]))
    _put(spec, "upperThreshold", d.pick("upperThreshold", [ABSENT, 0, 200], [-1, 2147483648, 5]))
    _put(spec, "lowerThreshold", d.pick("lowerThreshold", [ABSENT, 0, 150], [-1, 2147483648, 300]))
    _put(spec, "state", d.pick("state", [ABSENT, "Enabled", "Draining", "Disabled"], ["Off", ""]))
    _put(spec, "nodeName", d.pick("nodeName", [ABSENT, "real-1", "n" * 253], ["n" * 254]))
    doc["spec"] = spec
    return doc


def assert_agree(doc: dict[str, Any]) -> None:
    crd, py = judge(doc), model(doc)
    event(f"{doc['kind']}: {'rejected' if crd else 'accepted'}")
    assert bool(crd) == bool(py), (
        f"the CRD {'rejects' if crd else 'accepts'} but the Python model "
        f"{'rejects' if py else 'accepts'}:\n{yaml.safe_dump(doc['spec'], sort_keys=False)}"
        f"CRD:\n{show(crd)}\nmodel:\n{show(py)}"
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=virtual_services())
def test_crd_and_model_agree_on_virtual_services(doc: dict[str, Any]) -> None:
    assert_agree(doc)


@settings(max_examples=100, deadline=None)
@given(doc=real_servers())
def test_crd_and_model_agree_on_real_servers(doc: dict[str, Any]) -> None:
    assert_agree(doc)


# =========================================================================== regressions


def _vs(**spec: Any) -> dict[str, Any]:
    doc = valid_virtual_service()
    for key, value in spec.items():
        if value is ABSENT:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def _fwmark(address: str, *ranges: str) -> dict[str, Any]:
    return _vs(address=address, ports=ABSENT, firewallMark={
        "mark": 7, "ports": [{"port": 80}], "sourceRanges": list(ranges)})


# Disagreements this judge found between the halves, fixed in the model since; each must stay
# rejected by both. (Zones: ipaddress parses '%eth0' scope ids, netip-based isIP/isCIDR
# refuse them. Digits: str.isdigit() is true for non-ASCII digits, and int('\u00b2') raised
# ValueError out of parse_manifest. Path: `^/[^\s]*$` meant Unicode whitespace to Python's re
# but only [\t\n\f\r ] to Go's RE2; the pattern is now `^/[!-~]*$`, the same in both.)
REGRESSIONS = [
    pytest.param(_vs(address="2001:db8::10%eth0"), id="VIP with a zone"),
    pytest.param(_vs(healthCheck={"quorum": {"sorryServer": {"address": "fe80::1%eth0"}}}),
                 id="sorry server with a zone"),
    pytest.param(_fwmark("2001:db8::10", "2001:db8::%eth0/32"), id="source range with a zone"),
    pytest.param(_fwmark("192.0.2.10", "198.51.100.0/\u0662\u0664"),
                 id="prefix length in Arabic-Indic digits"),
    pytest.param(_fwmark("192.0.2.10", "198.51.100.0/\u00b2"), id="prefix length superscript two"),
    pytest.param(_vs(healthCheck={"type": "HTTP", "http": {"path": "/a\x0bb"}}),
                 id="http path with a vertical tab"),
    pytest.param(_vs(healthCheck={"type": "HTTP", "http": {"path": "/a\u00a0b"}}),
                 id="http path with a no-break space"),
]


@pytest.mark.parametrize("doc", REGRESSIONS)
def test_former_disagreement_is_rejected_by_both(doc: dict[str, Any]) -> None:
    crd, py = judge(doc), model(doc)
    assert crd and py, f"CRD:\n{show(crd)}\nmodel:\n{show(py)}"
