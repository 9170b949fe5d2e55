"""bench-kernel: NetlinkIPVS.apply against ipvsadm-restore on real IPVS (inside the VM).

For each size N (services x 10 NAT destinations, so N x 11 operations), two fresh network
namespaces are filled from empty with the same table: one by `NetlinkIPVS.apply` (socket
opening included, interpreter start-up not: the agent is a long-running process), one by
`ipvsadm-restore` reading the rules our renderer prints (`ipvsadm_save`). Both tables must
print the same `ipvsadm -S -n`. Then, on the full tables, one destination edit: one apply()
of one op against one `ipvsadm -e` process; and a full read: `NetlinkIPVS.dump()` against
`ipvsadm -S -n`. Results: bench/results/kernel.{txt,json,png}.

    # from the host (boots the VM and brings the results back into bench/results):
    .venv/bin/python -m tests.harness.vm run --memory 2048 --timeout 3600 \\
        --outdir bench/results -- .venv/bin/python bench/kernel_bench.py
    # or simply (does the same):
    .venv/bin/python bench/kernel_bench.py

Inside the guest the results go to $LVS_VM_OUTDIR (the harness's results share; without
--outdir the harness discards it, so the table is printed too). `--sizes 100,1000` caps the
run when 10000 takes too long.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DESTS = 10
EDIT_REPEATS = 11
STEP_TIMEOUT_S = 1800  # every subprocess is bounded


def _sh(argv: list[str], *, stdin: str | None = None, timeout: float = STEP_TIMEOUT_S) -> str:
    return subprocess.run(
        argv, input=stdin, text=True, check=True, capture_output=True, timeout=timeout
    ).stdout


def _netns(name: str) -> None:
    """A namespace where 198.18.0.0/15 destinations are unicast (dummy device, default route)."""
    _sh(["ip", "netns", "add", name])
    _sh(
        ["ip", "-n", name, "-batch", "-"],
        stdin="\n".join(
            [
                "link set lo up",
                "link add d0 type dummy",
                "link set d0 up",
                "addr add 198.51.100.1/24 dev d0",
                "route add default dev d0",
            ]
        )
        + "\n",
    )


def _drop_netns(name: str) -> None:
    """Flush first: namespace teardown frees IPVS asynchronously, behind the next size."""
    subprocess.run(
        ["ip", "netns", "exec", name, "ipvsadm", "-C"],
        check=False,
        capture_output=True,
        timeout=STEP_TIMEOUT_S,
    )
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=60)


def _services(n: int) -> list[Any]:
    from lvs_operator.compiler.plan import Destination, IPVSService, ServiceKey

    out = []
    for i in range(n):
        vip = f"198.18.{i // 250}.{i % 250 + 1}"
        dests = []
        for j in range(DESTS):
            k = (i * DESTS + j) % 64000  # 198.19.0.1 .. 198.19.255.250
            dests.append(Destination(f"198.19.{k // 250}.{k % 250 + 1}", 8080, "masq", 1 + j))
        out.append(IPVSService(ServiceKey(4, "tcp", vip, 80, 0), "wrr", destinations=tuple(dests)))
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def measure(n: int, batch: int) -> dict[str, Any]:
    from lvs_operator.compiler.render import ipvsadm_save
    from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind
    from lvs_operator.kernel.real_ipvs import NetlinkIPVS

    services = _services(n)
    ops = []
    for s in services:
        ops.append(IPVSOp(IPVSOpKind.ADD_SERVICE, s))
        ops.extend(IPVSOp(IPVSOpKind.ADD_DEST, s, d) for d in s.destinations)
    rules = "\n".join(ipvsadm_save(services)) + "\n"
    ours_ns, ref_ns = f"kb-ours-{n}", f"kb-ref-{n}"
    _netns(ours_ns)
    _netns(ref_ns)
    try:
        table = NetlinkIPVS(ours_ns, batch=batch)

        def load() -> list[Any]:
            table.probe()  # opens the socket: part of the cost
            return table.apply(ops)

        ours_s, failures = _timed(load)
        if failures:
            raise SystemExit(
                f"{len(failures)} ops failed, first: {failures[0].op}: {failures[0].error}"
            )
        with tempfile.TemporaryFile("w+") as fh:
            fh.write(rules)
            fh.seek(0)
            ref_s, _ = _timed(
                lambda: subprocess.run(
                    ["ip", "netns", "exec", ref_ns, "ipvsadm-restore"],
                    stdin=fh,
                    check=True,
                    capture_output=True,
                    timeout=STEP_TIMEOUT_S,
                )
            )

        # one destination edit on the full table
        s = services[n // 2]
        d = s.destinations[3]
        ipvsadm_e = ["ip", "netns", "exec", ref_ns, "ipvsadm", "-e", "-t", f"{s.key.address}:80"]
        ipvsadm_e += ["-r", f"{d.address}:8080", "-m", "-w"]
        edit_ms, ref_edit_ms = [], []
        for r in range(EDIT_REPEATS):
            op = IPVSOp(IPVSOpKind.EDIT_DEST, s, d._replace(weight=100 + r))
            t, fails = _timed(functools.partial(table.apply, [op]))
            assert not fails, fails
            edit_ms.append(t * 1000)
        for r in range(5):
            t, _ = _timed(functools.partial(_sh, [*ipvsadm_e, str(100 + r)]))
            ref_edit_ms.append(t * 1000)

        # back to the planned weight (untimed), then full reads: the tables must agree
        assert not table.apply([IPVSOp(IPVSOpKind.EDIT_DEST, s, d)])
        _sh([*ipvsadm_e, str(d.weight)])
        dump_s, live = _timed(table.dump)
        live_dests = sum(len(ls.destinations) for ls in live)
        ref_dump_s, ref_saved = _timed(
            lambda: _sh(["ip", "netns", "exec", ref_ns, "ipvsadm", "-S", "-n"])
        )
        ours_saved = _sh(["ip", "netns", "exec", ours_ns, "ipvsadm", "-S", "-n"])
        identical = ours_saved == ref_saved == rules
        table.close()
    finally:
        _drop_netns(ours_ns)
        _drop_netns(ref_ns)
    return {
        "services": n,
        "destinations": n * DESTS,
        "operations": len(ops),
        "batch": batch,
        "netlinkipvs_apply_s": round(ours_s, 3),
        "ipvsadm_restore_s": round(ref_s, 3),
        "ratio_restore_over_apply": round(ref_s / ours_s, 2),
        "edit_one_dest_ms_median": round(statistics.median(edit_ms), 3),
        "edit_one_dest_ms_max": round(max(edit_ms), 3),
        "ipvsadm_e_ms_median": round(statistics.median(ref_edit_ms), 1),
        "netlinkipvs_dump_s": round(dump_s, 3),
        "ipvsadm_save_s": round(ref_dump_s, 3),
        "dumped_services": len(live),
        "dumped_destinations": live_dests,
        "identical_ipvsadm_save": identical,
    }


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [r["operations"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(ops, [r["netlinkipvs_apply_s"] for r in rows], "o-", label="NetlinkIPVS.apply")
    ax.plot(ops, [r["ipvsadm_restore_s"] for r in rows], "s--", label="ipvsadm-restore")
    ax.plot(
        ops, [r["netlinkipvs_dump_s"] for r in rows], "^:", label="NetlinkIPVS.dump (read back)"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"operations (services x {DESTS + 1}), from an empty table")
    ax.set_ylabel("seconds")
    ax.set_title("real IPVS in the VM (TCG): load a table")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'services':>8} {'ops':>7} {'apply s':>8} {'restore s':>9} {'restore/apply':>13} "
        f"{'edit ms':>8} {'ipvsadm -e ms':>13} {'dump s':>7} {'ipvsadm -S s':>12} {'same':>5}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['services']:>8} {r['operations']:>7} {r['netlinkipvs_apply_s']:>8.2f} "
            f"{r['ipvsadm_restore_s']:>9.2f} {r['ratio_restore_over_apply']:>12.2f}x "
            f"{r['edit_one_dest_ms_median']:>8.2f} {r['ipvsadm_e_ms_median']:>13.1f} "
            f"{r['netlinkipvs_dump_s']:>7.2f} {r['ipvsadm_save_s']:>12.2f} "
            f"{'yes' if r['identical_ipvsadm_save'] else 'NO':>5}"
        )
    lines += [
        "",
        f"apply: NetlinkIPVS.apply of every op from an empty table ({rows[0]['batch']} messages "
        "per send, socket opening included); restore: `ipvsadm-restore` of the same rules as "
        "ipvsadm_save renders them (process start-up included, as an operator would run it).",
        f"edit: one EDIT_DEST apply on the full table, median of {EDIT_REPEATS}; ipvsadm -e: one "
        "process, median of 5. dump: every service and destination read back; ipvsadm -S: "
        "the same read by ipvsadm. same: both namespaces print the same `ipvsadm -S -n`, "
        "equal to the rendered rules.",
        f"kernel {os.uname().release}, qemu TCG (no KVM), 1 vCPU.",
    ]
    return "\n".join(lines)


def _run_in_vm(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.harness.vm import run_in_vm

    RESULTS.mkdir(parents=True, exist_ok=True)
    python = str(Path(sys.executable))
    return run_in_vm(
        [python, str(Path(__file__).resolve()), *argv], memory_mb=2048, timeout=3600, outdir=RESULTS
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="100,1000,10000",
        help="services per run, comma separated (10 destinations each)",
    )
    parser.add_argument("--batch", type=int, default=64, help="messages per send()")
    parser.add_argument("--out", help="results directory (default: $LVS_VM_OUTDIR in the VM)")
    args = parser.parse_args()
    if os.environ.get("LVS_IN_VM") != "1":
        print(">> bench-kernel: the host has no IPVS; running in the VM", flush=True)
        return _run_in_vm(sys.argv[1:])
    out = Path(args.out or os.environ.get("LVS_VM_OUTDIR") or RESULTS)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f">> bench-kernel: {n} services x {DESTS} destinations ...", flush=True)
        t0 = time.monotonic()
        rows.append(measure(n, args.batch))
        print(f"   {json.dumps(rows[-1])} ({time.monotonic() - t0:.0f} s)", flush=True)
    text = _table(rows)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel.txt").write_text(text + "\n")
    (out / "kernel.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, out / "kernel.png")
    print(f"wrote {out / 'kernel.txt'}, kernel.json and kernel.png")
    return 0 if all(r["identical_ipvsadm_save"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
