"""The agent's metrics: per-service and per-real-server series read from the (fake) IPVS table
at scrape time, and the loop's operations, errors and drift repairs.

The collector is given the fake table's `dump` the way lvs-agent gives it a NetlinkIPVS of
its own; traffic is put into the fake kernel with its test helpers."""

from __future__ import annotations

import http.client
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lvs_operator.agent.reconcile import reconcile
from lvs_operator.agent.state import AgentState
from lvs_operator.compiler.plan import IPVSService, NodePlan, ServiceKey
from lvs_operator.kernel.fake import FakeIPVS
from lvs_operator.observability import (
    OPERATION_KINDS,
    AgentMetrics,
    HealthServer,
    IPVSCollector,
    PassWatch,
)
from lvs_operator.observability.ipvs_metrics import service_labels

from .builders import rs, vs
from .test_agent_cluster import Rig
from .test_reconcile import KEY, fake_kernel, plans, web

R1, R2 = ("198.51.100.11", 80), ("198.51.100.12", 80)
SVC = {"namespace": "default", "name": "web", "protocol": "tcp", "address": "192.0.2.10",
       "port": "80"}


def backend(dest: tuple[str, int]) -> dict[str, str]:
    return {**SVC, "backend_address": dest[0], "backend_port": str(dest[1])}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Lab:
    """A fake kernel programmed from a plan, and a registry with the IPVS collector."""

    def __init__(self, plan: NodePlan, *, backends: bool = True) -> None:
        self.kernel, self.state = fake_kernel(), AgentState()
        self.plan: NodePlan | None = plan
        report = reconcile(plan, self.kernel, self.state)
        assert report.ok, report.failures
        self.clock = Clock()
        self.collector = IPVSCollector(self.kernel.ipvs.dump, lambda: self.plan,
                                       owns=lambda k: k in self.state.owned_services,
                                       backends=backends, clock=self.clock)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)

    @property
    def ipvs(self) -> FakeIPVS:
        table = self.kernel.ipvs
        assert isinstance(table, FakeIPVS)
        return table

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        self.clock.t += 5.0  # past the dump cache
        return self.registry.get_sample_value(name, labels or {})

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        self.clock.t += 5.0
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in self.registry.collect() for s in family.samples}


def test_service_and_backend_series_follow_the_kernel() -> None:
    lab = Lab(plans(*web("198.51.100.11", "198.51.100.12")))
    lab.ipvs.add_traffic(KEY, R1, conns=3, inpkts=30, outpkts=25, inbytes=3000, outbytes=90000)
    lab.ipvs.add_traffic(KEY, R2, conns=2, inpkts=20, outpkts=16, inbytes=2000, outbytes=60000)
    lab.ipvs.set_rates(KEY, cps=5, inpps=50, outpps=41, inbps=5000, outbps=150000)
    lab.ipvs.set_connections(KEY, R1, active=2, inactive=1)
    lab.ipvs.set_connections(KEY, R2, active=1, inactive=4)
    v = lab.value
    assert v("lvs_service_connections_total", SVC) == 5
    assert v("lvs_service_incoming_packets_total", SVC) == 50
    assert v("lvs_service_outgoing_packets_total", SVC) == 41
    assert v("lvs_service_incoming_bytes_total", SVC) == 5000
    assert v("lvs_service_outgoing_bytes_total", SVC) == 150000
    assert v("lvs_service_connections_per_second", SVC) == 5
    assert v("lvs_service_incoming_packets_per_second", SVC) == 50
    assert v("lvs_service_outgoing_packets_per_second", SVC) == 41
    assert v("lvs_service_incoming_bytes_per_second", SVC) == 5000
    assert v("lvs_service_outgoing_bytes_per_second", SVC) == 150000
    assert v("lvs_service_active_connections", SVC) == 3
    assert v("lvs_service_inactive_connections", SVC) == 5
    assert v("lvs_backend_connections_total", backend(R1)) == 3
    assert v("lvs_backend_incoming_packets_total", backend(R2)) == 20
    assert v("lvs_backend_outgoing_packets_total", backend(R1)) == 25
    assert v("lvs_backend_incoming_bytes_total", backend(R1)) == 3000
    assert v("lvs_backend_outgoing_bytes_total", backend(R2)) == 60000
    assert v("lvs_backend_active_connections", backend(R1)) == 2
    assert v("lvs_backend_inactive_connections", backend(R2)) == 4
    assert v("lvs_backend_persistent_connections", backend(R1)) == 0
    assert v("lvs_backend_weight", backend(R1)) == 1
    assert v("lvs_backend_state", {**backend(R1), "state": "ready"}) == 1
    assert v("lvs_backend_state", {**backend(R1), "state": "draining"}) == 0
    assert v("lvs_agent_ipvs_up") == 1
    assert v("lvs_agent_ipvs_read_duration_seconds") is not None


def test_a_zeroed_table_shows_as_a_counter_reset() -> None:
    lab = Lab(plans(*web("198.51.100.11")))
    lab.ipvs.add_traffic(KEY, R1, conns=7)
    assert lab.value("lvs_service_connections_total", SVC) == 7
    lab.ipvs.zero()  # ipvsadm -Z
    assert lab.value("lvs_service_connections_total", SVC) == 0
    assert lab.value("lvs_backend_connections_total", backend(R1)) == 0


def test_draining_real_servers_are_draining_with_weight_0() -> None:
    # a RealServer set to Draining (the plan says weight 0, draining) and one that left the
    # plan but still holds connections (the agent drains it)
    docs = [vs("web", forwarding={"method": "NAT"}),
            rs("r0", "198.51.100.11", app="web"),
            rs("r1", "198.51.100.12", app="web"),
            rs("r2", "198.51.100.13", app="web")]
    lab = Lab(plans(*docs))
    r3 = ("198.51.100.13", 80)
    lab.ipvs.set_connections(KEY, r3, active=2)
    docs[2] = rs("r1", "198.51.100.12", app="web", state="Draining")
    lab.plan = plans(*docs[:3])  # r2 gone from the plan
    assert reconcile(lab.plan, lab.kernel, lab.state).ok
    states = {d: {s: lab.value("lvs_backend_state", {**backend(d), "state": s})
                  for s in ("ready", "draining")} for d in (R1, R2, r3)}
    assert states == {R1: {"ready": 1, "draining": 0}, R2: {"ready": 0, "draining": 1},
                      r3: {"ready": 0, "draining": 1}}
    assert lab.value("lvs_backend_weight", backend(R2)) == 0
    assert lab.value("lvs_backend_weight", backend(r3)) == 0
    assert lab.value("lvs_backend_active_connections", backend(r3)) == 2


def test_only_planned_services_the_agent_created_are_reported() -> None:
    lab = Lab(plans(*web("198.51.100.11")))
    foreign = IPVSService(ServiceKey(4, "tcp", "192.0.2.99", 443, 0), "rr")
    lab.ipvs.add_foreign(foreign)  # kube-proxy's, not in the plan
    names = {labels for (name, labels) in lab.samples() if name == "lvs_service_connections_total"}
    assert names == {tuple(sorted(SVC.items()))}
    lab.state.owned_services.clear()  # planned VIP:port, but someone else's service
    assert not [k for k in lab.samples() if k[0].startswith(("lvs_service", "lvs_backend"))]


def test_backends_off_leaves_only_service_series() -> None:
    lab = Lab(plans(*web("198.51.100.11", "198.51.100.12")), backends=False)
    lab.ipvs.set_connections(KEY, R1, active=4)
    names = {name for name, _ in lab.samples()}
    assert not {n for n in names if n.startswith("lvs_backend_")}
    assert lab.value("lvs_service_active_connections", SVC) == 4
    assert "lvs_backend_weight" not in {m.name for m in lab.collector.describe()}


def test_the_table_is_read_at_most_once_per_interval() -> None:
    lab = Lab(plans(*web("198.51.100.11")))
    reg, collector = lab.registry, lab.collector
    for _ in range(5):
        list(reg.collect())
    assert collector.dumps == 1
    lab.ipvs.add_traffic(KEY, R1, conns=1)
    assert reg.get_sample_value("lvs_service_connections_total", SVC) == 0  # cached
    lab.clock.t += 1.0
    assert reg.get_sample_value("lvs_service_connections_total", SVC) == 1
    assert collector.dumps == 2


def test_no_plan_or_no_services_reads_nothing() -> None:
    lab = Lab(plans(*web("198.51.100.11")))
    lab.plan = None
    assert lab.value("lvs_agent_ipvs_up") is None
    lab.plan = NodePlan("dir-1")
    assert lab.value("lvs_agent_ipvs_up") is None
    assert lab.collector.dumps == 0


def test_a_failing_table_is_ipvs_up_0_not_a_failed_scrape(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    lab = Lab(plans(*web("198.51.100.11")))
    lab.ipvs.available = False
    assert lab.value("lvs_agent_ipvs_up") == 0
    assert lab.value("lvs_service_connections_total", SVC) is None
    assert lab.value("lvs_agent_ipvs_up") == 0
    assert caplog.text.count("reading the IPVS table for /metrics failed") == 1
    lab.ipvs.available = True
    assert lab.value("lvs_agent_ipvs_up") == 1


@pytest.mark.parametrize(("key", "owner", "want"), [
    (ServiceKey(4, "udp", "192.0.2.10", 53, 0), "dns/resolver",
     ("dns", "resolver", "udp", "192.0.2.10", "53")),
    (ServiceKey(6, "tcp", "2001:db8::10", 443, 0), "default/web",
     ("default", "web", "tcp", "2001:db8::10", "443")),
    (ServiceKey(4, "", "", 0, 99), "shop/store", ("shop", "store", "fwmark", "fwmark:99", "0")),
    (ServiceKey(6, "", "", 0, 99), "shop/store6",
     ("shop", "store6", "fwmark", "fwmark:99:ipv6", "0")),
    (ServiceKey(4, "tcp", "192.0.2.10", 80, 0), "", ("", "", "tcp", "192.0.2.10", "80")),
])
def test_service_labels(key: ServiceKey, owner: str, want: tuple[str, ...]) -> None:
    assert service_labels(IPVSService(key, "rr", owner=owner)) == want


def test_fwmark_service_through_the_collector() -> None:
    docs = [vs("shop", ports=None, scheduler={"name": "rr"}, forwarding={"method": "DR"},
               firewallMark={"mark": 99, "ports": [{"port": 80}, {"port": 443}]}),
            rs("r0", "192.0.2.11", app="shop", nodeName="node-1")]
    lab = Lab(plans(*docs))
    key = ServiceKey(4, "", "", 0, 99)
    dest = ("192.0.2.11", 0)
    lab.ipvs.add_traffic(key, dest, conns=8)
    labels = {"namespace": "default", "name": "shop", "protocol": "fwmark",
              "address": "fwmark:99", "port": "0"}
    assert lab.value("lvs_service_connections_total", labels) == 8
    assert lab.value("lvs_backend_connections_total",
                     {**labels, "backend_address": "192.0.2.11", "backend_port": "0"}) == 8


def test_served_over_http_in_the_text_format() -> None:
    metrics = AgentMetrics(version="1.0.0")
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("198.51.100.11"))
    reconcile(plan, kernel, state)
    assert isinstance(kernel.ipvs, FakeIPVS)
    kernel.ipvs.add_traffic(KEY, R1, conns=2, inpkts=12, outpkts=10, inbytes=900, outbytes=4000)
    metrics.watch_ipvs(kernel.ipvs.dump, lambda: plan)
    with pytest.raises(RuntimeError):
        metrics.watch_ipvs(kernel.ipvs.dump, lambda: plan)
    with HealthServer(("127.0.0.1", 0), healthz=lambda: (True, "ok"),
                      readyz=lambda: (True, "ok"), registry=metrics.registry) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    line = ('lvs_service_connections_total{address="192.0.2.10",name="web",namespace="default",'
            'port="80",protocol="tcp"} 2.0')
    assert line in text.splitlines()
    assert re.search(r"^# TYPE lvs_service_connections_total counter$", text, re.M)
    assert re.search(r"^# TYPE lvs_backend_weight gauge$", text, re.M)
    assert "_created" not in text


# --------------------------------------------------------------------------- the loop


def counts(metrics: AgentMetrics, name: str) -> dict[str, float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and s.value:
                out[s.labels["kind"]] = s.value
    return out


def test_operations_are_counted_by_kind_and_start_at_zero() -> None:
    rig = Rig()
    registry = rig.agent.metrics.registry
    for kind in OPERATION_KINDS:
        assert registry.get_sample_value("lvs_agent_operations_total", {"kind": kind}) == 0
        assert registry.get_sample_value("lvs_agent_drift_repaired_total", {"kind": kind}) == 0
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))
    rig.agent.step()
    ops = counts(rig.agent.metrics, "lvs_agent_operations_total")
    assert ops["ipvs/add-service"] == 1
    assert ops["ipvs/add-dest"] == 2
    assert ops["address/add"] == 1
    assert ops["sysctl/set"] >= 1
    assert registry.get_sample_value("lvs_agent_errors_total") == 0
    assert counts(rig.agent.metrics, "lvs_agent_drift_repaired_total") == {}


def test_drift_is_what_a_timer_pass_repairs_and_nothing_else() -> None:
    rig = Rig(interval=10.0)
    metrics = rig.agent.metrics
    rig.publish(plans(*web("198.51.100.11", "198.51.100.12")))
    rig.agent.step()
    rig.until(lambda: metrics.registry.get_sample_value(
        "lvs_agent_reconcile_passes_total", {"kind": "full"}) == 2)
    assert counts(metrics, "lvs_agent_drift_repaired_total") == {}  # nothing drifted

    # a plan change is not drift, nor are the drains it starts, nor their end
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    assert counts(metrics, "lvs_agent_operations_total")["ipvs/edit-dest"] == 1  # weight 0
    rig.until(lambda: ("198.51.100.12", 80) not in {
        d.dest.key for s in rig.kernel.ipvs.dump() for d in s.destinations})
    assert counts(metrics, "lvs_agent_operations_total")["ipvs/del-dest"] == 1
    assert counts(metrics, "lvs_agent_drift_repaired_total") == {}

    # someone runs ipvsadm -D and deletes the VIP: the timer pass repairs both
    rig.kernel.ipvs.apply([op_del(rig)])
    rig.kernel.addresses.delete("eth0", "192.0.2.10", 32)
    full = metrics.registry.get_sample_value("lvs_agent_reconcile_passes_total", {"kind": "full"})
    rig.until(lambda: metrics.registry.get_sample_value(
        "lvs_agent_reconcile_passes_total", {"kind": "full"}) == (full or 0) + 1)
    assert counts(metrics, "lvs_agent_drift_repaired_total") == {
        "ipvs/add-service": 1, "ipvs/add-dest": 1, "address/add": 1}


def op_del(rig: Rig) -> Any:
    from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind

    [live] = rig.kernel.ipvs.dump()
    return IPVSOp(IPVSOpKind.DEL_SERVICE, live.service)


def test_failures_are_errors_and_the_retry_is_not_drift() -> None:
    rig = Rig(interval=10.0)
    metrics = rig.agent.metrics
    table = rig.kernel.ipvs
    assert isinstance(table, FakeIPVS)
    table.available = False
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    assert metrics.registry.get_sample_value("lvs_agent_errors_total") >= 1
    assert metrics.registry.get_sample_value("lvs_agent_reconcile_failures_total") == 1
    table.available = True
    rig.until(lambda: bool(rig.kernel.ipvs.dump()))
    assert counts(metrics, "lvs_agent_operations_total")["ipvs/add-service"] == 1
    assert counts(metrics, "lvs_agent_drift_repaired_total") == {}


def test_a_dry_run_counts_no_operations() -> None:
    rig = Rig(dry_run=True)
    rig.publish(plans(*web("198.51.100.11")))
    rig.agent.step()
    rig.until(lambda: rig.agent.metrics.registry.get_sample_value(
        "lvs_agent_reconcile_passes_total", {"kind": "full"}) == 3)
    assert counts(rig.agent.metrics, "lvs_agent_operations_total") == {}
    assert counts(rig.agent.metrics, "lvs_agent_drift_repaired_total") == {}


def test_every_kind_of_change_the_reconciler_makes_is_a_known_operation_kind() -> None:
    import inspect

    from lvs_operator.agent import reconcile as module
    from lvs_operator.kernel.ipvs import IPVSOpKind

    source = inspect.getsource(module)
    made = {f"{layer}/{verb}" for layer, verb in
            re.findall(r'Step\(\s*"(\w+)",\s*"([\w-]+)"', source)}
    made |= {f"ipvs/{k.value}" for k in IPVSOpKind}
    assert len(made) > 10
    assert made == set(OPERATION_KINDS)


def test_pass_watch_for_standalone_watch_mode() -> None:
    clock = Clock()
    watch = PassWatch(10.0, clock=clock)
    assert watch.readiness() == (False, "the first pass has not finished yet")
    assert watch.liveness() == (True, "ok")
    watch.passed("plan applied: 3 change(s)")
    assert watch.readiness() == (True, "plan applied: 3 change(s)")
    clock.t += 59
    assert watch.liveness()[0]
    clock.t += 2
    ok, message = watch.liveness()
    assert not ok and message == "the agent loop has not run for 61 s (limit 60 s)"
    watch.beat()
    assert watch.liveness() == (True, "ok")
    assert PassWatch(30.0).limit == 90.0


def test_agent_flags() -> None:
    from lvs_operator.agent.main import _parser

    args = _parser().parse_args(["--node", "n"])
    assert args.metrics_backends is True and args.log_format == "text"
    args = _parser().parse_args(["--node", "n", "--metrics-backends=false", "--log-format",
                                 "json"])
    assert args.metrics_backends is False and args.log_format == "json"
    assert _parser().parse_args(["--node", "n", "--metrics-backends"]).metrics_backends is True
    with pytest.raises(SystemExit):
        _parser().parse_args(["--node", "n", "--metrics-backends=maybe"])


def test_standalone_watch_serves_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`lvs-agent --plan FILE --watch --health-address ...` with the fake kernel: the loop
    serves /readyz and /metrics (from its own table) until SIGTERM."""
    import json
    import signal

    from lvs_operator.agent import main as agent_main
    from lvs_operator.compiler.plan import plan_to_dict

    kernel = fake_kernel()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps([plan_to_dict(plans(*web("198.51.100.11")))]))
    servers: list[HealthServer] = []
    start = agent_main._start_health

    def start_health(*args: Any) -> Any:
        server = start(*args)
        servers.append(server)
        return server

    seen: dict[str, Any] = {}

    def sleep(_seconds: float) -> None:
        if not seen:
            port = servers[0].port
            for path in ("/readyz", "/metrics"):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", path)
                resp = conn.getresponse()
                seen[path] = (resp.status, resp.read().decode())
                conn.close()
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(agent_main, "real_kernel", lambda *a, **k: kernel)
    monkeypatch.setattr(agent_main, "_metrics_table", lambda netns: kernel.ipvs)
    monkeypatch.setattr(agent_main, "_start_health", start_health)
    monkeypatch.setattr(agent_main.time, "sleep", sleep)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        code = agent_main.main(["--node", "dir-1", "--plan", str(plan_file), "--watch",
                                "--state-dir", str(tmp_path / "state"),
                                "--health-address", "127.0.0.1:0"])
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert code == 0
    assert seen["/readyz"][0] == 200 and seen["/readyz"][1].startswith("plan applied: ")
    status, text = seen["/metrics"]
    assert status == 200
    assert ('lvs_service_connections_total{address="192.0.2.10",name="web",'
            'namespace="default",port="80",protocol="tcp"} 0.0') in text
    assert 'lvs_agent_operations_total{kind="ipvs/add-service"} 1.0' in text
    assert 'lvs_backend_state{address="192.0.2.10",backend_address="198.51.100.11",' in text
