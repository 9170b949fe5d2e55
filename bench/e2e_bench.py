"""bench-e2e: `kubectl create` -> every VirtualService Programmed, through the whole system.

A real kube-apiserver + etcd and lvs-operator on this host, one lvs-agent in the qemu guest
(real IPVS) programming a director namespace. For each size N (1, 100, 1,000 NAT
VirtualServices with two RealServers each) the clock starts before `kubectl create -f` and
stops when the operator has marked every one Programmed (the agent applied the NodePlan
generation that carries it). Side by side, the reference: `ipvsadm-restore` of the same IPVS
table (`lvsctl plan --format ipvsadm`, what an expert would load by hand) into an empty
namespace in the same guest. Also the operator's and the agent's resident memory after each
size. Between sizes the VirtualServices are deleted (finalizers wait for the agent).

Results: bench/results/e2e.{txt,json,png}.   make bench-e2e  [-- --sizes 1,100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.controlplane import LocalControlPlane  # noqa: E402
from tests.harness.lvs_install import (  # noqa: E402
    HostOperator,
    agent_argv,
    agent_kubeconfig,
    install,
    programmed,
)
from tests.harness.vm import GuestVM  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NODE = "bench-dir"
LABELS = {"lvs.dev/bench-director": "true"}


def vip(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def manifests(ns: str, n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "lvs.dev/v1alpha1", "kind": "RealServer",
         "metadata": {"name": f"rs-{j}", "namespace": ns, "labels": {"app": "bench"}},
         "spec": {"address": f"198.19.0.{j}", "port": 8080}}
        for j in (1, 2)
    ]
    for i in range(n):
        docs.append({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": f"vs-{i}", "namespace": ns},
            "spec": {
                "address": vip(i), "ports": [{"port": 80, "protocol": "TCP"}],
                "scheduler": {"name": "rr"}, "forwarding": {"method": "NAT"},
                "directors": {"nodeSelector": {"matchLabels": LABELS}},
                "backends": {"realServerSelector": {"matchLabels": {"app": "bench"}}},
            },
        })
    return docs


def rss_mb(status_text: str) -> float:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reference_restore(guest: GuestVM, rules: str, tmp_name: str) -> float:
    """Seconds for ipvsadm-restore of `rules` into a fresh namespace, timed in the guest."""
    path = guest.put_file(f"/tmp/{tmp_name}.rules", rules)
    script = (
        "set -e; ip netns add ref; ip -n ref link set lo up; "
        "ip -n ref link add d0 type dummy; ip -n ref link set d0 up; "
        "ip -n ref route add default dev d0; "
        "s=$(date +%s.%N); ip netns exec ref ipvsadm-restore < " + path + "; "
        "e=$(date +%s.%N); ip netns del ref; echo $s $e"
    )
    out = guest.run(["sh", "-c", script], timeout=1800).stdout.split()
    return float(out[1]) - float(out[0])


def run(sizes: list[int], timeout: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lvs-bench-e2e-") as tmp, \
            LocalControlPlane(log=lambda m: print(f"[controlplane] {m}", flush=True)) as cp:
        operator = HostOperator(install(cp), Path(tmp) / "operator.log",
                                ["--agent-node-selector", "lvs.dev/bench-agent=true"])
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": NODE, "labels": {**LABELS, "lvs.dev/bench-agent": "true"}}}))
        operator.start()
        with GuestVM(forwards=[(6443, cp.port)], memory_mb=2048,
                     log=lambda m: print(f"[guest] {m}", flush=True)) as guest:
            kc = agent_kubeconfig(cp, NODE, server=f"https://{guest.forward_address(cp.port)}",
                                  path=Path(tmp) / "agent.kubeconfig")
            guest_kc = guest.put_file(kc, kc.read_text(), 0o600)
            # d0 keeps an address of its own: removing a device's last IPv4 address makes
            # the kernel flush the routes through it (the default route with it)
            guest.run(["sh", "-c", f"ip netns add {NODE}; ip -n {NODE} link set lo up; "
                       f"ip -n {NODE} link add d0 type dummy; ip -n {NODE} link set d0 up; "
                       f"ip -n {NODE} addr add 198.51.100.1/24 dev d0; "
                       f"ip -n {NODE} route add default dev d0"])
            agent = guest.spawn(agent_argv(NODE, guest_kc, netns=NODE, interval=10,
                                           state_dir="/var/lib/lvs-bench"), name="agent")
            try:
                # the agent's start (Python under TCG: seconds) is not part of what is measured
                t0 = time.monotonic()
                while time.monotonic() - t0 < 300:
                    plan = json.loads(cp.kubectl("get", "nodeplan", NODE, "-o", "json",
                                                 check=False).stdout or "{}")
                    if (plan.get("status") or {}).get("observedGeneration"):
                        break
                    time.sleep(0.5)
                print(f"agent up and reporting after {time.monotonic() - t0:.1f} s", flush=True)
                for i, n in enumerate(sizes):
                    rows.append(measure(cp, guest, operator, n, timeout, tmp,
                                        clean_up=i < len(sizes) - 1))
            finally:
                print("agent log (tail):\n" + guest.logs(agent)[-1500:])
                guest.kill(agent)
                operator.stop()
    return rows


def measure(cp: LocalControlPlane, guest: GuestVM, operator: HostOperator, n: int,
            timeout: float, tmp: str, *, clean_up: bool = True) -> dict[str, Any]:
    ns = f"bench-{n}"
    cp.kubectl("create", "namespace", ns)
    docs = manifests(ns, n)
    path = Path(tmp) / f"{ns}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    print(f"\n== {n} VirtualService(s): kubectl create -f ({len(docs)} objects)", flush=True)
    t0 = time.monotonic()
    cp.kubectl("create", "-f", str(path), timeout=1800)
    t_created = time.monotonic() - t0
    done = 0
    while time.monotonic() - t0 < timeout:
        done, total, _ = programmed(cp, ns)
        if total == n and done == n:
            break
        time.sleep(0.2 if n < 100 else 1.0)
    t_programmed = time.monotonic() - t0
    if done != n:
        raise SystemExit(f"only {done}/{n} Programmed after {timeout:.0f} s; operator log:\n"
                         f"{operator.log(3000)}")
    assert operator.proc is not None
    op_rss = rss_mb(Path(f"/proc/{operator.proc.pid}/status").read_text())
    pid = guest.run(["pgrep", "-f", f"agent.main --node {NODE}"]).stdout.split()[0]
    agent_rss = rss_mb(guest.read_file(f"/proc/{pid}/status"))
    # the reference: the same IPVS table by hand
    from lvs_operator.api.objects import parse_manifest
    from lvs_operator.compiler.engine import compile_cluster
    from lvs_operator.compiler.render import ipvsadm_save

    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": LABELS}}
    objs = [o for o in (parse_manifest(d) for d in [node, *docs]) if o is not None]
    rules = "\n".join(ipvsadm_save(compile_cluster(objs).plans[NODE].director.services)) + "\n"
    ref = reference_restore(guest, rules, ns)
    row = {"size": n, "create_s": round(t_created, 3), "programmed_s": round(t_programmed, 3),
           "ipvsadm_restore_s": round(ref, 3), "ratio": round(t_programmed / ref, 1),
           "operator_rss_mb": round(op_rss, 1), "agent_rss_mb": round(agent_rss, 1)}
    print(json.dumps(row), flush=True)
    if not clean_up:
        return row
    t1 = time.monotonic()
    cp.kubectl("delete", "virtualservices", "--all", "-n", ns, "--timeout=600s", timeout=700)
    print(f"   deleted (finalizers confirmed by the agent) in {time.monotonic() - t1:.1f} s")
    return row


def write(rows: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["size  kubectl-create  ->Programmed  ipvsadm-restore  ratio  operator-RSS  "
             "agent-RSS",
             *(f"{r['size']:>5}  {r['create_s']:>12.2f}s  {r['programmed_s']:>10.2f}s  "
               f"{r['ipvsadm_restore_s']:>13.3f}s  {r['ratio']:>5.1f}x  "
               f"{r['operator_rss_mb']:>9.1f} MB  {r['agent_rss_mb']:>6.1f} MB" for r in rows)]
    text = "\n".join(lines)
    print("\n" + text)
    (RESULTS / "e2e.txt").write_text(
        "kubectl create -> all VirtualServices Programmed (operator on the host, agent in a TCG "
        "guest)\nvs. ipvsadm-restore of the same table in the same guest\n\n" + text + "\n")
    (RESULTS / "e2e.json").write_text(json.dumps(rows, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["size"] for r in rows]
    ax.plot(xs, [r["programmed_s"] for r in rows], "o-", label="kubectl create -> Programmed")
    ax.plot(xs, [r["ipvsadm_restore_s"] for r in rows], "s--", label="ipvsadm-restore (by hand)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("VirtualServices (2 real servers each)")
    ax.set_ylabel("seconds")
    ax.set_title("end to end: API -> operator -> agent -> IPVS")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "e2e.png", dpi=80)
    print(f"wrote {RESULTS / 'e2e.txt'}, e2e.json and e2e.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,100,1000")
    p.add_argument("--timeout", type=float, default=1200.0, help="per size, seconds")
    args = p.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")], args.timeout)
    write(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
