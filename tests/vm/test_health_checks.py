"""Health checks for real: `lvs-agent --watch` probes the real servers of a NAT service in
its namespace and takes a dead one out of the real IPVS table, then puts it back; with a
quorum, the sorry server takes over while too few are alive. For DR the probe takes the
forwarding path: a real server that still answers on its own address but no longer accepts
packets for the VIP is out of rotation too.

Client requests are bounded (count and socket timeouts); addresses are the lab's
(203.0.113.0/24 client side, 198.51.100.0/24 real servers).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import plan_to_dict
from tests.unit.builders import rs, vs
from tests.vm.lvslab import LAB_NODES, first_apply, get, program, routed, segment, who_http
from tests.vm.netlab import Netns

AGENT = [sys.executable, "-m", "lvs_operator.agent.main"]
VIP = "203.0.113.10"
RS1, RS2 = "198.51.100.11", "198.51.100.12"
# keepalived's knobs, small: a server is down after retries + 1 failures, the first within
# `interval` of the stop and the rest `delayBeforeRetry` apart.
CHECK = {"type": "TCP", "connectTimeoutSeconds": 1, "retries": 3, "delayBeforeRetrySeconds": 1,
         "intervalSeconds": 3}
BOUND = CHECK["intervalSeconds"] * CHECK["retries"]  # the "interval x retries"


def _plan_file(path: Path, check: dict[str, Any],
               docs: list[dict[str, Any]] | None = None) -> None:
    docs = [*LAB_NODES, *(docs or [vs("web", VIP, scheduler={"name": "rr"}, healthCheck=check),
                                   rs("r1", RS1, app="web"), rs("r2", RS2, app="web")])]
    objects = [parse_manifest(d) for d in docs]
    plan = compile_cluster([o for o in objects if o is not None]).plans["director"]
    path.write_text(json.dumps([plan_to_dict(plan)]))


def _table(director: Netns) -> str:
    return director.run(["ipvsadm", "-S", "-n"]).stdout


def _has(director: Netns, address: str, port: int) -> bool:
    """Whether the director's table has that destination."""
    return f"-r {address}:{port} " in _table(director)


def _wait(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until `check()` held (polled every 0.1 s); bounded."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def _answers(client: Netns, n: int, vip: str = VIP) -> tuple[dict[str, int], int]:
    """n requests to the VIP, each on a fresh connection: who answered, and failures."""
    who: dict[str, int] = {}
    failures = 0
    for _ in range(n):
        try:
            server, _seen = get(client, vip, timeout=2.0)
        except OSError:
            failures += 1
            continue
        who[server] = who.get(server, 0) + 1
    return who, failures


@contextlib.contextmanager
def _agent(lab: dict[str, Netns], plan: Path, state: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*AGENT, "--node", "director", "--plan", str(plan), "--netns", lab["director"].name,
         "--state-dir", str(state), "--watch", "--interval", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        print(out)
        assert proc.returncode == 0, out


def test_dead_server_leaves_rotation_within_interval_x_retries_and_comes_back(
        make_netns: Callable[[str], Netns], tmp_path: Path):
    lab = routed(make_netns)
    client, director = lab["client"], lab["director"]
    plan = tmp_path / "plan.json"
    _plan_file(plan, CHECK)
    with contextlib.ExitStack() as rs1_up, who_http(lab["rs2"], 80, "rs2"), \
            _agent(lab, plan, tmp_path / "state") as agent:
        rs1_up.enter_context(who_http(lab["rs1"], 80, "rs1"))
        first_apply(agent, lambda: _has(director, RS1, 80) and _has(director, RS2, 80))
        who, failures = _answers(client, 6)
        assert failures == 0 and set(who) == {"rs1", "rs2"}, who

        rs1_up.close()  # rs1's service stops: connections are refused from now on
        detection = _wait(lambda: not _has(director, RS1, 80), BOUND + 10,
                          "rs1 to leave the IPVS table")
        print(f"detection: {detection:.2f} s (bound interval x retries = {BOUND} s)")
        assert detection <= BOUND, f"rs1 left after {detection:.2f} s, more than {BOUND} s"
        who, failures = _answers(client, 20)
        assert failures == 0, f"{failures} of 20 requests failed after detection"
        assert who == {"rs2": 20}, who

        with who_http(lab["rs1"], 80, "rs1"):
            back = _wait(lambda: _has(director, RS1, 80), 2 * BOUND,
                         "rs1 to come back")
            print(f"recovery: {back:.2f} s")
            who, failures = _answers(client, 6)
            assert failures == 0 and set(who) == {"rs1", "rs2"}, who
        assert agent.poll() is None, "the agent must keep running"


def test_quorum_loss_switches_to_the_sorry_server_and_back(
        make_netns: Callable[[str], Netns], tmp_path: Path):
    lab = routed(make_netns)
    client, director = lab["client"], lab["director"]
    plan = tmp_path / "plan.json"
    # two live servers are needed; the sorry server listens on rs2's port 8080
    _plan_file(plan, {**CHECK, "quorum": {"minimum": 2,
                                          "sorryServer": {"address": RS2, "port": 8080}}})
    with contextlib.ExitStack() as rs1_up, who_http(lab["rs2"], 80, "rs2"), \
            who_http(lab["rs2"], 8080, "sorry"), _agent(lab, plan, tmp_path / "state") as agent:
        rs1_up.enter_context(who_http(lab["rs1"], 80, "rs1"))
        first_apply(agent, lambda: _has(director, RS1, 80) and _has(director, RS2, 80))
        assert not _has(director, RS2, 8080)

        rs1_up.close()
        _wait(lambda: _has(director, RS2, 8080), BOUND + 10, "the sorry server")
        table = _table(director)
        assert f"-r {RS1}:80 " not in table and f"-r {RS2}:80 " not in table, table
        who, failures = _answers(client, 6)
        assert failures == 0 and who == {"sorry": 6}, who

        with who_http(lab["rs1"], 80, "rs1"):
            _wait(lambda: not _has(director, RS2, 8080), 2 * BOUND,
                  "quorum to come back")
            table = _table(director)
            assert f"-r {RS1}:80 " in table and f"-r {RS2}:80 " in table, table
            who, failures = _answers(client, 6)
            assert failures == 0 and set(who) == {"rs1", "rs2"}, who


# method, its forwarding flag in ipvsadm -S, how rs1's path breaks and is mended
PATH_BREAKS = {
    "DR": ({"method": "DR"}, "-g -w 1",
           ["ip", "addr", "del", "192.0.2.10/32", "dev", "lo"],
           ["ip", "addr", "add", "192.0.2.10/32", "dev", "lo"]),
    "TUN": ({"method": "TUN", "tunnel": {"type": "ipip"}}, "-i -w 1 --tun-type ipip",
            ["ip", "link", "set", "tunl0", "down"], ["ip", "link", "set", "tunl0", "up"]),
}


@pytest.mark.parametrize("method", sorted(PATH_BREAKS))
def test_dr_and_tun_checks_take_the_forwarding_path_through_the_vip(
        make_netns: Callable[[str], Netns], tmp_path: Path, method: str):
    """rs1's path for the VIP breaks (DR: the VIP leaves its lo; TUN: its tunnel device goes
    down): it still answers on 192.0.2.11:80, so a probe of the RIP would pass, but packets
    for the VIP no longer reach its server. The director (the VIP holder: the probe's reply
    comes from one of its own addresses) must take it out all the same."""
    forwarding, flags, break_path, mend_path = PATH_BREAKS[method]
    lab = segment(make_netns)
    client, director = lab["client"], lab["director"]
    vip, rip1, rip2 = "192.0.2.10", "192.0.2.11", "192.0.2.12"
    docs = [vs("web", vip, scheduler={"name": "rr"}, forwarding=forwarding, healthCheck=CHECK),
            rs("r1", rip1, app="web", nodeName="rs1"), rs("r2", rip2, app="web", nodeName="rs2")]
    program(lab, docs, tmp_path, nodes=("rs1", "rs2"))  # VIP on lo, ARP sysctls
    plan = tmp_path / "plan.json"
    _plan_file(plan, CHECK, docs)
    with who_http(lab["rs1"], 80, "rs1"), who_http(lab["rs2"], 80, "rs2"), \
            _agent(lab, plan, tmp_path / "state") as agent:
        first_apply(agent, lambda: _has(director, rip1, 80) and _has(director, rip2, 80))
        table = _table(director)
        assert f"-r {rip1}:0 {flags}" in table and f"-r {rip2}:0 {flags}" in table, table
        assert vip in director.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert director.run(["sysctl", "-n", "net.ipv4.conf.all.accept_local"]).stdout.strip() \
            == "1"
        # both stay in: the probes' replies (from the VIP, to the VIP holder) are accepted
        time.sleep(CHECK["intervalSeconds"] * 2)
        assert _has(director, rip1, 80) and _has(director, rip2, 80), _table(director)
        who, failures = _answers(client, 6, vip)
        assert failures == 0 and set(who) == {"rs1", "rs2"}, who

        lab["rs1"].run(break_path)
        assert get(client, rip1)[0] == "rs1"  # its own address still answers
        # Its packets are dropped, not refused: every probe waits out the connect timeout, so
        # keepalived's worst case is interval + (retries + 1) x timeout + retries x delay; and
        # a second for the agent to apply the verdict.
        bound = (CHECK["intervalSeconds"] + (CHECK["retries"] + 1) * CHECK["connectTimeoutSeconds"]
                 + CHECK["retries"] * CHECK["delayBeforeRetrySeconds"] + 1)
        detection = _wait(lambda: not _has(director, rip1, 80), bound + 10,
                          "rs1 to leave the IPVS table")
        print(f"{method} forwarding-path detection: {detection:.2f} s (bound {bound} s)")
        assert detection <= bound, f"rs1 left after {detection:.2f} s, more than {bound} s"
        who, failures = _answers(client, 20, vip)
        assert failures == 0 and who == {"rs2": 20}, (who, failures)

        lab["rs1"].run(mend_path)
        back = _wait(lambda: _has(director, rip1, 80), 2 * BOUND, "rs1 to come back")
        print(f"{method} forwarding-path recovery: {back:.2f} s")
        who, failures = _answers(client, 6, vip)
        assert failures == 0 and set(who) == {"rs1", "rs2"}, who
        assert agent.poll() is None, "the agent must keep running"
