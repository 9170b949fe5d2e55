"""One source of truth for the API: typed dataclasses that also describe the CRD schema.

Every API type is a frozen dataclass whose fields carry `FieldSpec` metadata (JSON name,
bounds, formats, list semantics) and whose class carries `Rule`s: a CEL expression for the
apiserver (`x-kubernetes-validations`) paired with the same check in Python for offline use
(`lvsctl plan`, the operator's own parse). `openapi_schema()` turns a class into the structural
schema of the CRD; `parse()` turns a manifest dict into an instance, collecting every
`FieldError` instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "FieldError",
    "FieldSpec",
    "Rule",
    "SpecError",
    "field",
    "openapi_schema",
    "parse",
    "rules_of",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One thing wrong with a manifest: where (JSON path), what value, and how to fix it."""

    path: str
    message: str
    value: Any = None

    def __str__(self) -> str:
        shown = "" if self.value is None else f" (got {self.value!r})"
        return f"{self.path}: {self.message}{shown}"


class SpecError(ValueError):
    """A manifest that can never be valid as written; carries every field error found."""

    def __init__(self, obj: str, errors: list[FieldError]) -> None:
        self.obj = obj
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{obj} is invalid:\n{lines}")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Schema facts about one field that Python's type hints cannot say."""

    doc: str
    json_name: str | None = None
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    max_items: int | None = None
    min_items: int | None = None
    item_max_length: int | None = None  # lists of strings: bounds CEL's cost estimate
    pattern_message: str | None = None  # what `pattern` means, for people
    list_type: str | None = None  # "atomic" | "set" | "map"
    list_map_keys: tuple[str, ...] = ()
    int_or_string: bool = False
    rules: tuple[Rule, ...] = ()  # rules on the field's own value (CEL `self` = the value)


@dataclass(frozen=True, slots=True)
class Rule:
    """A validation rule, written twice on purpose: CEL for the apiserver, Python for us.

    `check` receives the parsed value (the dataclass instance for class rules, the field
    value for field rules) and returns True when valid. A test evaluates the CEL text with a
    CEL interpreter against the same invalid manifests to prove both halves agree.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None  # relative to the object the rule sits on, e.g. ".ports"
    reason: str = "FieldValueInvalid"


_SPEC_KEY = "lvs_field"


def field(
    doc: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    **facts: Any,
) -> Any:
    """Declare an API field: a dataclass field with its schema facts attached."""
    spec = FieldSpec(doc=doc, **facts)
    meta = {_SPEC_KEY: spec}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta, kw_only=True)
    if default is dataclasses.MISSING and not spec.required:
        default = None  # optional fields are absent (None) unless a default is declared
    return dataclasses.field(default=default, metadata=meta, kw_only=True)


def rules_of(cls: type) -> tuple[Rule, ...]:
    """Class-level rules, declared as a `RULES` class attribute."""
    return tuple(getattr(cls, "RULES", ()))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _json_name(f: dataclasses.Field[Any]) -> str:
    spec: FieldSpec = f.metadata[_SPEC_KEY]
    return spec.json_name or _camel(f.name)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional  # noqa: UP007 - rebuilt at runtime
    return tp, False


def _is_int_or_str(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and set(
        typing.get_args(tp)
    ) == {int, str}


# ---------------------------------------------------------------------------------------------
# OpenAPI generation


def _default_json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {}
    if isinstance(value, tuple):
        return [_default_json(v) for v in value]
    return value


def _cel_rules(rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        entry: dict[str, Any] = {"rule": r.cel, "message": r.message}
        if r.field_path:
            entry["fieldPath"] = r.field_path
        if r.reason != "FieldValueInvalid":
            entry["reason"] = r.reason
        out.append(entry)
    return out


def _type_schema(tp: Any, spec: FieldSpec | None) -> dict[str, Any]:
    if spec is not None and spec.int_or_string:
        schema: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        schema = openapi_schema(tp)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        schema = {"type": "string", "enum": [m.value for m in tp]}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int:
        schema = {"type": "integer", "format": "int64"}
    elif tp is str:
        schema = {"type": "string"}
    elif typing.get_origin(tp) is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        schema = {"type": "array", "items": _type_schema(item_tp, None)}
    elif typing.get_origin(tp) in (dict, Mapping) or tp is dict:
        schema = {"type": "object", "additionalProperties": {"type": "string"}}
    else:  # pragma: no cover - a programming error in the model
        raise TypeError(f"no schema mapping for {tp!r}")
    if spec is None:
        return schema
    schema["description"] = spec.doc
    for key, value in (
        ("minimum", spec.minimum),
        ("maximum", spec.maximum),
        ("maxLength", spec.max_length),
        ("pattern", spec.pattern),
        ("maxItems", spec.max_items),
        ("minItems", spec.min_items),
    ):
        if value is not None:
            schema[key] = value
    if spec.item_max_length is not None:
        schema["items"]["maxLength"] = spec.item_max_length
    if spec.list_type:
        schema["x-kubernetes-list-type"] = spec.list_type
    if spec.list_map_keys:
        schema["x-kubernetes-list-map-keys"] = list(spec.list_map_keys)
    if spec.rules:
        schema["x-kubernetes-validations"] = _cel_rules(spec.rules)
    return schema


def openapi_schema(cls: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of an API dataclass, with its CEL rules."""
    props: dict[str, Any] = {}
    required: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        spec: FieldSpec = f.metadata[_SPEC_KEY]
        tp, _optional = _unwrap_optional(hints[f.name])
        if _is_int_or_str(tp) and not spec.int_or_string:  # pragma: no cover
            raise TypeError(f"{cls.__name__}.{f.name}: int|str needs int_or_string=True")
        schema = _type_schema(tp, spec)
        if f.default is not dataclasses.MISSING and f.default is not None:
            schema["default"] = _default_json(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            schema["default"] = _default_json(f.default_factory())
        props[_json_name(f)] = schema
        if spec.required:
            required.append(_json_name(f))
    out: dict[str, Any] = {"type": "object", "properties": props}
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    if required:
        out["required"] = required
    class_rules = rules_of(cls)
    if class_rules:
        out["x-kubernetes-validations"] = _cel_rules(class_rules)
    return out


# ---------------------------------------------------------------------------------------------
# Parsing


def parse(cls: type[T], data: Any, path: str = "spec") -> tuple[T | None, list[FieldError]]:
    """Parse `data` into `cls`, returning the instance (None if invalid) and all errors."""
    errors: list[FieldError] = []
    value = _parse_object(cls, data, path, errors)
    return (value if not errors else None), errors


def _parse_object(cls: type[T], data: Any, path: str, errors: list[FieldError]) -> T | None:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        errors.append(FieldError(path, "must be an object", data))
        return None
    before = len(errors)
    hints = _hints(cls)
    known: dict[str, dataclasses.Field[Any]] = {
        _json_name(f): f for f in dataclasses.fields(typing.cast(Any, cls))
    }
    for key in data:
        if key not in known:
            suggestion = ", ".join(sorted(known))
            errors.append(FieldError(f"{path}.{key}", f"unknown field; known fields: {suggestion}"))
    kwargs: dict[str, Any] = {}
    for json_name, f in known.items():
        spec: FieldSpec = f.metadata[_SPEC_KEY]
        sub = f"{path}.{json_name}"
        tp, _optional = _unwrap_optional(hints[f.name])
        if json_name not in data or data[json_name] is None:
            if spec.required:
                errors.append(FieldError(sub, f"is required: {spec.doc}"))
            continue
        kwargs[f.name] = _parse_value(tp, spec, data[json_name], sub, errors)
    if len(errors) > before:
        return None
    obj = cls(**kwargs)
    for rule in rules_of(cls):
        if not rule.check(obj):
            errors.append(FieldError(path + (rule.field_path or ""), rule.message))
    return obj if len(errors) == before else None


def _parse_value(
    tp: Any, spec: FieldSpec | None, raw: Any, path: str, errors: list[FieldError]
) -> Any:
    before = len(errors)
    value: Any = None
    if spec is not None and spec.int_or_string:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            errors.append(FieldError(path, "must be a port number or a port name", raw))
        else:
            value = raw
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        value = _parse_object(tp, raw, path, errors)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            value = tp(raw)
        except ValueError:
            allowed = ", ".join(m.value for m in tp)
            errors.append(FieldError(path, f"must be one of: {allowed}", raw))
    elif tp is bool:
        if not isinstance(raw, bool):
            errors.append(FieldError(path, "must be true or false", raw))
        value = raw
    elif tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            errors.append(FieldError(path, "must be an integer", raw))
        value = raw
    elif tp is str:
        if not isinstance(raw, str):
            errors.append(FieldError(path, "must be a string", raw))
        value = raw
    elif typing.get_origin(tp) is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(raw, list | tuple):
            errors.append(FieldError(path, "must be a list", raw))
        else:
            value = tuple(
                _parse_value(item_tp, None, item, f"{path}[{i}]", errors)
                for i, item in enumerate(raw)
            )
    elif typing.get_origin(tp) in (dict, Mapping) or tp is dict:
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            errors.append(FieldError(path, "must be a map of strings to strings", raw))
        else:
            value = dict(raw)
    if len(errors) > before or spec is None:
        return value
    _check_facts(spec, value, path, errors)
    return value if len(errors) == before else None


def _check_facts(spec: FieldSpec, value: Any, path: str, errors: list[FieldError]) -> None:
    before = len(errors)
    if isinstance(value, int) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            errors.append(FieldError(path, f"must be at least {spec.minimum}", value))
        if spec.maximum is not None and value > spec.maximum:
            errors.append(FieldError(path, f"must be at most {spec.maximum}", value))
    if isinstance(value, str):
        if spec.max_length is not None and len(value) > spec.max_length:
            errors.append(FieldError(path, f"must be at most {spec.max_length} characters", value))
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            errors.append(
                FieldError(path, spec.pattern_message or f"must match {spec.pattern}", value)
            )
    if isinstance(value, tuple):
        if spec.max_items is not None and len(value) > spec.max_items:
            errors.append(FieldError(path, f"must have at most {spec.max_items} items"))
        if spec.min_items is not None and len(value) < spec.min_items:
            errors.append(FieldError(path, f"must have at least {spec.min_items} items"))
        if spec.item_max_length is not None:
            for i, item in enumerate(value):
                if isinstance(item, str) and len(item) > spec.item_max_length:
                    errors.append(
                        FieldError(
                            f"{path}[{i}]",
                            f"must be at most {spec.item_max_length} characters",
                            item,
                        )
                    )
        if spec.list_type == "set" and len(set(value)) != len(value):
            errors.append(FieldError(path, "must not contain duplicates", list(value)))
        if spec.list_type == "map":
            seen: set[tuple[Any, ...]] = set()
            for i, item in enumerate(value):
                key = tuple(getattr(item, _snake(k)) for k in spec.list_map_keys)
                if key in seen:
                    keys = "/".join(spec.list_map_keys)
                    errors.append(FieldError(f"{path}[{i}]", f"duplicate entry for {keys}", key))
                seen.add(key)
    if len(errors) == before:
        for rule in spec.rules:
            if not rule.check(value):
                errors.append(FieldError(path, rule.message, value))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
