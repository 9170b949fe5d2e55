"""Log output of `lvs-operator` and `lvs-agent`: `--log-format text` (the default, one line of
prose per record) or `--log-format json` (one JSON object per line, for Loki, Elasticsearch,
Cloud Logging and the like).

A JSON line always has `time` (RFC 3339, UTC, milliseconds), `level` (debug, info, warning,
error, critical), `logger` and `message`; where the log call names what it is about it adds
`object` ({kind, namespace, name}: a VirtualService, RealServer, NodePlan ...) and/or `node`,
then any other `extra=` fields of the call, and `error` (the traceback) for exceptions. A log
call names its object with `extra={"object": ref}` (anything with kind/namespace/name
attributes, or a mapping with those keys) and its node with `extra={"node": name}`; kopf's
own per-object records (`k8s_ref`) get the same `object` field.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "object_ref"]

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has: never copied into a JSON line as "extra" fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}
# kopf's per-record bookkeeping: k8s_ref becomes `object`, the rest is dropped.
_DROPPED = frozenset({"k8s_ref", "k8s_skip", "settings"})
_LEVELS = {
    logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
    logging.ERROR: "error", logging.CRITICAL: "critical",
}


def object_ref(obj: Any) -> dict[str, str] | None:
    """{kind, namespace, name} of an ObjectRef-like object or mapping (None if it is not
    one); an empty namespace (cluster-scoped) is left out."""
    if isinstance(obj, Mapping):
        get = obj.get
    elif all(hasattr(obj, a) for a in ("kind", "name")):
        def get(key: str, default: Any = None) -> Any:
            return getattr(obj, key, default)
    else:
        return None
    out = {"kind": str(get("kind") or ""), "name": str(get("name") or "")}
    namespace = get("namespace")
    if namespace:
        out["namespace"] = str(namespace)
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. `fields` are added to every line unless the
    record has its own (the agent adds its `node`)."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": _LEVELS.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "message": record.getMessage(),
        }
        attrs = vars(record)
        ref = attrs.get("object")
        if ref is None and isinstance(attrs.get("k8s_ref"), Mapping):
            ref = attrs["k8s_ref"]
        if ref is not None:
            line["object"] = object_ref(ref) or str(ref)
        if attrs.get("node") is not None:
            line["node"] = str(attrs["node"])
        for key, value in attrs.items():
            if key in _STANDARD or key in _DROPPED or key in ("object", "node") or key in line:
                continue
            line[key] = _jsonable(value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in self.fields.items():
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def configure_logging(
    log_format: str,
    *,
    level: int = logging.INFO,
    text_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
    stream: IO[str] | None = None,
    fields: Mapping[str, str] | None = None,
    logger: logging.Logger | None = None,
) -> logging.Handler | None:
    """Send every record at `level` and above to `stream` (stderr) as text or JSON lines
    (`fields` on every JSON line), through the root logger (or `logger`). Like
    logging.basicConfig it leaves a logger alone that already has handlers someone else
    installed (a test runner's), and returns None then; a handler of an earlier call is
    replaced, so calling it twice does not print twice."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    target = logger if logger is not None else logging.getLogger()
    ours = [h for h in target.handlers if getattr(h, "_lvs_logs", False)]
    if len(ours) != len(target.handlers):
        return None
    for old in ours:
        target.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._lvs_logs = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter(fields) if log_format == "json" else
                         logging.Formatter(text_format))
    target.addHandler(handler)
    target.setLevel(level)
    return handler
