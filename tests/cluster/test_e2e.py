"""End to end on a real API server: kubectl apply -> operator (host) publishes a NodePlan ->
agent (in the qemu guest, real IPVS) programs the director -> traffic through the VIP.

The site (tests.harness.guestlab.py) is LVS-NAT in guest namespaces: client 203.0.113.2,
director e2e-dir (VIP 203.0.113.10), real servers 198.51.100.11-13 answering HTTP with their
name and echoing lines on :7000. The operator and agent run under exactly the RBAC the
project ships (api/rbac.py), as ServiceAccounts. Tests run in file order on one site.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.harness.controlplane import LocalControlPlane
from tests.harness.lvs_install import HostOperator, agent_argv, install
from tests.harness.vm import GuestVM
from tests.harness.waiting import wait_until

NS = "e2e"
PREFIX = "e2e"
NODE = "e2e-dir"
VIP = "203.0.113.10"
DIRECTOR_LABEL = {"lvs.dev/e2e-director": "true"}
PY = sys.executable
LAB = [PY, "-m", "tests.harness.guestlab"]


class Site:
    def __init__(self, cp: LocalControlPlane, guest: GuestVM, operator: HostOperator,
                 agent_kubeconfig: str) -> None:
        self.cp, self.guest, self.operator = cp, guest, operator
        self.agent_kubeconfig = agent_kubeconfig
        self.agent: int | None = None

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cp.kubectl(*args, input=input).stdout

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, namespace: str | None = NS) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        out: dict[str, Any] = json.loads(self.kubectl("get", kind, name, *ns, "-o", "json"))
        return out

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        status = self.get("virtualservice", name).get("status") or {}
        return {c["type"]: c for c in status.get("conditions") or ()}.get(ctype, {})

    def start_agent(self) -> None:
        self.agent = self.guest.spawn(
            agent_argv(NODE, self.agent_kubeconfig, netns=f"{PREFIX}-dir", interval=3,
                       state_dir="/var/lib/lvs-e2e"), name="agent")

    def stop_agent(self) -> str:
        assert self.agent is not None
        self.guest.kill(self.agent)
        logs = self.guest.logs(self.agent)
        self.agent = None
        return logs

    def plan_applied(self) -> bool:
        plan = self.get("nodeplan", NODE, None)
        status = plan.get("status") or {}
        return bool(status.get("observedGeneration") == plan["metadata"]["generation"])

    def ipvs(self) -> list[str]:
        """`ipvsadm -Sn` of the director (no Python in the guest: polls stay cheap)."""
        out = self.guest.run(["ip", "netns", "exec", f"{PREFIX}-dir", "ipvsadm", "-Sn"],
                             timeout=60).stdout
        return [line for line in out.splitlines() if line.strip()]

    def kernel(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(
            self.guest.run([*LAB, "kernel", f"{PREFIX}-dir"], timeout=60).stdout)
        return state

    def requests(self, port: int = 80, n: int = 12) -> list[str]:
        out = self.guest.run([*LAB, "get", "--prefix", PREFIX, VIP, str(port), str(n)],
                             timeout=120).stdout
        answers: list[str] = json.loads(out)["answers"]
        print(f"{n} requests to {VIP}:{port} answered by: {dict(Counter(answers))}")
        return answers


def endpoint(i: int, *, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    return {"addresses": [f"198.51.100.{10 + i}"],
            "conditions": {"ready": ready, "serving": True, "terminating": terminating}}


def slice_doc(*endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                  {"name": "echo", "port": 7000, "protocol": "TCP"}],
        "endpoints": list(endpoints),
    }


def virtual_service(name: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "address": VIP,
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"},
                      {"port": 7000, "protocol": "TCP", "targetPort": "echo"}],
            "scheduler": {"name": "rr"},
            "forwarding": {"method": "NAT"},
            "directors": {"nodeSelector": {"matchLabels": DIRECTOR_LABEL}},
            "backends": {"service": {"name": "web"}},
            # Closed connections stay in IPVS as TIME_WAIT (InActConn) for two minutes and a
            # leaving server is deleted only when idle or at this deadline: 30 s keeps the
            # scaling test from waiting out the kernel's timer (idle deletion itself is the
            # vm tier's, test_scheduling).
            "drain": {"timeoutSeconds": 30},
        },
    }


@pytest.fixture(scope="module")
def site(control_plane: LocalControlPlane, guest: GuestVM,
         guest_kubeconfig: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    cp = control_plane
    op_kubeconfig = install(cp)
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": NODE, "labels": {**DIRECTOR_LABEL, "lvs.dev/e2e-agent": "true"}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 80},
                            {"name": "echo", "port": 7000, "targetPort": 7000}]}},
    ]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    agent_kubeconfig = guest_kubeconfig(agent_node=NODE)  # the chart's agent identity
    lab = guest.spawn([*LAB, "up", "--prefix", PREFIX, "--backends", "3"], name="site")
    guest.wait_for_log(lab, "READY", timeout=180)
    operator = HostOperator(op_kubeconfig, tmp_path_factory.mktemp("op") / "op.log",
                            ["--agent-node-selector", "lvs.dev/e2e-agent=true"])
    operator.start()
    s = Site(cp, guest, operator, agent_kubeconfig)
    s.start_agent()
    try:
        yield s
    finally:
        agent_log = s.stop_agent() if s.agent is not None else ""
        operator.stop()
        keep = tmp_path_factory.getbasetemp() / "e2e-logs"
        keep.mkdir(exist_ok=True)
        (keep / "agent.log").write_text(agent_log)
        (keep / "operator.log").write_text(operator.log(10**7))
        print(f"logs kept in {keep}\nagent log (tail):\n{agent_log[-3000:]}\n"
              f"operator log (tail):\n{operator.log(3000)}")
        guest.kill(lab)


def test_apply_programs_the_director_and_traffic_reaches_every_backend(site: Site) -> None:
    site.apply(slice_doc(endpoint(1), endpoint(2)), virtual_service())
    wait_until("VirtualService web Ready",
               lambda: site.condition("web", "Ready").get("status") == "True", timeout=180)
    assert site.plan_applied()
    vs = site.get("virtualservice", "web")
    assert vs["status"]["observedGeneration"] == vs["metadata"]["generation"]
    assert vs["status"]["nodes"] == [{"name": NODE, "role": "Director", "programmed": True,
                                      "observedGeneration": 1}]
    assert vs["status"]["backends"] == {"total": 2, "ready": 2, "draining": 0}
    ipvs = site.ipvs()
    assert f"-A -t {VIP}:80 -s rr" in ipvs
    assert f"-a -t {VIP}:80 -r 198.51.100.11:80 -m -w 1" in ipvs
    assert sorted(set(site.requests())) == ["rs1", "rs2"]
    printed = site.kubectl("get", "virtualservices", "-n", NS)
    assert "True" in printed.splitlines()[1], printed


def test_endpointslice_scaling_is_followed_and_terminating_endpoints_drain(site: Site) -> None:
    site.apply(slice_doc(endpoint(1), endpoint(2), endpoint(3)))
    wait_until("three backends programmed", lambda: site.plan_applied() and any(
        "198.51.100.13:80" in line for line in site.ipvs()), timeout=120)
    assert sorted(set(site.requests(n=12))) == ["rs1", "rs2", "rs3"]
    # rs1 is terminating but still serving: weight 0, keeps its connections, gets no new ones
    site.apply(slice_doc(endpoint(1, ready=False, terminating=True), endpoint(2), endpoint(3)))
    wait_until("rs1 drained at weight 0",
               lambda: f"-a -t {VIP}:80 -r 198.51.100.11:80 -m -w 0" in site.ipvs(), timeout=120)
    assert site.get("virtualservice", "web")["status"]["backends"]["draining"] == 1
    assert sorted(set(site.requests(n=12))) == ["rs2", "rs3"]
    # gone from the slice: deleted from IPVS once idle, or at the drain deadline (the
    # requests above left TIME_WAIT entries that IPVS keeps for two minutes)
    site.apply(slice_doc(endpoint(2), endpoint(3)))
    started = time.monotonic()
    wait_until("rs1 deleted", lambda: site.plan_applied() and not any(
        "198.51.100.11:80" in line for line in site.ipvs()), timeout=120)
    print(f"rs1 deleted {time.monotonic() - started:.1f} s after it left the slice "
          "(drain deadline 30 s)")


def test_restarts_converge_without_touching_live_destinations(site: Site) -> None:
    hold = site.guest.spawn([*LAB, "hold", "--prefix", PREFIX, VIP, "7000", "600"], name="hold")
    site.guest.wait_for_log(hold, "CONNECTED", timeout=60)
    before = site.ipvs()
    generation = site.get("nodeplan", NODE, None)["metadata"]["generation"]

    site.operator.stop()  # operator restart: nothing republished, nothing changes
    site.operator.start()
    time.sleep(5)
    assert site.get("nodeplan", NODE, None)["metadata"]["generation"] == generation
    assert site.condition("web", "Programmed").get("status") == "True"

    synced = (site.get("nodeplan", NODE, None).get("status") or {}).get("lastSyncTime")
    logs = site.stop_agent()  # agent restart: reads the same plan, finds the kernel in sync
    time.sleep(1.1)  # lastSyncTime has one-second resolution
    site.start_agent()
    wait_until("restarted agent reports", lambda: (site.get("nodeplan", NODE, None).get(
        "status") or {}).get("lastSyncTime") != synced, timeout=120)
    assert site.plan_applied()

    synced = (site.get("nodeplan", NODE, None).get("status") or {}).get("lastSyncTime")
    time.sleep(1.1)
    site.cp.restart_apiserver()  # API server restart: both reconnect, nothing is torn down
    wait_until("the agent reports again after the API server restart", lambda: (site.get(
        "nodeplan", NODE, None).get("status") or {}).get("lastSyncTime") != synced, timeout=120)
    assert site.plan_applied()
    assert site.ipvs() == before
    assert site.guest.kill(hold) == 0, site.guest.logs(hold)
    summary = site.guest.logs(hold)
    print(summary.strip().splitlines()[-1])
    assert "failed=0" in summary
    assert "delete" not in logs.lower()


def test_semantic_conflict_is_reported_and_the_older_object_keeps_working(site: Site) -> None:
    site.apply(virtual_service("web-copy"))
    wait_until("web-copy Accepted=False", lambda: site.condition("web-copy", "Accepted").get(
        "reason") == "PortConflict", timeout=60)
    message = site.condition("web-copy", "Accepted")["message"]
    assert "e2e/web" in message and "203.0.113.10:80/TCP" in message
    events = site.kubectl("get", "events", "-n", NS, "--field-selector",
                          "involvedObject.name=web-copy", "-o", "json")
    assert "PortConflict" in events
    web = site.get("virtualservice", "web")["status"]
    assert site.condition("web", "Ready").get("status") == "True", web
    assert sorted(set(site.requests(n=6))) == ["rs2", "rs3"]
    site.kubectl("delete", "virtualservice", "web-copy", "-n", NS, "--timeout=60s")


def test_deleting_the_virtualservice_leaves_a_clean_kernel(site: Site) -> None:
    site.kubectl("delete", "virtualservice", "web", "-n", NS, "--timeout=90s")
    kernel = site.kernel()
    assert kernel["ipvs"] == []
    assert not [a for a in kernel["addresses"] if VIP in a]
    assert kernel["ipsets"] == [] and kernel["chains"] == []


def test_health_check_verdicts_reach_realserver_status_and_events(site: Site) -> None:
    """Three RealServers behind a TCP-checked VirtualService: rs1 and rs2 on the site's :80,
    rs3 on a listener of its own (:8080), which is stopped (connections refused) and started
    again. The agent's verdict goes NodePlan status -> operator -> RealServer status.health,
    Healthy conditions and Events."""
    serving = {3: site.guest.spawn([*LAB, "serve", "--prefix", PREFIX, "rs3", "8080"],
                                   name="serve-rs3")}
    site.guest.wait_for_log(serving[3], "SERVING", timeout=120)
    names = [f"checked-{i}" for i in (1, 2, 3)]
    ports = {1: 80, 2: 80, 3: 8080}
    site.apply(
        {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
         "metadata": {"name": "checked", "namespace": NS},
         "spec": {"address": VIP, "ports": [{"port": 80, "protocol": "TCP"}],
                  "scheduler": {"name": "rr"}, "forwarding": {"method": "NAT"},
                  "healthCheck": {"type": "TCP", "connectTimeoutSeconds": 1, "retries": 1,
                                  "delayBeforeRetrySeconds": 1, "intervalSeconds": 2},
                  "directors": {"nodeSelector": {"matchLabels": DIRECTOR_LABEL}},
                  "backends": {"realServerSelector": {"matchLabels": {"pool": "checked"}}}}},
        *({"apiVersion": "lvs.dev/v1alpha1", "kind": "RealServer",
           "metadata": {"name": name, "namespace": NS, "labels": {"pool": "checked"}},
           "spec": {"address": f"198.51.100.{10 + i}", "port": ports[i]}}
          for i, name in enumerate(names, start=1)),
    )

    def health(name: str) -> str:
        return str((site.get("realserver", name).get("status") or {}).get("health"))

    def events(name: str) -> list[tuple[str, str]]:
        out = json.loads(site.kubectl("get", "events", "-n", NS, "--field-selector",
                                      f"involvedObject.name={name}", "-o", "json"))
        return [(e["type"], e["reason"]) for e in out["items"]]

    try:
        wait_until("every checked RealServer Up",
                   lambda: [health(n) for n in names] == ["Up"] * 3, timeout=180)
        assert site.condition("checked", "Healthy").get("reason") == "AllBackendsHealthy"

        began = time.monotonic()
        site.guest.kill(serving.pop(3))  # rs3's daemon dies: connections are refused
        wait_until("checked-3 Down", lambda: health("checked-3") == "Down", timeout=60)
        wait_until("a Warning Event on checked-3",
                   lambda: ("Warning", "HealthCheckFailed") in events("checked-3"), timeout=60)
        print(f"rs3 stopped -> RealServer Down and Event in {time.monotonic() - began:.1f} s")
        status = site.get("realserver", "checked-3")["status"]
        [cond] = [c for c in status["conditions"] if c["type"] == "Healthy"]
        assert cond["status"] == "False" and cond["reason"] == "HealthCheckFailed", cond
        assert NODE in cond["message"] and "198.51.100.13:8080" in cond["message"], cond
        assert [health(n) for n in names[:2]] == ["Up", "Up"]
        healthy = site.condition("checked", "Healthy")
        assert healthy.get("reason") == "BackendsDown", healthy
        assert "1 of 3" in healthy["message"] and "198.51.100.13:8080" in healthy["message"]
        vs = site.get("virtualservice", "checked")["status"]
        assert vs["backends"]["down"] == 1 and vs["backends"]["ready"] == 2, vs
        assert ("Warning", "BackendsDown") in events("checked")
        report = site.get("nodeplan", NODE, None)["status"]["health"]
        assert report["down"] == 1 and report["servers"][0]["realServer"] == f"{NS}/checked-3"
        assert sorted(set(site.requests(n=6))) == ["rs1", "rs2"]  # rs3 is out of IPVS

        began = time.monotonic()
        serving[3] = site.guest.spawn([*LAB, "serve", "--prefix", PREFIX, "rs3", "8080"],
                                      name="serve-rs3")
        site.guest.wait_for_log(serving[3], "SERVING", timeout=120)
        wait_until("checked-3 Up again", lambda: health("checked-3") == "Up", timeout=60)
        wait_until("a Normal Event on checked-3",
                   lambda: ("Normal", "HealthCheckPassed") in events("checked-3"), timeout=60)
        print(f"rs3 back -> RealServer Up and Event in {time.monotonic() - began:.1f} s")
        assert site.condition("checked", "Healthy").get("reason") == "AllBackendsHealthy"
        assert ("Normal", "BackendsHealthy") in events("checked")
        assert not [e for n in names[:2] for e in events(n) if e[0] == "Warning"]
    finally:
        site.kubectl("delete", "virtualservice", "checked", "-n", NS, "--timeout=90s",
                     "--ignore-not-found")
        site.kubectl("delete", "realserver", *names, "-n", NS, "--ignore-not-found")
        for handle in serving.values():
            site.guest.kill(handle)
