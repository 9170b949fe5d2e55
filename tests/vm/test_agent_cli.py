"""`lvs-agent` as an operator of a plain Linux box runs it: a plan file, one shot or --watch.

The agent is started as its own process against a namespace (`--netns`), exactly like the
installed command; the test plays the human who runs `ipvsadm -D` behind its back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import plan_to_dict
from tests.unit.builders import node, rs, vs
from tests.vm.lvslab import first_apply
from tests.vm.netlab import Netns

AGENT = [sys.executable, "-m", "lvs_operator.agent.main"]


def _write_plan(path: Path, rips: list[str]) -> None:
    docs = [node("director", **{"lvs.dev/director": "true"}),
            vs("web", "192.0.2.10", ports=[{"port": 80, "targetPort": 8080}],
               scheduler={"name": "rr"}),
            *[rs(f"r{i}", ip, app="web") for i, ip in enumerate(rips)]]
    objects = [parse_manifest(d) for d in docs]
    plan = compile_cluster([o for o in objects if o is not None]).plans["director"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([plan_to_dict(plan)]))
    os.replace(tmp, path)  # atomic, as a config management tool would write it


def _table(ns: Netns) -> str:
    return ns.run(["ipvsadm", "-S", "-n"]).stdout


def _wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def test_dry_run_then_watch_repairs_drift_and_follows_the_file(
        make_netns: Callable[[str], Netns], tmp_path: Path):
    director = make_netns("director")
    director.ipr.link("add", ifname="eth0", kind="dummy")
    director.up("eth0")
    director.addr("eth0", "192.0.2.2/24")
    plan = tmp_path / "plan.json"
    _write_plan(plan, ["198.51.100.11", "198.51.100.12"])
    args = [*AGENT, "--node", "director", "--plan", str(plan), "--netns", director.name,
            "--state-dir", str(tmp_path / "state")]

    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "would apply: ipvs add-service tcp/192.0.2.10:80" in dry.stdout
    assert "would apply: address add 192.0.2.10/32 dev eth0" in dry.stdout
    assert _table(director) == ""  # nothing changed

    agent = subprocess.Popen([*args, "--watch", "--interval", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        first_apply(agent, lambda: "-a -t 192.0.2.10:80 -r 198.51.100.12:8080 -m -w 1"
                    in _table(director))
        director.run(["ipvsadm", "-D", "-t", "192.0.2.10:80"])  # drift, by hand
        director.run(["ip", "addr", "del", "192.0.2.10/32", "dev", "eth0"])
        _wait(lambda: "-A -t 192.0.2.10:80 -s rr" in _table(director)
              and "192.0.2.10/32" in director.run(["ip", "-o", "addr", "show", "eth0"]).stdout,
              30, "the drift repair")
        _write_plan(plan, ["198.51.100.11", "198.51.100.12", "198.51.100.13"])
        _wait(lambda: "-r 198.51.100.13:8080" in _table(director), 30, "the new plan")
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, out
    assert "applied: ipvs add-service tcp/192.0.2.10:80" in out
    assert (tmp_path / "state" / "director.json").exists()  # ownership survives restarts
