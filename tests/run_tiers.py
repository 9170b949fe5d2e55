"""`make test`: run every test tier, then print one summary line per tier.

A tier that cannot run here is skipped with its reason printed; a tier that runs zero tests
counts as a failure, never as a pass. The last line is the grand total in the form CI reads
("total: N passed, N failed, N skipped").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PYTEST_LINE = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


@dataclass
class TierResult:
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    note: str = ""


# A tier running alongside another writes to its own log instead of the terminal.
_output = threading.local()


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command, streaming its output, and return (exit code, full output)."""
    out: TextIO = getattr(_output, "sink", None) or sys.stdout
    print(f"$ {' '.join(cmd)}", file=out, flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        out.write(line)
        out.flush()
        lines.append(line)
    return proc.wait(), "".join(lines)


def _pytest_counts(output: str) -> tuple[int, int, int]:
    summary = [line for line in output.splitlines() if " in " in line and PYTEST_LINE.search(line)]
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if summary:
        for number, word in PYTEST_LINE.findall(summary[-1]):
            if word in ("passed", "xfailed"):
                counts["passed"] += int(number) if word == "passed" else 0
            elif word in ("failed", "error", "errors", "xpassed"):
                counts["failed"] += int(number)
            elif word == "skipped":
                counts["skipped"] += int(number)
    return counts["passed"], counts["failed"], counts["skipped"]


def lint_tier() -> TierResult:
    start = time.monotonic()
    checks = [
        [str(VENV_BIN / "ruff"), "check", "operator", "tests", "bench"],
        [str(VENV_BIN / "mypy")],
        [str(VENV_BIN / "lint-imports"), "--no-cache"],
        [sys.executable, "-m", "lvs_operator.api.crd", "--check", "crds",
         "charts/lvs-operator/crds"],
        [sys.executable, "-m", "lvs_operator.api.rbac", "--check",
         "charts/lvs-operator/files/rbac.yaml"],
    ]
    passed = failed = 0
    for cmd in checks:
        code, _ = _run(cmd)
        passed += code == 0
        failed += code != 0
    status = "passed" if failed == 0 else "failed"
    return TierResult("lint", status, time.monotonic() - start, passed, failed,
                      note="ruff, mypy --strict, import-linter, CRDs and chart RBAC match the model")


def pytest_tier(name: str, paths: list[str], extra: list[str] | None = None,
                runner: Callable[[list[str]], list[str]] | None = None,
                env: dict[str, str] | None = None) -> TierResult:
    start = time.monotonic()
    # --durations: the slowest tests, so a log shows where a tier's minutes went.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=12",
           "--durations-min=5", *paths, *(extra or [])]
    if runner is not None:
        cmd = runner(cmd)
    code, output = _run(cmd, env)
    passed, failed, skipped = _pytest_counts(output)
    if code not in (0, 1, 5) and failed == 0:
        failed = 1  # crashed or timed out before pytest could report
    if passed == 0 and failed == 0:
        return TierResult(name, "failed", time.monotonic() - start, 0, 1, skipped,
                          note="ran no test: a tier that should run must run something")
    status = "passed" if code == 0 and failed == 0 else "failed"
    return TierResult(name, status, time.monotonic() - start, passed, failed, skipped)


TIERS: dict[str, Callable[[], TierResult]] = {
    "lint": lint_tier,
    "unit": lambda: pytest_tier("unit", ["tests/unit"]),
    # The host's real kernel in throwaway network namespaces: ipsets, iptables, addresses,
    # sysctls (no IPVS here; that is the vm tier).
    "kernel": lambda: pytest_tier("kernel", ["tests/kernel"]),
    # A real kube-apiserver and etcd on loopback; the first run builds kube-apiserver from the
    # Go module proxy (minutes, with progress) and caches it under $LVS_CACHE.
    "cluster": lambda: pytest_tier("cluster", ["tests/cluster"],
                                   env={"LVS_CLUSTER_REQUIRED": "1"}),
    # Real IPVS: one boot of Debian's kernel under qemu runs the whole tier inside the guest
    # (the host's / shared read-only). hypothesis' plugin costs seconds under TCG: left out.
    # The `-m ipvs` SNAT round trip skips on the host (no IPVS there); it runs here instead.
    "vm": lambda: pytest_tier(
        "vm",
        ["tests/vm", "tests/kernel/test_real_chains.py::test_ipvs_snat_round_trip"],
        extra=["-p", "no:hypothesispytest"],
        runner=_in_vm,
    ),
    # The image and the Helm chart on a throwaway kind cluster; needs Docker, so where Docker
    # does not run the tier is SKIPPED with the reason (make kind-e2e, by contrast, fails).
    "kind": lambda: kind_tier(),
}

KIND_SKIPPED = re.compile(r"^kind-e2e: SKIPPED: (.+)$", re.MULTILINE)


def kind_tier() -> TierResult:
    """tests/kind/kind_e2e.py --skip-ok: skipped (with its reason) only when it exits 0 and
    says SKIPPED; otherwise one check, passed or failed by its exit status."""
    start = time.monotonic()
    code, output = _run([sys.executable, "-m", "tests.kind.kind_e2e", "--skip-ok"])
    seconds = time.monotonic() - start
    skipped = KIND_SKIPPED.search(output)
    if code == 0 and skipped:
        return TierResult("kind", "skipped", seconds, skipped=1, note=skipped.group(1).strip())
    if code == 0:
        return TierResult("kind", "passed", seconds, passed=1,
                          note="chart on kind: NAT VirtualService, IPVS table, traffic via VIP")
    return TierResult("kind", "failed", seconds, failed=1,
                      note=f"tests/kind/kind_e2e.py exited {code}")


def _in_vm(cmd: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.harness.vm", "run", "--timeout", "1800", "--", *cmd]


def prepare() -> None:
    """Install and cache what the kernel, cluster and vm tiers need, with progress shown:
    Debian packages (qemu, ipset, iptables, ipvsadm...), the Debian kernel for the VM, and
    the kube-apiserver/etcd/kubectl binaries. A warm machine does nothing here."""
    for what, module in (("VM image and host packages", "tests.harness.vm"),
                         ("control plane binaries", "tests.harness.controlplane")):
        print(f"\n===== prepare: {what} =====", flush=True)
        code, _ = _run([sys.executable, "-m", module, "prepare"])
        if code != 0:
            print(f"prepare {what} failed (exit {code}); the tiers that need it will fail",
                  flush=True)


def main(argv: list[str]) -> int:
    wanted = argv or list(TIERS)
    unknown = [t for t in wanted if t not in TIERS]
    if unknown:
        print(f"unknown tier(s): {', '.join(unknown)}; tiers: {', '.join(TIERS)}", file=sys.stderr)
        return 2
    results = []
    if {"kernel", "cluster", "vm"} & set(wanted):
        prepare()
    # The cluster and vm tiers each spend most of their time in one single-threaded qemu
    # (TCG); on a 2-core machine they run side by side, the vm tier into a log that is printed
    # when it is done (LVS_SERIAL_TIERS=1 runs them one after the other).
    alongside = ({"cluster", "vm"} <= set(wanted)
                 and os.environ.get("LVS_SERIAL_TIERS") != "1")
    background: dict[str, TierResult] = {}
    thread: threading.Thread | None = None
    log_path = Path(tempfile.gettempdir()) / f"lvs-tier-vm-{os.getpid()}.log"
    if alongside:
        def run_vm() -> None:
            with open(log_path, "w") as log:
                _output.sink = log
                background["vm"] = TIERS["vm"]()

        print(f"\n===== tier vm: started alongside the cluster tier; follow it with "
              f"`tail -f {log_path}` =====", flush=True)
        thread = threading.Thread(target=run_vm, name="tier-vm")
        thread.start()
    for name in wanted:
        if alongside and name == "vm":
            assert thread is not None
            thread.join()
            print("\n===== tier vm (ran alongside the cluster tier; its output) =====",
                  flush=True)
            print(log_path.read_text(errors="replace"), end="", flush=True)
            log_path.unlink(missing_ok=True)
            result = background.get("vm") or TierResult(
                "vm", "failed", 0.0, failed=1, note="the vm tier's thread died; see above")
            results.append(result)
            continue
        print(f"\n===== tier {name} =====", flush=True)
        results.append(TIERS[name]())
    print("\n===== summary =====")
    for r in results:
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.name:<8} {r.status.upper():<8} {r.passed:>5} passed {r.failed:>3} failed "
              f"{r.skipped:>3} skipped  {r.seconds:7.1f}s{note}")
    total_p = sum(r.passed for r in results)
    total_f = sum(r.failed for r in results)
    total_s = sum(r.skipped for r in results)
    print(f"total: {total_p} passed, {total_f} failed, {total_s} skipped")
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
