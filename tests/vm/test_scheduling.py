"""Schedulers and draining, with real connections through agent-programmed IPVS (NAT).

One lab per test module would be faster, but each test re-programs the VirtualService
through the agent, which is itself part of what is tested: an edit of the scheduler must
take effect without re-creating the service.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.unit.builders import rs, vs
from tests.vm.lvslab import (
    LineClient,
    MakeNetns,
    get,
    line_echo,
    program,
    routed,
    udp_ask,
    udp_who,
    who_http,
)

VIP = "203.0.113.10"
RIPS = {"rs1": "198.51.100.11", "rs2": "198.51.100.12"}


def _service(scheduler: dict, weights: dict[str, int] | None = None, port: int = 80,
             protocol: str = "TCP", target: int = 8080, **spec: object) -> list[dict]:
    weights = weights or {}
    return [vs("web", VIP, ports=[{"port": port, "protocol": protocol, "targetPort": target}],
               scheduler=scheduler, **spec),
            *[rs(n, ip, app="web", weight=weights.get(n, 1)) for n, ip in RIPS.items()]]


@pytest.fixture
def lab(make_netns: MakeNetns) -> dict:
    return routed(make_netns)


def _http_answers(lab: dict, count: int) -> list[str]:
    with ExitStack() as servers:
        for name in RIPS:
            servers.enter_context(who_http(lab[name], 8080, name))
        return [get(lab["client"], VIP, 80)[0] for _ in range(count)]


def test_rr_alternates_and_wrr_follows_weights_exactly(lab: dict, tmp_path: Path):
    program(lab, _service({"name": "rr"}), tmp_path, nodes=("director",))
    answers = _http_answers(lab, 6)
    assert answers[0::2] == [answers[0]] * 3 and answers[1::2] == [answers[1]] * 3
    assert set(answers) == {"rs1", "rs2"}
    report = program(lab, _service({"name": "wrr"}, {"rs1": 3, "rs2": 1}), tmp_path,
                     nodes=("director",))["director"]
    kinds = {step.verb for step in report.steps}
    assert "edit-service" in kinds and "add-service" not in kinds  # edited in place
    assert Counter(_http_answers(lab, 8)) == {"rs1": 6, "rs2": 2}


def test_sh_keeps_a_client_on_one_server(lab: dict, tmp_path: Path):
    program(lab, _service({"name": "sh"}), tmp_path, nodes=("director",))
    assert len(set(_http_answers(lab, 6))) == 1


def test_lc_prefers_the_idle_server(lab: dict, tmp_path: Path):
    program(lab, _service({"name": "lc"}), tmp_path, nodes=("director",))
    with ExitStack() as servers:
        for name in RIPS:
            servers.enter_context(line_echo(lab[name], 8080, name))
        held = LineClient(lab["client"], VIP, 80)
        try:
            busy = held.ask("hold")
            others = []
            for i in range(3):  # short connections while one stays open on `busy`
                c = LineClient(lab["client"], VIP, 80)
                others.append(c.ask(f"short {i}"))
                c.close()
            assert held.ask("still here") == busy
        finally:
            held.close()
    assert others == [next(n for n in RIPS if n != busy)] * 3


def test_udp_service_balances(lab: dict, tmp_path: Path):
    program(lab, _service({"name": "rr"}, port=53, protocol="UDP", target=5353), tmp_path,
            nodes=("director",))
    with ExitStack() as servers:
        for name in RIPS:
            servers.enter_context(udp_who(lab[name], 5353, name))
        answers = [udp_ask(lab["client"], VIP, 53) for _ in range(6)]
    assert Counter(answers) == {"rs1": 3, "rs2": 3}


def test_drain_keeps_the_established_connection_then_deletes(lab: dict, tmp_path: Path):
    drain = {"timeoutSeconds": 12}
    program(lab, _service({"name": "rr"}, drain=drain), tmp_path, nodes=("director",))
    with ExitStack() as servers:
        for name in RIPS:
            servers.enter_context(line_echo(lab[name], 8080, name))
        held = LineClient(lab["client"], VIP, 80)
        leaving = held.ask("before")
        staying = next(n for n in RIPS if n != leaving)
        # The backend leaves the plan (its RealServer is deleted).
        remaining = [d for d in _service({"name": "rr"}, drain=drain)
                     if d["metadata"]["name"] != leaving]
        report = program(lab, remaining, tmp_path, nodes=("director",))["director"]
        assert report.waiting_drains == 1
        ipvs = lab["director"].run(["ipvsadm", "-Ln", "-t", f"{VIP}:80"]).stdout
        assert f"{RIPS[leaving]}:8080" in ipvs  # still there, at weight 0
        assert held.ask("during drain") == leaving  # the established connection survives
        fresh = []
        for i in range(4):
            c = LineClient(lab["client"], VIP, 80)
            fresh.append(c.ask(f"new {i}"))
            c.close()
        assert fresh == [staying] * 4  # new connections go elsewhere
        held.close()
        # IPVS keeps closed TCP connections in TIME_WAIT for two minutes, so the drain
        # deadline is what ends this drain; a bounded wait covers it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            program(lab, remaining, tmp_path, nodes=("director",))
            ipvs = lab["director"].run(["ipvsadm", "-Ln", "-t", f"{VIP}:80"]).stdout
            if f"{RIPS[leaving]}:8080" not in ipvs:
                break
            time.sleep(1)
        assert f"{RIPS[leaving]}:8080" not in ipvs, ipvs
        assert f"{RIPS[staying]}:8080" in ipvs
