"""bench-ha: how long director failover and dead-backend detection take, measured for real.

Failover: a real kube-apiserver + etcd and lvs-operator on this host; two directors, each
with its lvs-agent, in the qemu guest (real IPVS), on one Ethernet segment with a client and
two DR real servers (tests/harness/hasite.py). For each way of taking the active director
away, `--runs` times:

- Lease mode, agent SIGKILLed (the VIP goes by its lifetime; a standby waits out the Lease);
- Lease mode, its link cut (no carrier: the holder releases the Lease at once);
- VRRP mode (keepalived run by the agents), its link cut (adverts stop: 3 x advert_int +
  skew);
- VRRP mode, agent stopped (SIGTERM: keepalived sends priority 0, a backup takes over).

Measured from the client: the outage a new connection every 0.2 s sees (first failure to
the next success; under TCG a probe costs ~1.5 s of the guest's one CPU, which is the
resolution), and from the host the time until the other director holds the VIP. The
Lease and VRRP rows side by side are the comparison with the reference (keepalived VRRP).

Detection: bench/ha_detect.py in the same guest (the agent's health checks beside
keepalived's own TCP_CHECK, same knobs).

The guest is emulated (TCG): Python start-up, TLS and Lease round trips take ~10x what they
take on hardware, so the Lease rows use timings an emulated guest sustains (`--lease`,
default hasite.LEASE); the defaults (2 s / 1500 ms / 500 ms) are for real nodes.

Results: bench/results/ha.{txt,json,png}.   make bench-ha  [BENCH_ARGS="--runs 3"]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.controlplane import LocalControlPlane  # noqa: E402
from tests.harness.hasite import (  # noqa: E402
    LAB,
    LEASE,
    NODES,
    NS,
    PREFIX,
    Site,
    cluster_objects,
    virtual_service,
)
from tests.harness.lvs_install import HostOperator, agent_kubeconfig, install  # noqa: E402
from tests.harness.vm import GuestVM  # noqa: E402
from tests.harness.waiting import wait_until  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VRRP = {"mode": "VRRP", "vrrp": {"virtualRouterID": 51, "advertIntervalSeconds": 1},
        "connectionSync": {"enabled": True, "syncID": 9}}


def _cut(site: Site) -> Callable[[str], None]:
    def cut(node: str) -> None:
        site.guest.run(["ip", "-n", f"{PREFIX}-lan", "link", "set", f"p-{node[-1]}", "down"],
                       timeout=30)
    return cut


def _restore_link(site: Site, node: str) -> None:
    site.guest.run(["ip", "-n", f"{PREFIX}-lan", "link", "set", f"p-{node[-1]}", "up"],
                   timeout=30)


def one_failover(site: Site, take_away: Callable[[str], None],
                 put_back: Callable[[str], None]) -> dict[str, Any]:
    wait_until("exactly one director holds the VIP", lambda: len(site.holders()) == 1,
               timeout=120)
    (active,) = site.holders()
    standby = next(n for n in NODES if n != active)
    probe = site.guest.spawn([*LAB, "probe", "--prefix", PREFIX, "203.0.113.10", "7000",
                              "300"], name="probe")
    site.guest.wait_for_log(probe, "PROBING", timeout=180)  # Python start under TCG
    time.sleep(2)
    started = time.monotonic()
    take_away(active)
    wait_until(f"{standby} holds the VIP", lambda: site.holders() == {standby}, timeout=60)
    moved = time.monotonic() - started
    time.sleep(2)
    site.guest.kill(probe)
    result = json.loads(site.guest.logs(probe).strip().splitlines()[-1])
    outage = max((end - start for start, end in result["outages"]), default=0.0)
    put_back(active)
    print(f"  {active} -> {standby}: client outage {outage:.2f} s, VIP on {standby} after "
          f"{moved:.1f} s (host-polled); {result['failed']} failed requests", flush=True)
    return {"outage": round(outage, 2), "moved": round(moved, 2), "from": active}


def scenarios(site: Site, runs: int, lease: dict[str, int],
              errors: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}

    def kill(node: str) -> None:
        site.kill_agent(node, signal.SIGKILL)

    def stop(node: str) -> None:
        site.kill_agent(node, signal.SIGTERM)

    def restart(node: str) -> None:
        """A new agent, ready before the next run: under TCG its start and first full pass
        take tens of seconds, and an agent not up yet cannot take over."""
        site.start_agent(node)
        site.guest.wait_for_log(site.agents[node], "applying generation", timeout=240)
        time.sleep(15)

    def mode(ha: dict[str, Any]) -> None:
        site.kubectl("apply", "-f", "-", input=yaml.safe_dump(virtual_service(ha)))
        time.sleep(5)

    plan: list[tuple[str, dict[str, Any], Callable[[str], None], Callable[[str], None]]] = [
        ("lease/agent-killed", {"mode": "Lease", "lease": lease,
                                "connectionSync": {"enabled": True, "syncID": 9}},
         kill, restart),
        ("lease/link-cut", {}, _cut(site), lambda n: _restore_link(site, n)),
        ("vrrp/link-cut", VRRP, _cut(site), lambda n: _restore_link(site, n)),
        ("vrrp/agent-stopped", {}, stop, restart),
    ]
    for name, ha, take_away, put_back in plan:
        if ha:
            mode(ha)
        print(f"{name}: {runs} runs", flush=True)
        out[name] = []
        for i in range(runs):
            print(f" run {i + 1}/{runs}", flush=True)
            try:
                out[name].append(one_failover(site, take_away, put_back))
            except Exception as exc:  # reported in the results, the other scenarios still run
                print(f"  failed: {exc}", flush=True)
                errors.setdefault(name, []).append(str(exc)[:2000])
                for node in NODES:  # whatever was taken away comes back
                    _restore_link(site, node)
                    if node not in site.agents:
                        site.start_agent(node)
            time.sleep(3)  # settle: the director that came back stands by
    return out


def detection(guest: GuestVM, runs: int) -> dict[str, Any]:
    done = guest.run([sys.executable, str(ROOT / "bench" / "ha_detect.py"), "--runs",
                      str(runs)], timeout=1800)
    print(done.stdout.strip(), flush=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [r[key] for r in rows]
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2),
            "n": len(values)}


def run(runs: int, lease: dict[str, int], skip_detection: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lvs-bench-ha-") as tmp, \
            LocalControlPlane(log=lambda m: print(f"[controlplane] {m}", flush=True)) as cp:
        operator = HostOperator(install(cp), Path(tmp) / "operator.log",
                                ["--agent-node-selector", "lvs.dev/ha-agent=true"])
        with GuestVM(forwards=[(6443, cp.port)], memory_mb=2048,
                     log=lambda m: print(f"[guest] {m}", flush=True)) as guest:
            lab = guest.spawn([*LAB, "ha-up", "--prefix", PREFIX], name="ha-site")
            guest.wait_for_log(lab, "READY", timeout=180)
            objects = cluster_objects()
            objects[-1] = virtual_service({"mode": "Lease", "lease": lease,
                                           "connectionSync": {"enabled": True, "syncID": 9}})
            cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
            operator.start()
            server = f"https://{guest.forward_address(cp.port)}"
            kubeconfigs = {}
            for node in NODES:
                kc = agent_kubeconfig(cp, node, server=server, path=Path(tmp) / f"{node}.kc")
                kubeconfigs[node] = guest.put_file(kc, kc.read_text(), 0o600)
            site = Site(cp, guest, kubeconfigs)
            errors: dict[str, list[str]] = {}
            for node in NODES:
                site.start_agent(node)
            try:
                failovers = scenarios(site, runs, lease, errors)
            finally:
                for node in list(site.agents):
                    site.kill_agent(node)
                operator.stop()
                guest.kill(lab)
                cp.kubectl("delete", "namespace", NS, "--wait=false", check=False)
            # alone in the guest: the agents and the site would take its one CPU
            detect = {} if skip_detection else detection(guest, runs)
    return {"runs": runs, "lease": lease, "failover": failovers, "detection": detect,
            "errors": errors,
            "summary": {name: {"outage": summarise(rows, "outage"),
                               "moved": summarise(rows, "moved")}
                        for name, rows in failovers.items() if rows}}


def report(result: dict[str, Any]) -> str:
    lines = [f"bench-ha: director failover (qemu TCG guest, {result['runs']} runs each; Lease "
             f"timings {result['lease']})",
             f"{'scenario':<22}{'client outage median':>22}{'max':>8}"
             f"{'VIP moved median':>18}{'max':>8}"]
    for name, s in result["summary"].items():
        lines.append(f"{name:<22}{s['outage']['median']:>20.2f} s{s['outage']['max']:>6.2f} s"
                     f"{s['moved']['median']:>16.2f} s{s['moved']['max']:>6.2f} s")
    summary = result["summary"]
    for how in ("link-cut",):
        lease, vrrp = summary.get(f"lease/{how}"), summary.get(f"vrrp/{how}")
        if lease and vrrp and vrrp["outage"]["median"]:
            lines.append(f"ratio lease/vrrp ({how}, client outage medians): "
                         f"{lease['outage']['median'] / vrrp['outage']['median']:.2f}")
    for name, errs in result.get("errors", {}).items():
        lines.append(f"{name}: {len(errs)} run(s) failed: {errs[0][:300]}")
    det = result.get("detection") or {}
    if det.get("summary"):
        lines.append("dead-backend detection (bench/ha_detect.py):")
        lines.append(json.dumps(det["summary"], indent=1))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, rows in result["failover"].items() if rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    data = [[r["outage"] for r in result["failover"][n]] for n in names]
    ax.boxplot(data, vert=False)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xlabel("client outage, s (qemu TCG guest)")
    ax.set_title("director failover: Lease (ours) vs VRRP (keepalived)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--lease", type=json.loads, default=LEASE,
                   help="spec.ha.lease for the Lease rows, JSON (default: %(default)s)")
    p.add_argument("--skip-detection", action="store_true")
    args = p.parse_args()
    result = run(max(1, min(args.runs, 20)), args.lease, args.skip_detection)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = report(result)
    print(text)
    (RESULTS / "ha.txt").write_text(text + "\n")
    (RESULTS / "ha.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / "ha.png")
    print(f"wrote {RESULTS / 'ha.txt'}, ha.json, ha.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
