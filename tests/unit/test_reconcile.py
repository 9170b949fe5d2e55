"""The agent's reconciler against the fake kernel: state_in -> reconcile(plan) -> state_out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvs_operator.agent.main import load_plan
from lvs_operator.agent.main import main as agent_main
from lvs_operator.agent.reconcile import Kernel, reconcile
from lvs_operator.agent.state import AgentState, load_state, save_state
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import (
    Destination,
    IPVSService,
    NodePlan,
    ServiceKey,
    TunnelDevice,
    plan_to_dict,
)
from lvs_operator.kernel.errors import KernelUnavailable
from lvs_operator.kernel.fake import (
    FakeAddresses,
    FakeChains,
    FakeIPSets,
    FakeIPVS,
    FakeSysctls,
    FakeTunnels,
)
from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind

from .builders import cluster, rs, vs

SYSCTLS = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.vs.conntrack": "0",
    "net.ipv4.vs.expire_nodest_conn": "0",
    "net.ipv4.vs.expire_quiescent_template": "0",
    "net.ipv4.conf.all.arp_ignore": "0",
    "net.ipv4.conf.all.arp_announce": "0",
    "net.ipv4.conf.lo.arp_ignore": "0",
    "net.ipv4.conf.lo.arp_announce": "0",
    "net.ipv4.conf.all.rp_filter": "2",
    "net.ipv4.conf.tunl0.rp_filter": "1",
}
KEY = ServiceKey(4, "tcp", "192.0.2.10", 80, 0)


def fake_kernel() -> Kernel:
    ipsets = FakeIPSets()
    return Kernel(FakeIPVS(), ipsets, FakeChains(ipsets), FakeAddresses("eth0"),
                  FakeSysctls(SYSCTLS), FakeTunnels())


def plans(*docs, node="dir-1") -> NodePlan:
    return compile_cluster(cluster(*docs)).plans[node]


def web(*rips: str, method: str = "NAT", **extra) -> list[dict]:
    return [vs("web", forwarding={"method": method}, **extra),
            *[rs(f"r{i}", ip, app="web", nodeName="node-1") for i, ip in enumerate(rips)]]


def dests(kernel: Kernel, key: ServiceKey = KEY) -> dict[tuple[str, int], int]:
    [svc] = [s for s in kernel.ipvs.dump() if s.service.key == key]
    return {d.dest.key: d.dest.weight for d in svc.destinations}


def test_first_pass_programs_everything_second_pass_changes_nothing():
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("198.51.100.11", "198.51.100.12"))
    report = reconcile(plan, kernel, state)
    assert report.ok, report.failures
    assert dests(kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}
    assert kernel.sysctls.get("net.ipv4.ip_forward") == "1"
    assert ("eth0", "192.0.2.10", 32) in {(a.device, a.address, a.prefix_length)
                                          for a in kernel.addresses.list()}
    assert state.owned_services == {KEY}
    again = reconcile(plan, kernel, state)
    assert again.steps == [] and again.ok


def test_fwmark_and_fullnat_state_is_idempotent_too():
    docs = [vs("shop", ports=None, firewallMark={"mark": 99, "ports": [{"port": 80}, {"port": 443}],
                                                 "sourceRanges": ["198.51.100.0/24"]}),
            vs("api", address="192.0.2.40", forwarding={"method": "FULLNAT"}, selector={"app": "shop"}),
            rs("a", "198.51.100.51", app="shop")]
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*docs)
    assert reconcile(plan, kernel, state).ok
    assert set(kernel.ipsets.list("lvs-")) == {"lvs-fwm99-dst", "lvs-fwm99-src"}
    mark = kernel.chains.read(4, "mangle", "LVS-MARK")
    assert mark is not None and mark.rules[0][-2:] == ("--set-xmark", "0x63/0xffffffff")
    assert kernel.chains.read(4, "nat", "LVS-SNAT") is not None
    assert kernel.sysctls.get("net.ipv4.vs.conntrack") == "1"
    assert reconcile(plan, kernel, state).steps == []


def test_drift_is_repaired():
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("198.51.100.11"))
    reconcile(plan, kernel, state)
    svc = kernel.ipvs.dump()[0].service
    kernel.ipvs.apply([IPVSOp(IPVSOpKind.DEL_SERVICE, svc)])  # someone ran ipvsadm -D
    kernel.addresses.delete("eth0", "192.0.2.10", 32)  # and removed the VIP
    kernel.sysctls.set("net.ipv4.ip_forward", "0")
    report = reconcile(plan, kernel, state)
    assert report.ok
    assert {str(s).split(" ")[0] for s in report.steps} == {"ipvs", "address", "sysctl"}
    assert dests(kernel) == {("198.51.100.11", 80): 1}
    assert reconcile(plan, kernel, state).steps == []


def test_foreign_state_is_never_touched():
    kernel, state = fake_kernel(), AgentState()
    foreign = IPVSService(ServiceKey(4, "tcp", "198.18.0.1", 443, 0), "rr")
    kernel.ipvs.add_foreign(foreign, [Destination("198.18.0.9", 443, "masq", 1)])
    same_key = IPVSService(KEY, "wlc")  # e.g. kube-proxy already serves this VIP:port
    kernel.ipvs.add_foreign(same_key, [Destination("198.18.0.8", 80, "masq", 5)])
    kernel.ipsets.create("KUBE-CLUSTER-IP", "hash:ip,port", "inet")
    kernel.addresses.add_foreign("lo", "198.18.0.77", 32)
    plan = plans(*web("198.51.100.11", method="DR"), node="node-1")  # backend: lo VIP
    director = plans(*web("198.51.100.11"))
    for _ in range(5):
        reconcile(director, kernel, state)
        reconcile(NodePlan("dir-1"), kernel, state)  # everything removed again
    report = reconcile(director, kernel, state)
    assert any("not created by lvs-agent" in w for w in report.warnings)
    live = {s.service.key: s for s in kernel.ipvs.dump()}
    assert live[foreign.key].destinations[0].dest.address == "198.18.0.9"
    assert [d.dest.weight for d in live[KEY].destinations] == [5]  # the foreign one, untouched
    assert "KUBE-CLUSTER-IP" in kernel.ipsets.sets
    assert any(a.address == "198.18.0.77" for a in kernel.addresses.list())
    assert plan.backend.vips  # sanity: the backend plan is not empty


def test_removed_destination_drains_then_is_deleted_when_idle():
    kernel, state = fake_kernel(), AgentState()
    clock = [1000.0]
    both = plans(*web("198.51.100.11", "198.51.100.12"))
    reconcile(both, kernel, state, now=lambda: clock[0])
    kernel.ipvs.set_connections(KEY, ("198.51.100.12", 80), active=3)
    one = plans(*web("198.51.100.11"))
    report = reconcile(one, kernel, state, now=lambda: clock[0])
    assert dests(kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 0}
    assert report.waiting_drains == 1
    clock[0] += 10
    assert reconcile(one, kernel, state, now=lambda: clock[0]).steps == []  # still busy
    kernel.ipvs.set_connections(KEY, ("198.51.100.12", 80), active=0)
    reconcile(one, kernel, state, now=lambda: clock[0])
    assert dests(kernel) == {("198.51.100.11", 80): 1}
    assert state.drains == {}


def test_drain_deadline_deletes_a_busy_destination_and_survives_restart(tmp_path: Path):
    kernel, state = fake_kernel(), AgentState()
    clock = [0.0]
    reconcile(plans(*web("198.51.100.11", "198.51.100.12", drain={"timeoutSeconds": 30})),
              kernel, state, now=lambda: clock[0])
    kernel.ipvs.set_connections(KEY, ("198.51.100.12", 80), active=1)
    one = plans(*web("198.51.100.11", drain={"timeoutSeconds": 30}))
    reconcile(one, kernel, state, now=lambda: clock[0])
    save_state(tmp_path / "n.json", state)
    restarted = load_state(tmp_path / "n.json")  # the agent restarts mid-drain
    assert restarted == state
    clock[0] = 29
    reconcile(one, kernel, restarted, now=lambda: clock[0])
    assert ("198.51.100.12", 80) in dests(kernel)
    clock[0] = 31
    reconcile(one, kernel, restarted, now=lambda: clock[0])
    assert dests(kernel) == {("198.51.100.11", 80): 1}


def test_destination_back_in_plan_stops_draining():
    kernel, state = fake_kernel(), AgentState()
    both = plans(*web("198.51.100.11", "198.51.100.12"))
    reconcile(both, kernel, state)
    kernel.ipvs.set_connections(KEY, ("198.51.100.12", 80), active=2)
    reconcile(plans(*web("198.51.100.11")), kernel, state)
    reconcile(both, kernel, state)
    assert dests(kernel) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 1}
    assert state.drains == {}


def test_deleted_virtual_service_leaves_a_clean_kernel_and_restores_sysctls():
    kernel, state = fake_kernel(), AgentState()
    reconcile(plans(*web("198.51.100.11")), kernel, state)
    report = reconcile(NodePlan("dir-1"), kernel, state)
    assert report.ok
    assert kernel.ipvs.dump() == []
    assert kernel.addresses.list() == []
    assert kernel.sysctls.get("net.ipv4.ip_forward") == "0"  # what it was before
    assert state.owned_services == set() and state.sysctl_originals == {}


def test_real_server_node_gets_lo_vip_arp_sysctls_and_tunnel():
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("203.0.113.31", method="TUN"), node="node-1")
    assert reconcile(plan, kernel, state).ok
    assert [(a.device, a.address) for a in kernel.addresses.list()] == [("lo", "192.0.2.10")]
    assert [t.name for t in kernel.tunnels.list_up()] == ["tunl0"]
    assert kernel.sysctls.get("net.ipv4.conf.lo.arp_ignore") == "1"
    assert kernel.sysctls.get("net.ipv4.conf.tunl0.rp_filter") == "0"
    reconcile(NodePlan("node-1"), kernel, state)
    assert kernel.tunnels.list_up() == [] and kernel.addresses.list() == []


def test_backend_node_needs_no_ipvs_and_missing_ipvs_is_reported_not_fatal():
    kernel, state = fake_kernel(), AgentState()
    kernel.ipvs.available = False
    assert reconcile(plans(*web("198.51.100.11", method="DR"), node="node-1"), kernel, state).ok
    report = reconcile(plans(*web("198.51.100.11")), kernel, state)
    assert [f for f in report.failures if "IPVS is not available" in f]
    assert kernel.sysctls.get("net.ipv4.ip_forward") == "1"  # the rest still applied


def test_dry_run_changes_nothing():
    kernel, state = fake_kernel(), AgentState()
    report = reconcile(plans(*web("198.51.100.11")), kernel, state, dry_run=True)
    assert [str(s) for s in report.steps][-2:] == [
        "ipvs add-service tcp/192.0.2.10:80",
        "ipvs add-dest tcp/192.0.2.10:80 -> 198.51.100.11:80 w1",
    ]
    assert kernel.ipvs.dump() == [] and kernel.addresses.list() == []


def test_failed_ops_are_reported_and_retried():
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("198.51.100.11", scheduler={"name": "wlc"}))
    bad = plan._replace(director=plan.director._replace(services=(
        plan.director.services[0]._replace(scheduler="nonexistent"),)))
    report = reconcile(bad, kernel, state)
    assert report.failures and "unknown scheduler" in report.failures[0]
    assert state.owned_services == {KEY}  # written ahead; nothing was created
    assert reconcile(plan, kernel, state).ok
    assert dests(kernel) == {("198.51.100.11", 80): 1}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_plan_file_loading(tmp_path: Path, fmt: str):
    plan = plans(*web("198.51.100.11"))
    path = tmp_path / f"plan.{fmt}"
    path.write_text(json.dumps([plan_to_dict(plan)]))
    assert load_plan(path, "dir-1") == plan
    with pytest.raises(ValueError, match="no plan for node 'x'"):
        load_plan(path, "x")


def test_agent_cli_reports_a_missing_plan_file(tmp_path: Path, capsys):
    code = agent_main(["--node", "n", "--plan", str(tmp_path / "none.json"),
                       "--state-dir", str(tmp_path)])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_tunnel_device_that_was_already_up_is_shared_never_set_down():
    kernel, state = fake_kernel(), AgentState()
    calico = TunnelDevice("tunl0", "ipip")
    kernel.tunnels.ensure(calico)  # e.g. Calico's IPIP mode
    plan = plans(*web("203.0.113.31", method="TUN"), node="node-1")
    assert reconcile(plan, kernel, state).ok
    assert state.tunnels == set()
    reconcile(NodePlan("node-1"), kernel, state)
    assert kernel.tunnels.list_up() == [calico]  # still up


def test_dropping_a_fwmark_service_removes_rules_then_sets_in_one_pass():
    kernel, state = fake_kernel(), AgentState()
    fwmark = vs("shop", ports=None, firewallMark={"mark": 7, "ports": [{"port": 80}],
                                                  "sourceRanges": ["198.51.100.0/24"]})
    assert reconcile(plans(fwmark, rs("a", "198.51.100.1", app="shop")), kernel, state).ok
    report = reconcile(plans(*web("198.51.100.11")), kernel, state)
    assert report.ok, report.failures  # the kernel refuses to destroy a set a rule still uses
    assert kernel.ipsets.list("lvs-") == {} and kernel.chains.read(4, "mangle", "LVS-MARK") is None


def test_a_node_without_ip6tables_still_reconciles_its_ipv4_state():
    kernel, state = fake_kernel(), AgentState()
    original_read = kernel.chains.read

    def read(family, table, chain):
        if family == 6:
            raise KernelUnavailable("ip6tables: table nat does not exist (insmod?)")
        return original_read(family, table, chain)

    kernel.chains.read = read  # type: ignore[method-assign]
    docs = [vs("shop", ports=None, firewallMark={"mark": 7, "ports": [{"port": 80}]}),
            rs("a", "198.51.100.1", app="shop")]
    report = reconcile(plans(*docs), kernel, state)
    assert report.ok, report.failures
    assert kernel.chains.read(4, "mangle", "LVS-MARK") is not None

