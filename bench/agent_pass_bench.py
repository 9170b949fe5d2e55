"""What one destination change costs through a whole agent pass, in the VM.

bench-kernel times the netlink adapter alone; an agent pass also reads the live kernel
(every IPVS service and destination, ipsets, the owned chains, addresses, sysctls) before it
diffs. This prints both for N services x 10 destinations: the first pass from empty, and a
pass after one destination's weight changed, with how long the IPVS dump took inside it.

    .venv/bin/python -m tests.harness.vm run --memory 2048 --timeout 3600 -- \\
        .venv/bin/python bench/agent_pass_bench.py --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rip(k: int) -> str:
    """The k-th real server address, inside 198.18.0.0/15 but clear of the VIPs (198.18.0-99)."""
    third, host = divmod(k, 254)
    if third < 256:
        return f"198.19.{third}.{host + 1}"
    return f"198.18.{100 + third - 256}.{host + 1}"


def _plan(n: int, weight: int):  # type: ignore[no-untyped-def]
    from lvs_operator.compiler.plan import (
        Destination,
        DirectorPlan,
        IPVSService,
        NodePlan,
        ServiceKey,
        VIPAddress,
    )

    services = []
    for i in range(n):
        vip = f"198.18.{i // 250}.{i % 250 + 1}"
        dests = tuple(
            Destination(_rip(i * 10 + j), 8080, "masq", weight if (i, j) == (0, 0) else 1)
            for j in range(10)
        )
        services.append(IPVSService(ServiceKey(4, "tcp", vip, 80, 0), "wrr", destinations=dests,
                                    owner=f"bench/svc-{i}"))
    return NodePlan("director", DirectorPlan(services=tuple(services),
                                             vips=(VIPAddress("198.18.0.1", 32, "eth0"),)))


def measure(n: int) -> str:
    from lvs_operator.agent.cache import CachingKernel
    from lvs_operator.agent.main import real_kernel
    from lvs_operator.agent.reconcile import InSync, reconcile
    from lvs_operator.agent.state import AgentState

    ns = f"lvsbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "eth0", "type", "dummy"],
                    ["ip", "link", "set", "eth0", "up"],
                    ["ip", "addr", "add", "198.18.0.2/15", "dev", "eth0"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        kernel, state = real_kernel(ns), AgentState()
        caching, in_sync = CachingKernel(kernel), {}  # as `lvs-agent --watch` runs it
        in_sync_typed: InSync = in_sync
        t0 = time.perf_counter()
        first = reconcile(_plan(n, 1), caching.view, state, in_sync=in_sync_typed)
        full = time.perf_counter() - t0
        assert first.ok, first.failures[:3]
        dump_t0 = time.perf_counter()
        kernel.ipvs.dump()
        dump = time.perf_counter() - dump_t0
        caching.refresh()  # the resync timer's pass: a full read, finds everything in sync
        in_sync.clear()
        assert reconcile(_plan(n, 1), caching.view, state, in_sync=in_sync_typed).steps == []
        changed, changed_again = _plan(n, 5), _plan(n, 7)  # built outside the timings
        t0 = time.perf_counter()  # then a plan change under --watch: the cached view
        cached = reconcile(changed, caching.view, state, in_sync=in_sync_typed)
        fast = time.perf_counter() - t0
        assert cached.ok and len(cached.steps) == 1, cached.steps[:3]
        caching.refresh()  # the timer's pass: everything read from the kernel again
        in_sync.clear()
        t0 = time.perf_counter()
        again = reconcile(changed_again, caching.view, state, in_sync=in_sync_typed)
        slow = time.perf_counter() - t0
        assert again.ok and len(again.steps) == 1, again.steps[:3]
        return (f"{n:>8} {n * 11:>8} {full:>10.2f} {fast * 1000:>12.1f} {slow * 1000:>12.0f} "
                f"{dump * 1000:>10.0f}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    if os.environ.get("LVS_IN_VM") != "1":
        print("run inside the VM: see the module docstring", file=sys.stderr)
        return 2
    print(f"{'services':>8} {'ops':>8} {'1st pass s':>10} {'cached ms':>12} {'full-read ms':>12} "
          f"{'dump ms':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        print(measure(size), flush=True)
    print("cached: a whole agent pass after one destination's weight changed, as --watch runs "
          "it on a plan change (diff against the cached view, one netlink edit); full-read: "
          "the same pass on the resync timer, reading IPVS, ipsets, chains, addresses and "
          "sysctls from the kernel first; dump: the IPVS read alone. Debian 6.1 kernel, qemu "
          "TCG, 1 vCPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
