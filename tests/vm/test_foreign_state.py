"""Foreign state survives: the agent touches only what it can prove it owns.

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        -p no:hypothesispytest tests/vm/test_foreign_state.py

A director namespace (lo up; dummy eth0 with 198.18.0.2/24, 2001:db8:ffff::2/64 and default
routes) first gets, by hand with the real tools, what kube-proxy, a CNI or an operator would
have left there: an IPVS service with a destination, an ipset with an entry, MARK rules in
mangle PREROUTING (one before the agent's jump exists, one added after it), a nat POSTROUTING
rule, an ip6tables mangle rule and an address on lo. The agent then runs cycle after cycle
(a restart each time: fresh adapters, state from its file) through plans of several examples
and the empty plan, and after every cycle the foreign objects must be byte-identical and the
owned ones exactly the plan. kube-proxy's IPVS cleanup once deleted services it did not make;
this is the test that the agent never does. Nothing is sent anywhere: state only.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lvs_operator.api.objects import parse_manifests
from lvs_operator.cli.manifests import load_documents
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import NodePlan
from lvs_operator.compiler.render import ipvsadm_save
from lvs_operator.kernel.netstate import ADDRESS_PROTO
from tests.vm.netlab import Netns

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

FOREIGN_SERVICE = "198.18.0.1:443"
FOREIGN_SETUP = [
    ["ipvsadm", "-A", "-t", FOREIGN_SERVICE, "-s", "rr"],
    ["ipvsadm", "-a", "-t", FOREIGN_SERVICE, "-r", "198.18.0.9:443", "-m"],
    ["ipset", "create", "KUBE-FOREIGN", "hash:ip"],
    ["ipset", "add", "KUBE-FOREIGN", "198.18.0.9"],
    ["iptables", "-t", "mangle", "-A", "PREROUTING", "-d", "198.18.0.1/32",
     "-j", "MARK", "--set-mark", "0x4000"],
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.0.0/24", "-o", "eth0",
     "-j", "MASQUERADE"],
    ["ip6tables", "-t", "mangle", "-A", "PREROUTING", "-d", "2001:db8:ffff::1/128",
     "-j", "MARK", "--set-mark", "0x4002"],
    ["ip", "addr", "add", "198.18.0.77/32", "dev", "lo"],
]
# added once the agent's jump is in PREROUTING: a rule after ours must stay after it
FOREIGN_LATE = ["iptables", "-t", "mangle", "-A", "PREROUTING", "-d", "198.18.0.3/32",
                "-j", "MARK", "--set-mark", "0x4001"]


def _plan(examples: tuple[str, ...], node: str) -> NodePlan:
    docs = load_documents([str(EXAMPLES / "nodes.yaml"), *(str(EXAMPLES / e) for e in examples)])
    objects, errors = parse_manifests(docs)
    assert not errors, errors
    return compile_cluster(objects).plans[node]


# name -> (examples, node): ipsets + mangle chain, nat chain, plain NAT, all three, nothing
PLANS = {
    "fwmark": (("fwmark-80-443",), "director-a"),
    "fullnat": (("fullnat",), "director-b"),
    "nat": (("nat-wrr-portmap",), "director-a"),
    "all": (("fwmark-80-443", "fullnat", "nat-wrr-portmap"), "director-b"),
    "empty": ((), "director-a"),
}
CYCLES = ["fwmark", "fullnat", "nat", "all", "empty", "fwmark", "all", "fullnat", "nat", "empty"]


@pytest.fixture
def director(make_netns: Callable[[str], Netns]) -> Netns:
    ns = make_netns("director")
    ns.ipr.link("add", ifname="eth0", kind="dummy")
    ns.up("eth0")
    eth0 = ns.link_index("eth0")
    ns.addr("eth0", "198.18.0.2/24")
    ns.ipr.addr("add", index=eth0, address="2001:db8:ffff::2", prefixlen=64,
                flags=0x02)  # IFA_F_NODAD
    ns.ipr.route("add", dst="0.0.0.0/0", gateway="198.18.0.1")
    ns.ipr.route("add", dst="::/0", gateway="2001:db8:ffff::1", family=socket.AF_INET6)
    return ns


def _read(ns: Netns, argv: list[str]) -> str:
    """A read-only tool inside `ns` (setns, then fork: one exec fewer than ip netns exec)."""
    with ns.entered():
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return proc.stdout


# --------------------------------------------------------------------------- the node, read

_COUNTERS = re.compile(r" \[\d+:\d+\]$")


def _tables(save: str) -> dict[str, list[str]]:
    """iptables-save as {table: lines}, chain counters stripped (they are traffic, not state)."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in save.splitlines():
        if line.startswith("*"):
            current = line[1:]
            out[current] = []
        elif current and (line.startswith(":") or line.startswith("-A ")):
            out[current].append(_COUNTERS.sub("", line))
    return out


def _is_lvs(line: str) -> bool:
    return line.startswith((":LVS-", "-A LVS-")) or re.search(r" -[jg] LVS-", line) is not None


class Node:
    """One read of everything, split into the foreign part and the owned (LVS) part."""

    def __init__(self, ns: Netns) -> None:
        self.ipvs = _read(ns, ["ipvsadm", "-S", "-n"]).splitlines()
        self.ipset = _read(ns, ["ipset", "save"])
        self.v4 = _tables(_read(ns, ["iptables-save"]))
        self.v6 = _tables(_read(ns, ["ip6tables-save"]))
        self.addr_lines = _read(ns, ["ip", "-o", "addr", "show"]).splitlines()
        self.owned_addresses = sorted(
            f"{names[m['index']]} {m.get_attr('IFA_LOCAL') or m.get_attr('IFA_ADDRESS')}"
            f"/{m['prefixlen']}"
            for names in [{link["index"]: link.get_attr("IFLA_IFNAME")
                           for link in ns.ipr.get_links()}]
            for m in ns.ipr.get_addr()
            if m.get_attr("IFA_PROTO") == ADDRESS_PROTO
        )

    def foreign(self, baseline_addresses: list[str]) -> dict[str, Any]:
        """The foreign objects, byte for byte: rules in their order, the set as `ipset save
        KUBE-FOREIGN` prints it, the address lines of `ip -o addr` from before the agent."""
        ipset_lines = [line for line in self.ipset.splitlines()
                       if line.split()[1:2] == ["KUBE-FOREIGN"]]
        return {
            "ipvs": [line for line in self.ipvs if FOREIGN_SERVICE in line],
            "ipset": ipset_lines,
            **{f"v4 {t}": [line for line in lines if not _is_lvs(line)]
               for t, lines in self.v4.items()},
            **{f"v6 {t}": [line for line in lines if not _is_lvs(line)]
               for t, lines in self.v6.items()},
            "addresses": [line for line in self.addr_lines if line in baseline_addresses],
        }

    def lvs_sets(self) -> list[str]:
        return sorted(line.split()[1] for line in self.ipset.splitlines()
                      if line.startswith("create lvs-"))

    def lvs_chains(self) -> dict[str, list[str]]:
        """Every LVS-* chain declaration, rule and jump, per family and table."""
        out = {f"v4 {t}": [ln for ln in lines if _is_lvs(ln)] for t, lines in self.v4.items()}
        out |= {f"v6 {t}": [ln for ln in lines if _is_lvs(ln)] for t, lines in self.v6.items()}
        return {k: v for k, v in out.items() if v}


def sysctl_values(ns: Netns, keys: list[str]) -> dict[str, str]:
    with ns.entered():
        return {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in keys}


def assert_owned_is_the_plan(node: Node, plan: NodePlan, foreign_ipvs: list[str]) -> None:
    """What the agent owns is the plan, no more, no less."""
    ours = [line for line in node.ipvs if line not in foreign_ipvs]
    assert ours == ipvsadm_save(plan.director.services)
    assert node.lvs_sets() == sorted(s.name for s in plan.director.ipsets)
    chains = node.lvs_chains()
    assert ("v4 mangle" in chains) == bool(plan.director.mark_rules), chains
    assert ("v4 nat" in chains) == bool(plan.director.snat_rules), chains
    assert not any(k.startswith("v6") for k in chains), chains  # no IPv6 rules in these plans
    for table, lines in chains.items():  # one jump per owned chain, and only that
        jumps = [ln for ln in lines if not ln.startswith((":LVS-", "-A LVS-"))]
        assert len(jumps) == 1, (table, jumps)
    wanted = sorted(f"eth0 {v.address}/{v.prefix_length}" for v in plan.director.vips)
    assert node.owned_addresses == wanted


# --------------------------------------------------------------------------- the agent


class Agent:
    """The agent as a process would run it: each pass a restart (fresh adapters, state from
    the file it persisted last time)."""

    def __init__(self, ns: Netns, state_file: Path) -> None:
        self.ns = ns
        self.state_file = state_file

    def run(self, plan: NodePlan) -> Any:
        from lvs_operator.agent.main import real_kernel
        from lvs_operator.agent.reconcile import reconcile
        from lvs_operator.agent.state import load_state, save_state

        kernel = real_kernel(self.ns.name)
        try:
            state = load_state(self.state_file)
            return reconcile(plan, kernel, state,
                             persist=lambda s: save_state(self.state_file, s))
        finally:
            for adapter in vars(kernel).values():
                close = getattr(adapter, "close", None)
                if close is not None:
                    close()

    def owned_services(self) -> set[Any]:
        from lvs_operator.agent.state import load_state

        return load_state(self.state_file).owned_services


# --------------------------------------------------------------------------- the tests


def test_foreign_state_survives_every_cycle(director: Netns, tmp_path: Path) -> None:
    """Ten cycles through four plans and the empty plan: the foreign service, set, rules
    (and their order) and address stay byte-identical; the owned state is always the plan;
    after the last, empty plan nothing owned is left and the sysctls are as they were."""
    plans = {name: _plan(*spec) for name, spec in PLANS.items()}
    keys = sorted({s.key for p in plans.values() for s in p.director.sysctls})
    sysctls_before = sysctl_values(director, keys)
    for argv in FOREIGN_SETUP:
        director.run(argv)
    baseline_addresses = Node(director).addr_lines
    expected = Node(director).foreign(baseline_addresses)
    assert len(expected["ipvs"]) == 2 and len(expected["ipset"]) == 2, expected
    agent = Agent(director, tmp_path / "director.json")

    for i, name in enumerate(CYCLES):
        plan = plans[name]
        report = agent.run(plan)
        assert report.ok, (i, name, report.failures)
        assert report.warnings == [], (i, name, report.warnings)
        if i == 0:  # our jump now heads PREROUTING; a foreign rule arrives after it
            director.run(FOREIGN_LATE)
            expected = Node(director).foreign(baseline_addresses)
            prerouting = [ln for ln in Node(director).v4["mangle"]
                          if ln.startswith("-A PREROUTING")]
            assert [ln.split()[-1] for ln in prerouting] == [
                "LVS-MARK", "0x4000/0xffffffff", "0x4001/0xffffffff"], prerouting
        node = Node(director)
        assert node.foreign(baseline_addresses) == expected, f"cycle {i} ({name})"
        assert_owned_is_the_plan(node, plan, expected["ipvs"])
        assert sysctl_values(director, [s.key for s in plan.director.sysctls]) == {
            s.key: s.value for s in plan.director.sysctls}

    # the last cycle was the empty plan: nothing owned is left, sysctls are restored
    node = Node(director)
    assert node.ipvs == expected["ipvs"]
    assert node.lvs_sets() == []
    assert node.lvs_chains() == {}
    assert node.owned_addresses == []
    assert agent.owned_services() == set()
    assert sysctl_values(director, keys) == sysctls_before
    # and the order of the foreign mangle rules is the one they were typed in
    marks = [ln.split("--set-xmark ")[1] for ln in expected["v4 mangle"] if "--set-xmark" in ln]
    assert marks == ["0x4000/0xffffffff", "0x4001/0xffffffff"]


def test_a_foreign_service_with_a_planned_key_is_left_alone(director: Netns,
                                                             tmp_path: Path) -> None:
    """Someone else's service at a key the plan wants (and the VIP already on eth0 without
    our IFA_PROTO): the agent warns, changes neither, and never deletes them later."""
    plan = _plan(("nat-wrr-portmap",), "director-a")
    (svc,) = plan.director.services
    key = f"{svc.key.address}:{svc.key.port}"
    for argv in (
        ["ipvsadm", "-A", "-t", key, "-s", "rr"],
        ["ipvsadm", "-a", "-t", key, "-r", "198.51.100.99:8080", "-m", "-w", "5"],
        ["ip", "addr", "add", f"{svc.key.address}/32", "dev", "eth0"],
    ):
        director.run(argv)
    before = Node(director)
    agent = Agent(director, tmp_path / "director.json")

    for name, p in (("planned", plan), ("again", plan), ("empty", _plan((), "director-a"))):
        report = agent.run(p)
        assert report.ok, (name, report.failures)
        if name != "empty":
            (warning,) = report.warnings
            assert key in warning and "left untouched" in warning, warning
            assert not any(s.layer in ("ipvs", "address") for s in report.steps), report.steps
        else:
            assert report.warnings == []
        after = Node(director)
        assert after.ipvs == before.ipvs, name
        assert [ln for ln in after.addr_lines if svc.key.address in ln] == [
            ln for ln in before.addr_lines if svc.key.address in ln], name
        assert after.owned_addresses == [], name
        assert agent.owned_services() == set(), name


def test_sets_go_in_the_same_pass_as_the_chain_using_them(director: Netns,
                                                          tmp_path: Path) -> None:
    """A plan that drops its fwmark service must remove chain and sets in one pass."""
    agent = Agent(director, tmp_path / "director.json")
    assert agent.run(_plan(("fwmark-80-443",), "director-a")).ok
    report = agent.run(_plan(("fullnat",), "director-b"))
    assert report.ok, report.failures
    assert Node(director).lvs_sets() == []
