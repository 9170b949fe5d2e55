"""bench-ha, part two: Lease-mode failover with the DEFAULT timings (2 s / 1500 ms / 500 ms),
at the speed of real hardware: the agent's own HA pieces (VIPElection, LeaseDriver, VIPKeeper,
PacketAnnouncer over netlink and AF_PACKET) on this host against a real kube-apiserver, two
directors in network namespaces on one bridge with a client.

Why not in the guest: under qemu TCG a Lease round trip from Python takes about a second,
longer than the defaults allow (see bench/ha_bench.py, which runs the whole system there with
slower timings). What is left out here is only IPVS (the host kernel has none), which plays
no part in who holds the VIP.

Each director runs one LeaseDriver thread (as the agent does) and a small loop standing in
for the agent's reconciler: add the VIP with the lifetime the driver allows, announce it.
Taking the holder away, `--runs` times each:
- frozen: its driver and loop stop dead (what SIGKILL or SIGSTOP does to an agent: no
  release, no delete); its VIP goes by the kernel's lifetime, the standby waits out the Lease;
- link cut: its bridge port goes down; it sees no carrier and hands over.
Measured: from the event to the standby holding the VIP (polled every 10 ms), and from a
client ARP probe every 50 ms: the longest time nobody answered, and whether two ever did.

    python bench/ha_lease_host.py --runs 5       (root: namespaces, raw sockets)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from tests.harness.controlplane import LocalControlPlane  # noqa: E402
from tests.vm.arpwatch import arp_responders  # noqa: E402

from lvs_operator.agent.ha import LeaseDriver, VIPKeeper  # noqa: E402
from lvs_operator.agent.kubeapi import KubeAPI, load_credentials  # noqa: E402
from lvs_operator.agent.vip_lease import (  # noqa: E402
    KubernetesLeaseClient,
    VIPElection,
    lease_api_client,
)
from lvs_operator.compiler.plan import (  # noqa: E402
    DirectorPlan,
    HighAvailabilityPlan,
    NodePlan,
    VIPAddress,
)
from lvs_operator.kernel.errors import KernelError  # noqa: E402
from lvs_operator.kernel.real_announce import PacketAnnouncer  # noqa: E402
from lvs_operator.kernel.real_net import NetlinkAddresses  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VIP = "203.0.113.10"
PREFIX = "hb"
HOSTS = {"client": 2, "a": 3, "b": 4}
GROUP = "lvs-ha-203.0.113.10"
NAMESPACE = "default"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def build_site() -> None:
    lan = f"{PREFIX}-lan"
    sh("ip", "netns", "add", lan)
    sh("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", lan, "link", "set", "br0", "up")
    for name, host in HOSTS.items():
        ns = f"{PREFIX}-{name}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", lan, "link", "add", f"p-{name}", "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", lan, "link", "set", f"p-{name}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"203.0.113.{host}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")


def remove_site() -> None:
    for name in ("lan", *HOSTS):
        subprocess.run(["ip", "netns", "del", f"{PREFIX}-{name}"], capture_output=True,
                       timeout=30)


def link(name: str, up: bool) -> None:
    sh("ip", "-n", f"{PREFIX}-lan", "link", "set", f"p-{name}", "up" if up else "down")


PLAN = NodePlan("bench", DirectorPlan(vips=(VIPAddress(
    VIP, 32, "eth0", ("default/web",), "Lease",
    HighAvailabilityPlan("Lease", GROUP)),)))  # the defaults: 2 s / 1.5 s / 0.5 s


class Director:
    """One director: the agent's Lease driver plus a loop that adds what it may hold."""

    def __init__(self, name: str, api: Any) -> None:
        self.name = name
        self.ns = f"{PREFIX}-{name}"
        self.frozen = threading.Event()
        self.addresses = NetlinkAddresses(self.ns)
        self.announcer = PacketAnnouncer(self.ns)
        self.wake = threading.Event()
        election = VIPElection(
            f"{name}_{time.monotonic_ns() % 10**8:08d}",
            lambda g: KubernetesLeaseClient(api, g.lease_namespace, g.lease_name,
                                            timeout=g.renew_deadline))
        self.driver = LeaseDriver(election, NAMESPACE, on_change=self.wake.set,
                                  keeper=VIPKeeper(NetlinkAddresses(self.ns)))
        self.driver.update(PLAN)
        self.threads = [threading.Thread(target=self._drive, daemon=True),
                        threading.Thread(target=self._loop, daemon=True)]
        for t in self.threads:
            t.start()

    def _drive(self) -> None:  # LeaseDriver._run, but it can be frozen
        while not self.frozen.is_set():
            delay = self.driver.step()
            time.sleep(delay)

    def _loop(self) -> None:  # the reconciler's part: take the VIP while held
        while not self.frozen.is_set():
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            if self.frozen.is_set():
                return
            held = GROUP in self.driver.held()
            have = self.holds()
            try:
                if held and not have:
                    lifetime = self.driver.lifetime(GROUP)
                    if lifetime is not None:
                        self.addresses.add("eth0", VIP, 32, lifetime)
                        self.announcer.announce("eth0", VIP)
                elif have and not held:
                    self.addresses.delete("eth0", VIP, 32)
            except KernelError as exc:
                print(f"  {self.name}: {exc}", flush=True)

    def holds(self) -> bool:
        return any(a.address == VIP for a in self.addresses.list())

    def freeze(self) -> None:
        self.frozen.set()
        self.wake.set()

    def stop(self) -> None:
        self.freeze()
        for t in self.threads:
            t.join(timeout=5)
        self.driver._election.release_all()


class ArpWatch(threading.Thread):
    """Who answers ARP for the VIP, every 50 ms, from the client's namespace."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopping = threading.Event()
        self.samples: list[tuple[float, frozenset[str]]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stopping.is_set() and time.monotonic() < deadline:
            macs = arp_responders(f"{PREFIX}-client", "eth0", VIP, timeout=0.05)
            self.samples.append((time.monotonic(), frozenset(macs)))

    def verdict(self, since: float) -> dict[str, Any]:
        split = sum(1 for _, m in self.samples if len(m) > 1)
        gap, start = 0.0, None
        for t, macs in self.samples:
            if t < since:
                continue
            if not macs and start is None:
                start = t
            elif macs and start is not None:
                gap, start = max(gap, t - start), None
        return {"split": split, "silent": round(gap, 3)}


def one_run(directors: dict[str, Director], how: str, api: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(d.holds() for d in directors.values()) != 1:
        time.sleep(0.05)
    holder = next(d for d in directors.values() if d.holds())
    standby = next(d for d in directors.values() if d is not holder)
    watch = ArpWatch()
    watch.start()
    time.sleep(1.0)
    event = time.monotonic()
    if how == "frozen":
        holder.freeze()
    else:
        link(holder.name, False)
    moved = None
    while time.monotonic() < event + 20:
        if standby.holds():
            moved = time.monotonic() - event
            break
        time.sleep(0.01)
    time.sleep(0.5)
    watch.stopping.set()
    watch.join(timeout=5)
    verdict = watch.verdict(event)
    # put it back: a new agent life (frozen) or the link (cut); it comes back as a standby
    if how == "frozen":
        holder.threads = []
        directors[holder.name] = Director(holder.name, api)
    else:
        link(holder.name, True)
    time.sleep(2.0)
    result = {"moved": None if moved is None else round(moved, 3), **verdict,
              "from": holder.name}
    print(f"  {how}: {holder.name} -> {standby.name} in "
          f"{'never' if moved is None else f'{moved:.2f} s'}; nobody answered ARP for "
          f"{verdict['silent']:.2f} s at most; two answers: {verdict['split']}", flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    runs = max(1, min(args.runs, 20))
    remove_site()
    rows: dict[str, list[dict[str, Any]]] = {"frozen": [], "link-cut": []}
    with LocalControlPlane(log=lambda m: print(f"[controlplane] {m}", flush=True)) as cp:
        api = lease_api_client(KubeAPI(load_credentials(cp.kubeconfig)))
        build_site()
        directors = {n: Director(n, api) for n in ("a", "b")}
        try:
            for how in ("frozen", "link-cut"):
                print(f"{how}: {runs} runs (defaults: Lease 2 s, renew deadline 1.5 s, "
                      "retry 0.5 s)", flush=True)
                for _ in range(runs):
                    rows[how].append(one_run(directors, how, api))
        finally:
            for d in directors.values():
                d.stop()
            remove_site()
    summary = {}
    for how, results in rows.items():
        moved = [r["moved"] for r in results if r["moved"] is not None]
        summary[how] = {
            "moved_median": round(statistics.median(moved), 2) if moved else None,
            "moved_max": round(max(moved), 2) if moved else None,
            "silent_max": max(r["silent"] for r in results),
            "never": sum(r["moved"] is None for r in results),
            "split": sum(r["split"] for r in results),
        }
    lines = ["bench-ha, Lease mode with the default timings on this host (real API server; "
             "the agent's HA code, no IPVS):"]
    for how, s in summary.items():
        lines.append(f"  {how:<9} VIP on the standby after median {s['moved_median']} s, "
                     f"max {s['moved_max']} s (target < 3 s); ARP unanswered at most "
                     f"{s['silent_max']} s; split brain in {s['split']} probes; "
                     f"{s['never']} runs never moved")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ha_lease_host.txt").write_text(text + "\n")
    (RESULTS / "ha_lease_host.json").write_text(
        json.dumps({"runs": runs, "rows": rows, "summary": summary}, indent=1) + "\n")
    plot(rows, RESULTS / "ha_lease_host.png")
    return 0


def plot(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (how, results) in enumerate(rows.items()):
        moved = [r["moved"] for r in results if r["moved"] is not None]
        ax.scatter(moved, [i] * len(moved), label=how)
    ax.axvline(3.0, color="grey", linestyle="--", label="target 3 s")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("s from the event to the VIP on the standby (defaults, this host)")
    ax.set_title("Lease-mode failover, default timings")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    sys.exit(main())
