"""--log-format text|json (observability/logs.py): the JSON line's fields, object references
from ObjectRefs, mappings and kopf records, and configure_logging's handler handling."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest

from lvs_operator.api.objects import ObjectRef
from lvs_operator.observability import JsonFormatter, configure_logging, object_ref


def record(message: str, *args: object, level: int = logging.INFO, **extra: object
           ) -> logging.LogRecord:
    rec = logging.LogRecord("lvs_operator.agent", level, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_json_line_has_time_level_logger_message() -> None:
    rec = record("applied %d change(s)", 3)
    rec.created = 1_700_000_000.25
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert json.loads(line) == {"time": "2023-11-14T22:13:20.250Z", "level": "info",
                                "logger": "lvs_operator.agent",
                                "message": "applied 3 change(s)"}


@pytest.mark.parametrize(("ref", "want"), [
    (ObjectRef("VirtualService", "shop", "web"),
     {"kind": "VirtualService", "namespace": "shop", "name": "web"}),
    ({"kind": "NodePlan", "name": "dir-1"}, {"kind": "NodePlan", "name": "dir-1"}),
    (ObjectRef("Node", "", "dir-1"), {"kind": "Node", "name": "dir-1"}),
])
def test_objects_and_nodes(ref: object, want: dict[str, str]) -> None:
    line = json.loads(JsonFormatter().format(record("x", object=ref, node="dir-1",
                                                    generation=7)))
    assert line["object"] == want
    assert line["node"] == "dir-1"
    assert line["generation"] == 7
    assert object_ref(ref) == want


def test_kopf_object_records_get_the_same_object_field() -> None:
    rec = record("Handler succeeded.", k8s_skip=False, settings=object(),
                 k8s_ref={"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
                          "name": "web", "namespace": "shop", "uid": "u"})
    line = json.loads(JsonFormatter().format(rec))
    assert line["object"] == {"kind": "VirtualService", "namespace": "shop", "name": "web"}
    assert "settings" not in line and "k8s_skip" not in line and "k8s_ref" not in line


def test_levels_exceptions_and_odd_values() -> None:
    try:
        raise RuntimeError("netlink went away")
    except RuntimeError:
        rec = logging.LogRecord("lvs_operator", logging.ERROR, __file__, 1, "publisher round "
                                "failed", (), sys.exc_info())
    rec.nodes = ["a", "b"]
    rec.thing = object()
    line = json.loads(JsonFormatter().format(rec))
    assert line["level"] == "error"
    assert "RuntimeError: netlink went away" in line["error"]
    assert line["nodes"] == ["a", "b"]
    assert line["thing"].startswith("<object object")
    assert json.loads(JsonFormatter().format(record("w", level=logging.WARNING)))["level"] == (
        "warning")


def test_fixed_fields_are_on_every_line_unless_the_record_has_its_own() -> None:
    formatter = JsonFormatter({"node": "dir-1"})
    assert json.loads(formatter.format(record("x")))["node"] == "dir-1"
    assert json.loads(formatter.format(record("x", node="dir-2")))["node"] == "dir-2"


def test_configure_logging_json_and_text() -> None:
    logger = logging.getLogger("lvs_operator.test_logs")
    logger.propagate = False
    try:
        out = io.StringIO()
        assert configure_logging("json", stream=out, logger=logger, fields={"node": "n1"})
        logger.info("hello %s", "world", extra={"object": ObjectRef("RealServer", "a", "b")})
        line = json.loads(out.getvalue())
        assert line["message"] == "hello world" and line["node"] == "n1"
        assert line["object"] == {"kind": "RealServer", "namespace": "a", "name": "b"}
        text = io.StringIO()
        assert configure_logging("text", stream=text, logger=logger,
                                 text_format="lvs-agent: %(message)s")
        logger.info("again")
        assert text.getvalue() == "lvs-agent: again\n"
        assert out.getvalue().count("\n") == 1  # the first handler was replaced
        assert len(logger.handlers) == 1
        logger.addHandler(logging.NullHandler())  # someone else's (a test runner's)
        assert configure_logging("json", stream=io.StringIO(), logger=logger) is None
        with pytest.raises(ValueError, match="text, json"):
            configure_logging("xml", logger=logger)
    finally:
        logger.handlers.clear()


def test_both_commands_take_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from lvs_operator.agent.main import _parser as agent_parser
    from lvs_operator.controller.main import _parser as operator_parser

    assert operator_parser().parse_args(["--log-format", "json"]).log_format == "json"
    assert operator_parser().parse_args([]).log_format == "text"
    assert agent_parser().parse_args(["--node", "n", "--log-format=json"]).log_format == "json"
    with pytest.raises(SystemExit):
        operator_parser().parse_args(["--log-format", "xml"])


def test_time_is_rfc3339_utc_with_milliseconds() -> None:
    line = json.loads(JsonFormatter().format(record("x")))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_agent_reports_as_json_lines(caplog: pytest.LogCaptureFixture) -> None:
    """--log-format json: the changes, warnings and failures of a pass are log records with
    the node, not text printed among the JSON lines."""
    from lvs_operator.agent.main import _log_report
    from lvs_operator.agent.reconcile import ReconcileReport, Step

    report = ReconcileReport(steps=[Step("address", "add", ("eth0", "192.0.2.10", 32),
                                         "192.0.2.10/32 dev eth0")],
                             failures=["ipvs: IPVS is not available"], warnings=["w"])
    caplog.set_level(logging.INFO, logger="lvs_operator.agent")
    _log_report(report, False, "dir-1")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert [(x["level"], x["message"]) for x in lines] == [
        ("info", "applied: address add 192.0.2.10/32 dev eth0"), ("warning", "w"),
        ("error", "ipvs: IPVS is not available")]
    assert {x["node"] for x in lines} == {"dir-1"}
    assert lines[0]["change"] == "address add 192.0.2.10/32 dev eth0"
