"""An apiserver-like judge for a CustomResourceDefinition, for the unit tier.

It takes the generated CRD YAML (not the Python model) and does to a manifest what
kube-apiserver does on create, closely enough to prove that the CRD's OpenAPI schema and CEL
rules accept and reject the same manifests as the Python model:

1. decode: unknown fields are pruned (or, with ``strict=True``, reported the way
   ``fieldValidation=Strict`` does, and nothing else is checked);
2. structural defaulting: ``null`` in a non-nullable field is dropped, then ``default`` fills
   absent properties, top-down, so ``forwarding: {}`` gets ``method: NAT``;
3. OpenAPI validation of the subset the CRDs use (type, int-or-string, enum, minimum/maximum,
   maxLength, pattern (RE2, as Go), minItems/maxItems, required, additionalProperties) and the
   ``x-kubernetes-list-type`` set/map invariants; ``format`` is not checked;
4. CEL: every ``x-kubernetes-validations`` rule, with ``self`` bound to the defaulted value of
   its node, evaluated by ``celpy`` with the Kubernetes IP/CIDR library and cel-go semantics
   for ``has()`` and ``==``. As in the apiserver (``customResourceStrategy.Validate``), CEL is
   skipped entirely when OpenAPI validation produced a *blocking* error (Required, TypeInvalid,
   NotSupported (enum), TooLong (maxLength), TooMany (maxItems)); an error at the root path
   then says so. Other OpenAPI errors (minimum, pattern, minItems, duplicates) do not stop CEL.

Errors carry the apiserver's JSON path (``spec.ports[0].port``); a rule's ``fieldPath`` is
appended to its node's path, a rule that fails to evaluate is reported at the node itself.

celpy 0.5.0 notes (what this module works around):
- ``self`` is an ordinary identifier for celpy (not reserved), so rules run unmodified.
- functions and methods are one namespace: ``x.f(a)`` calls the function ``f(x, a)``; so the
  Kubernetes library is a dict of plain functions on opaque Python classes, and ``ip`` serves
  both ``ip(string)`` and ``cidr(...).ip()``.
- celpy's ``has(a.b.c)`` is "does ``a.b.c`` evaluate without error"; cel-go's is "does
  ``a.b`` (which must evaluate) have key ``c``". An evaluator subclass implements the latter
  (and subclasses ``sub_evaluator`` so macro bodies such as ``.all()`` use it too).
- celpy raises "no such overload" for ``'http' == 80``; cel-go (heterogeneous equality, as in
  every Kubernetes that has CEL) answers false. ``==``, ``!=`` and ``in`` are overridden.
- ``matches()`` already uses google-re2, i.e. RE2 semantics as in cel-go; the judge uses
  google-re2 for OpenAPI ``pattern`` too (Python's ``re`` differs: ``\\s`` matches more).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import lark
import re2
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError, Evaluator

__all__ = [
    "BLOCKING",
    "CRDJudge",
    "CelCIDR",
    "CelIP",
    "JudgeError",
    "NetAddr",
    "cel_eval",
    "go_pattern_match",
    "k8s_is_cidr",
    "k8s_is_ip",
    "k8s_parse_cidr",
    "k8s_parse_ip",
    "load_judge",
    "parse_go_addr",
    "parse_go_prefix",
    "schema_path",
]

# field.ErrorType names, as the apiserver reports them.
REQUIRED = "Required"
INVALID = "Invalid"
NOT_SUPPORTED = "NotSupported"
TOO_LONG = "TooLong"
TOO_MANY = "TooMany"
TYPE_INVALID = "TypeInvalid"
DUPLICATE = "Duplicate"
FORBIDDEN = "Forbidden"
UNKNOWN_FIELD = "UnknownField"  # strict decoding error (400, before any validation)

BLOCKING = frozenset({REQUIRED, NOT_SUPPORTED, TOO_LONG, TOO_MANY, TYPE_INVALID})
CEL_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_REASON_TYPE = {
    "FieldValueInvalid": INVALID,
    "FieldValueRequired": REQUIRED,
    "FieldValueForbidden": FORBIDDEN,
    "FieldValueDuplicate": DUPLICATE,
}


@dataclass(frozen=True, slots=True)
class JudgeError:
    """One error, as a field.Error: where, which kind, what."""

    path: str
    type: str
    message: str
    rule: str | None = None  # the CEL rule, for CEL errors
    node: str | None = None  # for CEL errors: the path of the node the rule sits on

    def __str__(self) -> str:
        return f"{self.path or '<nil>'}: {self.type}: {self.message}"


# =========================================================================== Go net/netip


@dataclass(frozen=True, slots=True)
class NetAddr:
    """An address as Go's netip.Addr holds it: 32 or 128 bits, and a zone (IPv6 only)."""

    bits: int
    value: int
    zone: str = ""

    @property
    def is4(self) -> bool:
        return self.bits == 32

    @property
    def is4in6(self) -> bool:
        return self.bits == 128 and self.value >> 32 == 0xFFFF

    def unmap(self) -> NetAddr:
        return NetAddr(32, self.value & 0xFFFFFFFF) if self.is4in6 else self

    def family(self) -> int:
        return 4 if self.is4 else 6

    def is_unspecified(self) -> bool:
        return self.value == 0

    def is_loopback(self) -> bool:
        ip = self.unmap()
        return ip.value >> 24 == 127 if ip.is4 else ip.value == 1

    def is_multicast(self) -> bool:
        ip = self.unmap()
        return ip.value >> 28 == 0xE if ip.is4 else ip.value >> 120 == 0xFF

    def is_link_local_unicast(self) -> bool:
        ip = self.unmap()
        if ip.is4:
            return ip.value >> 16 == 0xA9FE  # 169.254/16
        return (ip.value >> 112) & 0xFFC0 == 0xFE80  # fe80::/10

    def is_link_local_multicast(self) -> bool:
        ip = self.unmap()
        if ip.is4:
            return ip.value >> 8 == 0xE00000  # 224.0.0/24
        return (ip.value >> 112) & 0xFF0F == 0xFF02  # ff02::/16

    def is_global_unicast(self) -> bool:
        """netip.Addr.IsGlobalUnicast (the same answer as net.IP.IsGlobalUnicast)."""
        ip = self.unmap()
        if ip.is4 and ip.value in (0, 0xFFFFFFFF):
            return False
        return not (
            (not ip.is4 and ip.value == 0)
            or ip.is_loopback()
            or ip.is_multicast()
            or ip.is_link_local_unicast()
        )


def _parse_ipv4_fields(text: str) -> list[int]:
    """netip's parseIPv4Fields: four decimal octets, no leading zeros, ASCII only."""
    fields = [0, 0, 0, 0]
    val = pos = dig_len = 0
    for i, c in enumerate(text):
        if "0" <= c <= "9":
            if dig_len == 1 and val == 0:
                raise ValueError("IPv4 field has octet with leading zero")
            val = val * 10 + ord(c) - 48
            dig_len += 1
            if val > 255:
                raise ValueError("IPv4 field has value >255")
        elif c == ".":
            if i == 0 or i == len(text) - 1 or text[i - 1] == ".":
                raise ValueError("IPv4 field must have at least one digit")
            if pos == 3:
                raise ValueError("IPv4 address too long")
            fields[pos] = val
            pos += 1
            val = dig_len = 0
        else:
            raise ValueError(f"unexpected character {c!r}")
    if pos < 3:
        raise ValueError("IPv4 address too short")
    fields[3] = val
    return fields


def _hex_digit(c: str) -> int | None:
    if "0" <= c <= "9":
        return ord(c) - 48
    if "a" <= c <= "f":
        return ord(c) - 87
    if "A" <= c <= "F":
        return ord(c) - 55
    return None


def _parse_ipv6(text: str) -> NetAddr:
    """A line-by-line port of netip's parseIPv6."""
    s, zone = text, ""
    cut = s.find("%")
    if cut != -1:
        s, zone = s[:cut], s[cut + 1 :]
        if not zone:
            raise ValueError("zone must be a non-empty string")
    ip = [0] * 16
    ellipsis = -1
    if len(s) >= 2 and s[0] == ":" and s[1] == ":":
        ellipsis = 0
        s = s[2:]
        if not s:
            return NetAddr(128, 0, zone)
    i = 0
    while i < 16:
        off = acc = 0
        while off < len(s):
            digit = _hex_digit(s[off])
            if digit is None:
                break
            acc = (acc << 4) + digit
            if off > 3:
                raise ValueError("each group must have 4 or less digits")
            if acc > 0xFFFF:
                raise ValueError("IPv6 field has value >=2^16")
            off += 1
        if off == 0:
            raise ValueError("each colon-separated field must have at least one digit")
        if off < len(s) and s[off] == ".":
            if ellipsis < 0 and i != 12:
                raise ValueError("embedded IPv4 address must replace the final 2 fields")
            if i + 4 > 16:
                raise ValueError("too many hex fields to fit an embedded IPv4 at the end")
            ip[i : i + 4] = _parse_ipv4_fields(s)
            s = ""
            i += 4
            break
        ip[i], ip[i + 1] = acc >> 8, acc & 0xFF
        i += 2
        s = s[off:]
        if not s:
            break
        if s[0] != ":":
            raise ValueError("unexpected character, want colon")
        if len(s) == 1:
            raise ValueError("colon must be followed by more characters")
        s = s[1:]
        if s[0] == ":":
            if ellipsis >= 0:
                raise ValueError("multiple :: in address")
            ellipsis = i
            s = s[1:]
            if not s:
                break
    if s:
        raise ValueError("trailing garbage after address")
    if i < 16:
        if ellipsis < 0:
            raise ValueError("address string too short")
        n = 16 - i
        for j in range(i - 1, ellipsis - 1, -1):
            ip[j + n] = ip[j]
        for j in range(ellipsis, ellipsis + n):
            ip[j] = 0
    elif ellipsis >= 0:
        raise ValueError("the :: must expand to at least one field of zeros")
    return NetAddr(128, int.from_bytes(bytes(ip), "big"), zone)


def parse_go_addr(text: str) -> NetAddr:
    """netip.ParseAddr; raises ValueError."""
    for c in text:
        if c == ".":
            return NetAddr(32, int.from_bytes(bytes(_parse_ipv4_fields(text)), "big"))
        if c == ":":
            return _parse_ipv6(text)
        if c == "%":
            raise ValueError("missing IPv6 address")
    raise ValueError("unable to parse IP")


def parse_go_prefix(text: str) -> tuple[NetAddr, int]:
    """netip.ParsePrefix; raises ValueError. Host bits may be set (they are kept)."""
    cut = text.rfind("/")
    if cut < 0:
        raise ValueError("no '/'")
    addr = parse_go_addr(text[:cut])
    if not addr.is4 and addr.zone:
        raise ValueError("IPv6 zones cannot be present in a prefix")
    bits_str = text[cut + 1 :]
    if len(bits_str) > 1 and not ("1" <= bits_str[0] <= "9"):
        raise ValueError(f"bad bits after slash: {bits_str!r}")
    if not bits_str or not all("0" <= c <= "9" for c in bits_str):  # strconv.Atoi
        raise ValueError(f"bad bits after slash: {bits_str!r}")
    bits = int(bits_str)
    if bits > addr.bits:
        raise ValueError("prefix length out of range")
    return addr, bits


def k8s_parse_ip(text: str) -> NetAddr:
    """Kubernetes' CEL parseIPAddr: netip plus no zone and no IPv4-mapped IPv6."""
    addr = parse_go_addr(text)
    if addr.zone:
        raise ValueError(f"IP address {text!r} with zone value is not allowed")
    if addr.is4in6:
        raise ValueError(f"IPv4-mapped IPv6 address {text!r} is not allowed")
    return addr


def k8s_parse_cidr(text: str) -> tuple[NetAddr, int]:
    """Kubernetes' CEL parseCIDR: netip.ParsePrefix plus no IPv4-mapped IPv6."""
    addr, bits = parse_go_prefix(text)
    if addr.is4in6:
        raise ValueError(f"IPv4-mapped IPv6 address {text!r} is not allowed")
    return addr, bits


def k8s_is_ip(text: str) -> bool:
    try:
        k8s_parse_ip(text)
    except ValueError:
        return False
    return True


def k8s_is_cidr(text: str) -> bool:
    try:
        k8s_parse_cidr(text)
    except ValueError:
        return False
    return True


# =========================================================================== CEL library


@dataclass(frozen=True, slots=True)
class CelIP:
    """The CEL `net.IP` opaque value."""

    addr: NetAddr


@dataclass(frozen=True, slots=True)
class CelCIDR:
    """The CEL `net.CIDR` opaque value."""

    addr: NetAddr
    bits: int


def _err(message: str, exc: type[Exception] = ValueError) -> CELEvalError:
    return CELEvalError(message, exc, (message,))


def _no_overload(name: str, *args: Any) -> CELEvalError:
    kinds = ", ".join(type(a).__name__ for a in args)
    return _err(f"no such overload: {name}({kinds})", TypeError)


def _fn_is_ip(arg: Any) -> Any:
    if not isinstance(arg, str):
        return _no_overload("isIP", arg)
    return celtypes.BoolType(k8s_is_ip(arg))


def _fn_ip(arg: Any) -> Any:
    if isinstance(arg, CelCIDR):
        return CelIP(arg.addr)
    if not isinstance(arg, str):
        return _no_overload("ip", arg)
    try:
        return CelIP(k8s_parse_ip(arg))
    except ValueError as exc:
        return _err(f"IP Address {arg!r} parse error during conversion from string: {exc}")


def _fn_is_cidr(arg: Any) -> Any:
    if not isinstance(arg, str):
        return _no_overload("isCIDR", arg)
    return celtypes.BoolType(k8s_is_cidr(arg))


def _fn_cidr(arg: Any) -> Any:
    if not isinstance(arg, str):
        return _no_overload("cidr", arg)
    try:
        return CelCIDR(*k8s_parse_cidr(arg))
    except ValueError as exc:
        return _err(f"CIDR {arg!r} parse error during conversion from string: {exc}")


def _ip_method(name: str, method: Callable[[NetAddr], bool]) -> Callable[[Any], Any]:
    def call(arg: Any) -> Any:
        if not isinstance(arg, CelIP):
            return _no_overload(name, arg)
        return celtypes.BoolType(method(arg.addr))

    call.__name__ = name
    return call


def _fn_family(arg: Any) -> Any:
    if not isinstance(arg, CelIP):
        return _no_overload("family", arg)
    return celtypes.IntType(arg.addr.family())


def _fn_prefix_length(arg: Any) -> Any:
    if not isinstance(arg, CelCIDR):
        return _no_overload("prefixLength", arg)
    return celtypes.IntType(arg.bits)


# --------------------------------------------------------------------------- cel-go equality

_NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _equal(a: Any, b: Any) -> bool:
    """cel-go's heterogeneous equality: values of different types are simply not equal."""
    if isinstance(a, type) or isinstance(b, type):
        return a is b
    if isinstance(a, celtypes.BoolType) or isinstance(b, celtypes.BoolType):
        return (
            isinstance(a, celtypes.BoolType) and isinstance(b, celtypes.BoolType) and a == b
        )
    if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS):
        if isinstance(a, celtypes.DoubleType) or isinstance(b, celtypes.DoubleType):
            return float(a) == float(b)  # NaN != NaN, as in CEL
        return int(a) == int(b)
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, bytes) and isinstance(b, bytes):
        return bytes(a) == bytes(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            match = [k for k in b if _equal(k, key)]
            if not match or not _equal(value, b[match[0]]):
                return False
        return True
    if a is None or b is None:
        return a is None and b is None
    if type(a) is type(b):
        return bool(a == b)
    return False


def _fn_eq(a: Any, b: Any) -> Any:
    for v in (a, b):
        if isinstance(v, CELEvalError):
            return v
    return celtypes.BoolType(_equal(a, b))


def _fn_ne(a: Any, b: Any) -> Any:
    result = _fn_eq(a, b)
    return result if isinstance(result, CELEvalError) else celtypes.BoolType(not result)


def _fn_in(item: Any, container: Any) -> Any:
    for v in (item, container):
        if isinstance(v, CELEvalError):
            return v
    if isinstance(container, dict | list):
        return celtypes.BoolType(any(_equal(item, c) for c in container))
    return _no_overload("_in_", item, container)


K8S_FUNCTIONS: dict[str, Any] = {
    "_==_": _fn_eq,
    "_!=_": _fn_ne,
    "_in_": _fn_in,
    "isIP": _fn_is_ip,
    "ip": _fn_ip,
    "isCIDR": _fn_is_cidr,
    "cidr": _fn_cidr,
    "family": _fn_family,
    "prefixLength": _fn_prefix_length,
    "isUnspecified": _ip_method("isUnspecified", NetAddr.is_unspecified),
    "isLoopback": _ip_method("isLoopback", NetAddr.is_loopback),
    "isLinkLocalMulticast": _ip_method("isLinkLocalMulticast", NetAddr.is_link_local_multicast),
    "isLinkLocalUnicast": _ip_method("isLinkLocalUnicast", NetAddr.is_link_local_unicast),
    "isGlobalUnicast": _ip_method("isGlobalUnicast", NetAddr.is_global_unicast),
}


# --------------------------------------------------------------------------- evaluator


def _has_target(exprlist: lark.Tree[Any]) -> tuple[lark.Tree[Any], str] | None:
    """The (operand, field) of `has(operand.field)`, or None when the argument is not a
    field selection (cel-go rejects that at compile time)."""
    node: Any = exprlist
    while isinstance(node, lark.Tree):
        if node.data == "member_dot":
            operand, name = node.children
            return operand, str(name)
        if len(node.children) != 1:
            return None
        node = node.children[0]
    return None


class _K8sEvaluator(Evaluator):
    """celpy's interpreter with cel-go's `has()`."""

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        return _K8sEvaluator(ast, activation=self.activation)

    def macro_has_eval(self, exprlist: lark.Tree[Any]) -> Any:
        target = _has_target(exprlist)
        if target is None:
            return _err("invalid argument to has() macro")
        operand_tree, name = target
        operand = self.visit(operand_tree)
        if isinstance(operand, CELEvalError):
            return operand
        if isinstance(operand, dict):
            return celtypes.BoolType(name in operand)
        return _err(f"has(): no field selection on {type(operand).__name__}", TypeError)


class _K8sRunner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        return _K8sEvaluator(ast=self.ast, activation=self.new_activation()).evaluate(context)


_ENV = celpy.Environment(runner_class=_K8sRunner)


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(rule), functions=K8S_FUNCTIONS)


def cel_eval(rule: str, self_value: Any) -> Any:
    """Evaluate a rule with `self` bound to a JSON-like value; raises CELEvalError."""
    return _program(rule).evaluate({"self": json_to_cel(self_value)})


@functools.cache
def _regex(pattern: str) -> Any:
    return re2.compile(pattern)


def go_pattern_match(pattern: str, text: str) -> bool:
    """OpenAPI `pattern` as the apiserver checks it: Go regexp (RE2), unanchored search."""
    return _regex(pattern).search(text) is not None


# =========================================================================== the judge


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _key(path: str, key: str) -> str:
    return f"{path}[{key}]"


def schema_path(path: str) -> str:
    """`spec.ports[0].targetPort` -> `spec.ports[*].targetPort`, as `CRDJudge.rules()` names
    nodes."""
    return re.sub(r"\[[^\]]*\]", "[*]", path)


def _is_int(v: Any) -> bool:
    """A JSON integer as the apiserver decodes it: int64 (anything larger becomes a float)."""
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_int,
    "number": lambda v: _is_int(v) or isinstance(v, float),
    "boolean": lambda v: isinstance(v, bool),
}

_ROOT_KEEP = ("apiVersion", "kind", "metadata")  # the apiserver handles these itself


@dataclass
class CRDJudge:
    """Admission of one CRD version's objects, without an apiserver."""

    crd: Mapping[str, Any]
    version: str | None = None
    schema: Mapping[str, Any] = field(init=False)
    _subresources: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        versions = self.crd["spec"]["versions"]
        chosen = [
            v for v in versions
            if (v["name"] == self.version if self.version else v.get("storage"))
        ]
        if len(chosen) != 1:
            raise ValueError(f"no single version {self.version!r} in the CRD")
        self.version = chosen[0]["name"]
        self.schema = chosen[0]["schema"]["openAPIV3Schema"]
        self._subresources = dict(chosen[0].get("subresources") or {})

    @property
    def kind(self) -> str:
        return str(self.crd["spec"]["names"]["kind"])

    @property
    def api_version(self) -> str:
        return f"{self.crd['spec']['group']}/{self.version}"

    def rules(self) -> list[tuple[str, str]]:
        """Every (schema path, rule) in the schema, for coverage checks."""
        out: list[tuple[str, str]] = []

        def walk(schema: Mapping[str, Any], path: str) -> None:
            for r in schema.get("x-kubernetes-validations", ()):
                out.append((path, r["rule"]))
            for name, sub in schema.get("properties", {}).items():
                walk(sub, _child(path, name))
            if isinstance(schema.get("items"), Mapping):
                walk(schema["items"], path + "[*]")
            if isinstance(schema.get("additionalProperties"), Mapping):
                walk(schema["additionalProperties"], path + "[*]")

        walk(self.schema, "")
        return out

    # ----------------------------------------------------------------------- pipeline

    def admit(
        self, obj: Mapping[str, Any], *, strict: bool = False
    ) -> tuple[dict[str, Any], list[JudgeError]]:
        """The object as it would be stored (pruned and defaulted) and every error."""
        doc = copy.deepcopy(dict(obj))
        if "status" in self._subresources:
            doc.pop("status", None)  # create ignores status when it is a subresource
        unknown: list[JudgeError] = []
        self._prune(doc, self.schema, "", unknown, root=True)
        if strict and unknown:
            return doc, unknown
        self._default(doc, self.schema)
        errors: list[JudgeError] = []
        self._validate(doc, self.schema, "", errors, root=True)
        if any(e.type in BLOCKING for e in errors):
            errors.append(JudgeError("", INVALID, CEL_SKIPPED))
        else:
            self._cel(doc, self.schema, "", errors)
        return doc, errors

    def validate(self, obj: Mapping[str, Any], *, strict: bool = False) -> list[JudgeError]:
        return self.admit(obj, strict=strict)[1]

    def default(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Prune and default only (what the apiserver stores for a valid object)."""
        doc = copy.deepcopy(dict(obj))
        self._prune(doc, self.schema, "", [], root=True)
        self._default(doc, self.schema)
        return doc

    # ----------------------------------------------------------------------- 1. pruning

    def _prune(
        self,
        value: Any,
        schema: Mapping[str, Any],
        path: str,
        unknown: list[JudgeError],
        *,
        root: bool = False,
    ) -> None:
        if isinstance(value, dict) and not schema.get("x-kubernetes-int-or-string"):
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key in list(value):
                if root and key in _ROOT_KEEP:
                    continue
                if props is not None and key in props:
                    self._prune(value[key], props[key], _child(path, key), unknown)
                elif isinstance(extra, Mapping):
                    self._prune(value[key], extra, _key(path, key), unknown)
                elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                    continue
                else:
                    where = _child(path, key)
                    unknown.append(JudgeError(where, UNKNOWN_FIELD, f'unknown field "{where}"'))
                    del value[key]
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                self._prune(item, schema["items"], _index(path, i), unknown)

    # ----------------------------------------------------------------------- 2. defaulting

    def _default(self, value: Any, schema: Mapping[str, Any]) -> None:
        if isinstance(value, dict):
            for name, prop in schema.get("properties", {}).items():
                if name not in value or (value[name] is None and not prop.get("nullable")):
                    if "default" in prop:
                        value[name] = copy.deepcopy(prop["default"])
                    else:
                        value.pop(name, None)
                        continue
                self._default(value[name], prop)
            extra = schema.get("additionalProperties")
            if isinstance(extra, Mapping):
                for v in value.values():
                    self._default(v, extra)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for item in value:
                self._default(item, schema["items"])

    # ----------------------------------------------------------------------- 3. OpenAPI

    def _validate(
        self,
        value: Any,
        schema: Mapping[str, Any],
        path: str,
        errors: list[JudgeError],
        *,
        root: bool = False,
    ) -> None:
        def add(kind: str, message: str, where: str = path) -> None:
            errors.append(JudgeError(where, kind, message))

        if value is None and schema.get("nullable"):
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not (_is_int(value) or isinstance(value, str)):
                add(TYPE_INVALID, f"{path} in body must be of type integer or string: {value!r}")
                return
        elif "type" in schema and not _TYPE_CHECKS[schema["type"]](value):
            add(TYPE_INVALID, f"{path} in body must be of type {schema['type']}: {value!r}")
            return

        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(repr(v) for v in schema["enum"])
            add(NOT_SUPPORTED, f"Unsupported value: {value!r}: supported values: {allowed}")
        if _is_int(value) or isinstance(value, float):
            if "minimum" in schema and value < schema["minimum"]:
                add(INVALID, f"{path} in body should be greater than or equal to {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                add(INVALID, f"{path} in body should be less than or equal to {schema['maximum']}")
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                add(TOO_LONG, f"may not be more than {schema['maxLength']} bytes")
            if "minLength" in schema and len(value) < schema["minLength"]:
                add(INVALID, f"{path} in body should be at least {schema['minLength']} chars long")
            if "pattern" in schema and not go_pattern_match(schema["pattern"], value):
                add(INVALID, f"{path} in body should match '{schema['pattern']}'")
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                add(TOO_MANY, f"must have at most {schema['maxItems']} items")
            if "minItems" in schema and len(value) < schema["minItems"]:
                add(INVALID, f"{path} in body should have at least {schema['minItems']} items")
            items = schema.get("items")
            if isinstance(items, Mapping):
                for i, item in enumerate(value):
                    self._validate(item, items, _index(path, i), errors)
            self._list_invariants(value, schema, path, errors)
        if isinstance(value, dict):
            props = schema.get("properties", {})
            for name in schema.get("required", ()):
                if name not in value:
                    add(REQUIRED, "Required value", _child(path, name))
            for name, sub in props.items():
                if name in value and not (root and name == "metadata"):
                    self._validate(value[name], sub, _child(path, name), errors)
            extra = schema.get("additionalProperties")
            if isinstance(extra, Mapping):
                for key, v in value.items():
                    if key not in props:
                        self._validate(v, extra, _key(path, key), errors)

    @staticmethod
    def _list_invariants(
        value: list[Any], schema: Mapping[str, Any], path: str, errors: list[JudgeError]
    ) -> None:
        list_type = schema.get("x-kubernetes-list-type")
        seen: list[Any] = []
        for i, item in enumerate(value):
            if list_type == "set":
                key: Any = item
            elif list_type == "map" and isinstance(item, dict):
                key = tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", ()))
            else:
                continue
            if any(_json_equal(key, s) for s in seen):
                errors.append(JudgeError(_index(path, i), DUPLICATE, f"Duplicate value: {key!r}"))
            else:
                seen.append(key)

    # ----------------------------------------------------------------------- 4. CEL

    def _cel(
        self, value: Any, schema: Mapping[str, Any], path: str, errors: list[JudgeError]
    ) -> None:
        if value is None:
            return
        for rule in schema.get("x-kubernetes-validations", ()):
            self._run_rule(rule, value, path, errors)
        if isinstance(value, dict):
            props = schema.get("properties", {})
            for name, sub in props.items():
                if name in value:
                    self._cel(value[name], sub, _child(path, name), errors)
            extra = schema.get("additionalProperties")
            if isinstance(extra, Mapping):
                for key, v in value.items():
                    if key not in props:
                        self._cel(v, extra, _key(path, key), errors)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                self._cel(item, schema["items"], _index(path, i), errors)

    @staticmethod
    def _run_rule(
        rule: Mapping[str, Any], value: Any, path: str, errors: list[JudgeError]
    ) -> None:
        text = rule["rule"]
        outcome = _rule_outcome(text, value)
        if outcome == _PASS:
            return
        if outcome != _FAIL:  # an evaluation error: reported at the node itself
            errors.append(JudgeError(path, INVALID, str(outcome), text, path))
            return
        where = path
        field_path = rule.get("fieldPath")
        if field_path:
            where = (path + field_path) if path else field_path.lstrip(".")
        kind = _REASON_TYPE.get(rule.get("reason", "FieldValueInvalid"), INVALID)
        message = rule.get("message") or f"failed rule: {text}"
        errors.append(JudgeError(where, kind, message, text, path))


_PASS, _FAIL = "pass", "fail"
_OUTCOMES: dict[tuple[str, str], str] = {}


def _rule_outcome(text: str, value: Any) -> str:
    """_PASS, _FAIL or an error message. CEL is pure, so outcomes are memoised on the rule and
    the canonical JSON of `self` (celpy's interpreter costs about a millisecond a rule)."""
    key = (text, json.dumps(value, sort_keys=True, default=repr))
    outcome = _OUTCOMES.get(key)
    if outcome is None:
        try:
            result = _program(text).evaluate({"self": json_to_cel(value)})
        except CELEvalError as exc:
            outcome = f"{exc.args[0]} evaluating rule: {text}"
        else:
            if not isinstance(result, celtypes.BoolType):
                outcome = f"rule did not evaluate to bool: {text}"
            else:
                outcome = _PASS if result else _FAIL
        if len(_OUTCOMES) > 50_000:
            _OUTCOMES.clear()
        _OUTCOMES[key] = outcome
    return outcome


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


# =========================================================================== loading


@functools.cache
def _load_crd(path: str) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if doc.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return doc  # type: ignore[no-any-return]


def load_judge(path: str | Path, version: str | None = None) -> CRDJudge:
    """A judge for the CRD in `path` (its storage version unless `version` is given)."""
    return CRDJudge(_load_crd(str(path)), version)


def judges_by_kind(paths: Iterable[str | Path]) -> dict[str, CRDJudge]:
    out: dict[str, CRDJudge] = {}
    for p in paths:
        judge = load_judge(p)
        out[judge.kind] = judge
    return out
