"""`lvs-agent` confined the way the chart's DaemonSet confines it, against real IPVS.

The chart runs the agent as root with only NET_ADMIN and NET_RAW (every other capability
dropped from the bounding set, no privilege escalation), the node's network namespace
(hostNetwork), `/proc/sys` read-only as every unprivileged container has it, and the node's
`/proc/sys/net` mounted read-write at `/host/proc/sys/net` (`--proc-sys /host/proc/sys`). This
test builds exactly that around the real agent command, with util-linux instead of a
container runtime: `ip netns exec NODE` (the node's network namespace), `unshare --mount` (a
private mount table), the two mounts, then `setpriv` dropping the capabilities. If some kernel
object needed more than the two capabilities (an IPVS service, an ipset, an iptables chain in
the host's flavour, a tunnel device, a sysctl), the agent would report a failure here.

Cases cover every adapter: IPVS + VIP + SNAT chain (fullnat director), ipsets + mark chain
(fwmark director), tunnel device + lo VIP + ARP and rp_filter sysctls (TUN real server).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lvs_operator.compiler.plan import NodePlan, plan_to_dict
from tests.vm.netlab import Netns
from tests.vm.test_equivalence import _compile, _namespace, apply_agent

AGENT = [sys.executable, "-m", "lvs_operator.agent.main"]
CASES = [
    ("fullnat", "director-b"),
    ("fwmark-80-443", "director-a"),
    ("tun-ipip", "real-1"),  # also every sysctl a DR real server gets (ARP), and more
]
# CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13.
NET_ADMIN_AND_NET_RAW = f"{(1 << 12) | (1 << 13):016x}"

# Runs as `sh -c SCRIPT sh ARGV...` inside the node's namespace with $ROOT set.
CONTAINER = (
    'set -e; mkdir -p "$ROOT/host/proc/sys/net"; '
    'mount --bind /proc/sys/net "$ROOT/host/proc/sys/net"; '
    "mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys; "
    "exec setpriv --bounding-set=-all,+net_admin,+net_raw --inh-caps=-all "
    '--ambient-caps=-all --no-new-privs -- "$@"'
)


def in_container(ns: Netns, root: Path, argv: list[str], timeout: float = 240.0
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, "env", f"ROOT={root}", "unshare", "--mount",
         "--propagation", "private", "--", "sh", "-c", CONTAINER, "sh", *argv],
        capture_output=True, text=True, timeout=timeout, check=False)


def _agent(ns: Netns, root: Path, plan_file: Path, node: str) -> dict[str, Any]:
    proc = in_container(ns, root, [*AGENT, "--node", node, "--plan", str(plan_file),
                                   "--state-dir", str(root / "state"),
                                   "--proc-sys", str(root / "host" / "proc" / "sys"),
                                   "--json"])
    assert proc.returncode == 0, f"agent exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _sysctls(plan: NodePlan) -> list[tuple[str, str]]:
    return [(s.key, s.value) for s in (*plan.director.sysctls, *plan.backend.sysctls)]


def test_the_sandbox_is_what_the_chart_gives_the_agent(tmp_path: Path) -> None:
    with _namespace("sandbox") as ns:
        proc = in_container(ns, tmp_path, [
            "sh", "-c", "grep '^Cap' /proc/self/status; "
            "echo 1 > /proc/sys/net/ipv4/ip_forward 2>&1 || echo READ-ONLY; "
            f"echo 1 > {tmp_path}/host/proc/sys/net/ipv4/ip_forward && "
            "cat /proc/sys/net/ipv4/ip_forward"])
        assert proc.returncode == 0, proc.stderr
        caps = dict(line.split(":\t") for line in proc.stdout.splitlines() if ":\t" in line)
        assert caps["CapEff"] == NET_ADMIN_AND_NET_RAW
        assert caps["CapBnd"] == NET_ADMIN_AND_NET_RAW
        assert caps["CapInh"] == caps["CapAmb"] == "0" * 16
        assert "READ-ONLY" in proc.stdout  # /proc/sys as an unprivileged container has it
        assert proc.stdout.rstrip().endswith("1")  # ... and the node's, through the mount
        assert ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


@pytest.mark.parametrize(("example", "node"), CASES, ids=[f"{e}/{n}" for e, n in CASES])
def test_agent_with_two_capabilities_programs_the_node(example: str, node: str,
                                                       tmp_path: Path) -> None:
    plan = _compile(example)[node]
    assert not plan.empty
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps([plan_to_dict(plan)]))
    with _namespace("uncap") as ns:
        first = _agent(ns, tmp_path, plan_file, node)
        assert first["failures"] == [], first
        assert first["changes"], "the first pass should have programmed the node"
        # The node is now exactly the plan: a pass (in this process: one more interpreter
        # start costs seconds under TCG) reads every kernel object back, finds nothing to do.
        again = apply_agent(ns, plan)
        assert again.failures == [] and again.second_pass == [] and again.steps == [], again
        for key, value in _sysctls(plan):
            got = ns.run(["sysctl", "-n", key]).stdout.split()
            assert got == value.split(), (key, got, value)
        if plan.director.services:
            assert ns.run(["ipvsadm", "-S", "-n"]).stdout.strip()
