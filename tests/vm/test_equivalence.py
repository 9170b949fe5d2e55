"""Equivalence with the classic tools: the agent leaves a node exactly as `lvsctl plan --format
ipvsadm`'s text leaves it when an operator types it (ipvsadm-restore, sysctl, ip, ipset,
iptables), for every example and every node that example gives a non-empty plan.

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        -p no:hypothesispytest tests/vm/test_equivalence.py

Per (example, node) two fresh namespaces get the same base: `lo` up and a dummy `eth0` (same
MAC in both, so the IPv6 link-local addresses match) with 198.18.0.2/24 and 2001:db8:ffff::2/64
and default routes through it. The agent reconciles namespace A; namespace B gets the printed
text: the IPVS lines through `ipvsadm-restore`, every command through `ip netns exec B sh -c`.
Both are then read with the same tools and compared aspect by aspect, one test per aspect, so a
known difference is an xfail of that aspect alone (see KNOWN_DIFFERENCES). Nothing is sent.

Nodes of one example whose plans are identical but for the node's name share one case (its id
names them all: `nat-wrr-portmap/director-a+director-b`); see `_cases`. Legitimate differences
are normalised where they are read, each saying why: ipset's random `initval`; IFA_PROTO and
address flags; chain counters. ipvsadm-save's missing -x/-y is made up for by reading the
thresholds with `ipvsadm -L -n --thresholds` and every attribute with a netlink dump.

The IPv6 half of the base is an addition to the IPv4 one: without an IPv6 route the agent
cannot tell which device should hold ipv6-mh's VIP, and the kernel wants the IPv6 real
servers routable. Both namespaces get it, so it cannot make them differ.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from lvs_operator.api.objects import parse_manifests
from lvs_operator.cli import lvsctl
from lvs_operator.cli.manifests import load_documents
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import NodePlan
from tests.vm.netlab import Netns

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NODES = EXAMPLES / "nodes.yaml"
ETH0_MAC = "02:00:5e:10:00:02"  # locally administered; identical in A and B on purpose
IFF_UP = 0x1


class Case(NamedTuple):
    example: str
    nodes: tuple[str, ...]  # nodes whose plans are the same but for the node's name

    @property
    def id(self) -> str:
        return f"{self.example}/{'+'.join(self.nodes)}"


def _compile(example: str) -> Mapping[str, NodePlan]:
    objects, errors = parse_manifests(load_documents([str(NODES), str(EXAMPLES / example)]))
    assert not errors, errors
    return compile_cluster(objects).plans


def _cases() -> list[Case]:
    """Every (example, node) whose plan is not empty: directors and real servers alike.

    Nodes of one example whose plans (and lvsctl texts) are identical but for the node's name
    (director-a and director-b, real-1 and real-2 ...) form one case: the agent and the tools
    get byte-identical input for them, so running it twice would only double the runtime of
    a tier that pays ~0.2 s per process. The case id names every node it covers."""
    out = []
    for d in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        plans = _compile(d.name)
        groups: list[tuple[NodePlan, str, list[str]]] = []
        for node in sorted(n for n in plans if not plans[n].empty):
            plan = plans[node]._replace(node="")
            text = _without_node_line(lvsctl_text(d.name, node))
            for g_plan, g_text, g_nodes in groups:
                if g_plan == plan and g_text == text:
                    g_nodes.append(node)
                    break
            else:
                groups.append((plan, text, [node]))
        out += [Case(d.name, tuple(nodes)) for _, _, nodes in groups]
    return out


def _without_node_line(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("# node "))


def lvsctl_text(example: str, node: str) -> str:
    """Exactly what `lvsctl plan -f examples/nodes.yaml -f examples/EX --node N --format
    ipvsadm` prints (its main, in this process: another interpreter costs seconds here)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = lvsctl.main(["plan", "-f", str(NODES), "-f", str(EXAMPLES / example),
                          "--node", node, "--format", "ipvsadm"])
    assert rc == 0, err.getvalue()
    return out.getvalue()


CASES = _cases()

# (case id, aspect) -> why the agent and the printed commands legitimately or knowingly
# differ there; the aspect's test is then xfail(strict=True), so the day they agree it fails.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}  # none today


# --------------------------------------------------------------------------- namespaces

_names = itertools.count()


@contextlib.contextmanager
def _namespace(role: str) -> Iterator[Netns]:
    """A fresh namespace with the base both sides share; removed on exit."""
    from pyroute2 import netns

    ns = Netns(f"lvseq{os.getpid() % 10000}x{next(_names)}-{role}")
    netns.create(ns.name)
    try:
        ns.up("lo")
        ns.ipr.link("add", ifname="eth0", kind="dummy", address=ETH0_MAC)
        ns.up("eth0")
        eth0 = ns.link_index("eth0")
        ns.addr("eth0", "198.18.0.2/24")
        ns.ipr.addr("add", index=eth0, address="2001:db8:ffff::2", prefixlen=64,
                    flags=0x02)  # IFA_F_NODAD: usable at once
        ns.ipr.route("add", dst="0.0.0.0/0", gateway="198.18.0.1")
        ns.ipr.route("add", dst="::/0", gateway="2001:db8:ffff::1", family=socket.AF_INET6)
        yield ns
    finally:
        ns.close()
        with contextlib.suppress(OSError):
            netns.remove(ns.name)


def _inside(ns: Netns, argv: list[str]) -> str:
    """Run a read-only tool in `ns` (setns in this thread, then fork: cheaper under TCG than
    `ip netns exec`, which costs one more exec and is not needed to read)."""
    with ns.entered():
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} in {ns.name}: {proc.stderr}"
    return proc.stdout


# --------------------------------------------------------------------------- the two sides


def split_text(text: str) -> tuple[list[str], list[str]]:
    """(ipvsadm-restore lines, shell commands); comments and blank lines dropped."""
    ipvs: list[str] = []
    commands: list[str] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("# ipvsadm -S -n"):
            section = "ipvs"
        elif line.startswith("# the rest of this node's state"):
            section = "shell"
        elif line.startswith("# node "):
            section = ""
        elif line.strip() and not line.startswith("#"):
            assert section, f"a line outside any section: {line!r}"
            (ipvs if section == "ipvs" else commands).append(line)
    return ipvs, commands


@dataclass
class Classic:
    """What happened when namespace B got the printed text."""

    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # modprobe of a module already loaded


def apply_classic(ns: Netns, ipvs_lines: list[str], commands: list[str]) -> Classic:
    result = Classic()
    if ipvs_lines:
        proc = subprocess.run(["ip", "netns", "exec", ns.name, "ipvsadm-restore"],
                              input="\n".join(ipvs_lines) + "\n", capture_output=True,
                              text=True, timeout=60, check=False)
        if proc.returncode:
            result.failed.append(f"ipvsadm-restore: exit {proc.returncode}: {proc.stderr}")
    for cmd in commands:
        words = cmd.split("#")[0].split()
        if words[:1] == ["modprobe"] and all(Path("/sys/module", m).exists() for m in words[1:]):
            # The harness preloads ipip & co. (and the guest's modprobe reads another tree):
            # a loaded module makes modprobe a no-op, so it is skipped, not silently ignored.
            result.skipped.append(cmd)
            continue
        proc = subprocess.run(["ip", "netns", "exec", ns.name, "sh", "-c", cmd],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode:
            result.failed.append(f"{cmd}: exit {proc.returncode}: {proc.stderr.strip()}")
    return result


@dataclass
class Agent:
    ok: bool
    failures: list[str]
    warnings: list[str]
    steps: list[str]
    second_pass: list[str]  # a second pass right after: must have nothing to do


def apply_agent(ns: Netns, plan: NodePlan) -> Agent:
    from lvs_operator.agent.main import real_kernel
    from lvs_operator.agent.reconcile import reconcile
    from lvs_operator.agent.state import AgentState

    kernel = real_kernel(ns.name)
    try:
        state = AgentState()
        report = reconcile(plan, kernel, state)
        again = reconcile(plan, kernel, state)
    finally:
        for adapter in vars(kernel).values():
            close = getattr(adapter, "close", None)
            if close is not None:
                close()
    return Agent(report.ok, report.failures + again.failures, report.warnings,
                 [str(s) for s in report.steps], [str(s) for s in again.steps])


# --------------------------------------------------------------------------- reading a node

_COUNTERS = re.compile(r" \[\d+:\d+\]$")
_ADDR = re.compile(r"^\d+:\s+(\S+)\s+(inet6?)\s+(\S+)(?:\s+brd\s+\S+)?\s+scope\s+(\S+)")


def lvs_rules(save: str, table: str) -> dict[str, list[str]]:
    """From iptables-save: "chains", the LVS-* chains' declarations (counters stripped) and
    their rules, and "jumps", the rules elsewhere that jump into them; in save order. Nothing
    else exists in a fresh namespace besides the built-in chains, which neither side touches.
    """
    out: dict[str, list[str]] = {"chains": [], "jumps": []}
    current = ""
    for line in save.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif current != table:
            continue
        elif line.startswith(":LVS-"):
            out["chains"].append(_COUNTERS.sub("", line))
        elif line.startswith("-A LVS-"):
            out["chains"].append(line)
        elif line.startswith("-A ") and re.search(r" -[jg] LVS-", line):
            out["jumps"].append(line)
    return out


def addresses(ip_o_addr: str) -> list[str]:
    """`ip -o addr show` reduced to device, family, address/prefix and scope: the agent's
    addresses carry IFA_PROTO 0x4c (its proof of ownership) and typed ones none, so flags
    and proto are left out on purpose; scope is kept (both default to global)."""
    out = []
    for line in ip_o_addr.splitlines():
        m = _ADDR.match(line)
        assert m, f"unparsed `ip -o addr` line: {line!r}"
        out.append(" ".join(m.groups()))
    return sorted(out)


def sysctls(ns: Netns, keys: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    with ns.entered():
        for key in keys:
            path = Path("/proc/sys", *key.split("."))
            out[key] = " ".join(path.read_text().split()) if path.exists() else None
    return out


def links(ns: Netns) -> list[str]:
    """Every device and whether it is up: tunnel receive devices (tunl0) are plan state."""
    return sorted(f"{link.get('IFLA_IFNAME')} {'up' if link['flags'] & IFF_UP else 'down'}"
                  for link in ns.ipr.get_links())


def ipvs_dump(ns: Netns) -> list[Any]:
    """Every attribute the kernel keeps (thresholds, tunnel fields, flags, netmask, timeout),
    through the project's decoder: ipvsadm-save prints only part of them."""
    from lvs_operator.kernel.real_ipvs import NetlinkIPVS

    with NetlinkIPVS(ns.name) as table:
        return sorted(table.dump(), key=repr)


def snapshot(ns: Netns, plan: NodePlan) -> dict[str, Any]:
    keys = sorted({s.key for s in (*plan.director.sysctls, *plan.backend.sysctls)})
    v4 = _inside(ns, ["iptables-save"])
    v6 = _inside(ns, ["ip6tables-save"])
    return {
        "ipvsadm-save": _inside(ns, ["ipvsadm", "-S", "-n"]).splitlines(),
        "ipvsadm-thresholds": _inside(ns, ["ipvsadm", "-L", "-n", "--thresholds"]).splitlines(),
        "ipvs-attributes": ipvs_dump(ns),
        "ipset": sorted(_initval_free(_inside(ns, ["ipset", "save"])).splitlines()),
        **{f"iptables-{part}": {t: lvs_rules(v4, t)[part] for t in ("mangle", "nat")}
           for part in ("chains", "jumps")},
        "ip6tables": {t: lvs_rules(v6, t) for t in ("mangle", "nat")},
        "addresses": addresses(_inside(ns, ["ip", "-o", "addr", "show"])),
        "sysctls": sysctls(ns, keys),
        "links": links(ns),
    }


def _initval_free(text: str) -> str:
    """`initval` is the set's random hash seed, chosen by the kernel at create time: it differs
    between any two sets, whoever creates them. Everything else on the create line is kept."""
    return re.sub(r" initval 0x[0-9a-f]+", "", text)


# --------------------------------------------------------------------------- the fixture


@dataclass
class Outcome:
    case: Case
    plan: NodePlan
    text: str
    ipvs_lines: list[str]
    commands: list[str]
    agent: Agent
    classic: Classic
    a: dict[str, Any]  # read from the agent's namespace
    b: dict[str, Any]  # read from the classic tools' namespace


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def outcome(request: pytest.FixtureRequest) -> Outcome:
    """Both sides of one case, built once for all the aspect tests (pytest groups the tests by
    this module-scoped parameter), read, and the namespaces removed again."""
    case: Case = request.param
    plan = _compile(case.example)[case.nodes[0]]
    text = lvsctl_text(case.example, case.nodes[0])
    ipvs_lines, commands = split_text(text)
    with _namespace("agent") as a, _namespace("classic") as b:
        agent = apply_agent(a, plan)
        classic = apply_classic(b, ipvs_lines, commands)
        return Outcome(case, plan, text, ipvs_lines, commands, agent, classic,
                       snapshot(a, plan), snapshot(b, plan))


def _same(request: pytest.FixtureRequest, o: Outcome, aspect: str) -> None:
    reason = KNOWN_DIFFERENCES.get((o.case.id, aspect))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    assert o.a[aspect] == o.b[aspect], (
        f"{aspect} differs on {o.case.id}\n--- agent:\n{_show(o.a[aspect])}\n"
        f"--- classic tools:\n{_show(o.b[aspect])}\n--- lvsctl printed:\n{o.text}"
    )


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(f"[{k}]\n{_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------- the tests


def test_both_sides_applied_cleanly(outcome: Outcome) -> None:
    """Neither side may have failed: a difference is only meaningful between two successes.
    The agent must also have converged (a second pass finds nothing to do)."""
    assert outcome.agent.ok, outcome.agent.failures
    assert outcome.agent.failures == []
    assert outcome.agent.warnings == []
    assert outcome.agent.second_pass == [], outcome.agent.second_pass
    assert outcome.classic.failed == [], outcome.classic.failed
    for cmd in outcome.classic.skipped:  # only modprobe of a loaded module is ever skipped
        assert cmd.startswith("modprobe "), cmd


def test_ipvsadm_save(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """`ipvsadm -S -n` is identical; and it is what lvsctl printed, except -x/-y, which
    ipvsadm-save does not print (VM-FACTS), though ipvsadm-restore sets them."""
    _same(request, outcome, "ipvsadm-save")
    printed = [re.sub(r" -[xy] \d+", "", line) for line in outcome.ipvs_lines]
    assert outcome.b["ipvsadm-save"] == printed


def test_ipvs_thresholds(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """The thresholds ipvsadm-save hides, from `ipvsadm -L -n --thresholds`."""
    _same(request, outcome, "ipvsadm-thresholds")


def test_ipvs_every_attribute(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """Every service and destination attribute the kernel reports (netlink dump)."""
    _same(request, outcome, "ipvs-attributes")


def test_ipsets(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """`ipset save`, sorted: set headers (type, family, hashsize, maxelem, bucketsize; not the
    random initval) and every entry."""
    _same(request, outcome, "ipset")


def test_iptables_lvs_chains(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """iptables-save, mangle and nat: the LVS-* chains and their rules."""
    _same(request, outcome, "iptables-chains")


def test_iptables_jumps(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """iptables-save, mangle and nat: the rules that jump from the built-in chains into the
    LVS-* chains (a separate test, so the known difference below hides nothing else)."""
    _same(request, outcome, "iptables-jumps")


def test_ip6tables_lvs_chains(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """The same for ip6tables-save (no example has IPv6 mark rules yet: both must be empty)."""
    _same(request, outcome, "ip6tables")


def test_addresses(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """Every address on every device (lo, eth0, tunnels): device, address/prefix, scope."""
    _same(request, outcome, "addresses")


def test_sysctls(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """The sysctls the plan names, read back; both must also hold the plan's values."""
    _same(request, outcome, "sysctls")
    wanted = {s.key: s.value for s in (*outcome.plan.director.sysctls,
                                        *outcome.plan.backend.sysctls)}
    assert outcome.a["sysctls"] == wanted


def test_links(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """Devices and their up/down state (`ip link set tunl0 up` on TUN real servers)."""
    _same(request, outcome, "links")
