"""make bench-compile: how the compiler scales, and what one backend change costs.

For each size (VirtualServices x 100 endpoints, Service-backed, on two directors), a fresh
subprocess parses the objects, compiles every node plan from scratch, then changes one
endpoint 25 times and measures the incremental recompile. Printed side by side: the
incremental update against a full recompile of the same cluster, and both against the
targets in the issue (full compile < 5 s and < 1 GB at 10,000 x 100; one change < 50 ms).
Results go to bench/results/compile.{json,txt,png}.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BACKENDS = 100
CHANGES = 25
TARGET_FULL_S = 5.0
TARGET_RSS_MB = 1024.0
TARGET_CHANGE_MS = 50.0


def _manifests(n_vs: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": f"director-{c}", "labels": {"lvs.dev/director": "true"}}}
        for c in "ab"
    ]
    for i in range(n_vs):
        vip = f"198.18.{i // 250}.{i % 250 + 1}"
        name = f"svc-{i}"
        docs.append({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"address": vip, "ports": [{"port": 80, "targetPort": 8080}],
                     "scheduler": {"name": "wrr"},
                     "directors": {"nodeSelector": {"matchLabels": {"lvs.dev/director": "true"}}},
                     "backends": {"service": {"name": name}}},
        })
        docs.append(_slice(i, name, ready_first=True))
    return docs


def _slice(i: int, name: str, ready_first: bool) -> dict[str, Any]:
    base = 0x0A000000  # endpoints are never contacted: the benchmark only compiles
    endpoints = []
    for j in range(BACKENDS):
        value = base + i * BACKENDS + j
        address = ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))
        ready = ready_first or j != 0
        endpoints.append({"addresses": [address],
                          "conditions": {"ready": ready, "serving": True, "terminating": not ready}})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(n_vs: int) -> dict[str, Any]:
    """Runs in its own process so peak RSS belongs to this size alone."""
    from lvs_operator.api.objects import parse_manifest
    from lvs_operator.compiler.engine import Compiler

    docs = _manifests(n_vs)
    gc.collect()
    t0 = time.perf_counter()
    objects = [parse_manifest(d) for d in docs]
    parse_s = time.perf_counter() - t0
    del docs
    gc.collect()
    rss_inputs = _rss_mb()

    t0 = time.perf_counter()
    compiler = Compiler()
    for obj in objects:
        assert obj is not None
        compiler.upsert(obj)
    plans = compiler.plans()
    full_s = time.perf_counter() - t0
    dests = sum(len(s.destinations) for s in plans["director-a"].director.services)
    assert dests == n_vs * BACKENDS, dests
    compiler.take_changed_nodes()

    # One backend changes: endpoint 0 of a service flips between ready and terminating.
    from lvs_operator.api.objects import parse_manifest as parse

    change_ms = []
    for k in range(CHANGES):
        i = (k * 7919) % n_vs
        changed = parse(_slice(i, f"svc-{i}", ready_first=k % 2 == 1))
        assert changed is not None
        t0 = time.perf_counter()
        compiler.upsert(changed)
        for node in compiler.take_changed_nodes():
            compiler.plan(node)
        change_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "virtual_services": n_vs,
        "destinations_per_director": dests,
        "parse_s": round(parse_s, 3),
        "full_compile_s": round(full_s, 3),
        "peak_rss_mb": round(_rss_mb(), 1),
        "rss_after_parse_mb": round(rss_inputs, 1),
        "change_median_ms": round(statistics.median(change_ms), 3),
        "change_max_ms": round(max(change_ms), 3),
    }


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["virtual_services"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(sizes, [r["full_compile_s"] * 1000 for r in rows], "o-",
              label="full compile (ms)")
    left.plot(sizes, [r["change_median_ms"] for r in rows], "s-",
              label="one backend change, incremental (ms, median)")
    left.axhline(TARGET_CHANGE_MS, color="grey", ls=":", label="change target 50 ms")
    left.axhline(TARGET_FULL_S * 1000, color="grey", ls="--", label="full target 5 s")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel(f"VirtualServices (x{BACKENDS} backends)")
    left.set_ylabel("milliseconds")
    left.legend(fontsize=7)
    left.set_title("compile time")
    right.plot(sizes, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS (MB)")
    right.axhline(TARGET_RSS_MB, color="grey", ls="--", label="target 1 GB")
    right.set_xscale("log")
    right.set_xlabel(f"VirtualServices (x{BACKENDS} backends)")
    right.set_ylabel("MB")
    right.legend(fontsize=7)
    right.set_title("memory")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f">> bench-compile: {size} VirtualServices x {BACKENDS} backends ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", str(size)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    header = (f"{'VS':>7} {'dests/dir':>10} {'parse s':>8} {'full s':>8} {'peak MB':>8} "
              f"{'change ms':>10} {'max ms':>8} {'full/change':>12}")
    lines = [header]
    for r in rows:
        ratio = r["full_compile_s"] * 1000 / max(r["change_median_ms"], 1e-6)
        lines.append(
            f"{r['virtual_services']:>7} {r['destinations_per_director']:>10} "
            f"{r['parse_s']:>8.2f} {r['full_compile_s']:>8.2f} {r['peak_rss_mb']:>8.0f} "
            f"{r['change_median_ms']:>10.2f} {r['change_max_ms']:>8.2f} {ratio:>11.0f}x")
    big = rows[-1]
    lines.append("")
    lines.append(
        f"targets at {big['virtual_services']} VS: full compile {big['full_compile_s']:.2f} s "
        f"(target < {TARGET_FULL_S:.0f} s: {'met' if big['full_compile_s'] < TARGET_FULL_S else 'MISSED'}), "
        f"peak RSS {big['peak_rss_mb']:.0f} MB (target < {TARGET_RSS_MB:.0f} MB: "
        f"{'met' if big['peak_rss_mb'] < TARGET_RSS_MB else 'MISSED'}), one change "
        f"{big['change_median_ms']:.2f} ms median (target < {TARGET_CHANGE_MS:.0f} ms: "
        f"{'met' if big['change_max_ms'] < TARGET_CHANGE_MS else 'MISSED'} by the max)")
    lines.append("peak RSS includes the parsed input objects; parse time is reported apart "
                 "because the operator parses objects one watch event at a time.")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compile.txt").write_text(text + "\n")
    (RESULTS / "compile.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, RESULTS / "compile.png")
    print(f"wrote {RESULTS / 'compile.txt'}, compile.json and compile.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
