"""`lvs-agent` in cluster mode against a real kube-apiserver, programming a throwaway netns.

The host kernel has no IPVS, so the node is a DR real server: its plan (compiled from the
dr-persistent example) is the VIP on lo plus the ARP sysctls, which a netns does have. The
agent runs as a process under an identity holding only the agent's RBAC, and reaches the API
through a TCP forward the test can cut, to show fail-static behaviour: the kernel stays as
last applied (drift still repaired) while the API is away, and the agent catches up after.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator.api.objects import parse_manifest
from lvs_operator.api.rbac import AGENT_RULES, cluster_role, cluster_role_binding
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import NodePlan
from lvs_operator.compiler.shards import PlanSharder
from tests.harness import waiting
from tests.harness.controlplane import LocalControlPlane

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "lvs.dev", "v1alpha1"
AGENT_USER = "lvs-agent-cluster-test"
INTERVAL = 1.0
ARP = {"all/arp_ignore": "1", "all/arp_announce": "2", "lo/arp_ignore": "1",
       "lo/arp_announce": "2"}


# These waits watch processes and the API closely: poll often.
wait_until = functools.partial(waiting.wait_until, interval=0.05)


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plan_crds(control_plane: LocalControlPlane) -> LocalControlPlane:
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts",
        "-f", str(ROOT / "crds" / "nodeplans.lvs.dev.yaml"),
        "-f", str(ROOT / "crds" / "nodeplanshards.lvs.dev.yaml"),
    )
    for name in ("nodeplans.lvs.dev", "nodeplanshards.lvs.dev"):
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              f"crd/{name}")
    return control_plane


@pytest.fixture(scope="module")
def agent_kubeconfig(plan_crds: LocalControlPlane) -> Path:
    """A kubeconfig for an identity that holds exactly the agent's RBAC, nothing else."""
    role = cluster_role("lvs-agent", AGENT_RULES)
    binding = cluster_role_binding("lvs-agent-cluster-test", "lvs-agent",
                                   [{"kind": "User", "name": AGENT_USER,
                                     "apiGroup": "rbac.authorization.k8s.io"}])
    plan_crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                      input=json.dumps({"apiVersion": "v1", "kind": "List",
                                        "items": [role, binding]}))
    kubeconfig = plan_crds.mint_kubeconfig(AGENT_USER)
    wait_until("the agent's RBAC to take effect", lambda: plan_crds.kubectl(
        "auth", "can-i", "watch", "nodeplans.lvs.dev", kubeconfig=kubeconfig, check=False
    ).stdout.strip() == "yes")
    return kubeconfig


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent programs a throwaway network namespace")
    name = f"lvs-ct-{secrets.token_hex(4)}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                          timeout=30, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30,
                       check=False)


@pytest.fixture
def admin(plan_crds: LocalControlPlane) -> Iterator[Any]:
    """CustomObjectsApi as the cluster admin: the operator's side of the contract."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(plan_crds.kubeconfig))
    try:
        yield client.CustomObjectsApi(api_client)
    finally:
        api_client.close()


class Forward:
    """127.0.0.1:port -> the API server. close() refuses new connections and cuts the open
    ones (the API server is gone, as far as the agent can tell); open() serves again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client_sock, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client_sock.close()
                continue
            with self._lock:
                self._socks += [client_sock, upstream]
            for src, dst in ((client_sock, upstream), (upstream, client_sock)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def forward(control_plane: LocalControlPlane) -> Iterator[Forward]:
    fwd = Forward(int(control_plane.server.rsplit(":", 1)[1]))
    try:
        yield fwd
    finally:
        fwd.close()


def via(kubeconfig: Path, server: str, target: Path) -> Path:
    """The same identity, talking to `server`."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = server
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target


# --------------------------------------------------------------------------- helpers


def backend_plan(node: str, vips: list[str]) -> NodePlan:
    """The node's plan when it is a DR real server behind each VIP (dr-persistent example)."""
    template = list(yaml.safe_load_all((ROOT / "examples" / "dr-persistent" /
                                        "virtualservice.yaml").read_text()))
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "ct-director", "labels": {"lvs.dev/director": "true"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}},
    ]
    for i, vip in enumerate(vips):
        vs, real = json.loads(json.dumps(template[0])), json.loads(json.dumps(template[1]))
        vs["metadata"]["name"] = f"web-dr-{i}"
        vs["spec"]["address"] = vip
        vs["spec"]["backends"]["realServerSelector"]["matchLabels"] = {"app": f"web-dr-{i}"}
        real["metadata"].update(name=f"web-dr-{i}-1", labels={"app": f"web-dr-{i}"})
        real["spec"]["nodeName"] = node
        docs += [vs, real]
    objects = [parse_manifest(d) for d in docs]
    return compile_cluster([o for o in objects if o is not None]).plans[node]


class Operator:
    """Publishes plans the way the operator does: shards first, then the NodePlan."""

    def __init__(self, api: Any, node: str) -> None:
        self.api, self.node = api, node
        self.sharder = PlanSharder()

    def publish(self, plan: NodePlan) -> int:
        from kubernetes.client import ApiException

        published = self.sharder.update(plan)
        for name, spec in published.shards.items():
            self._put("nodeplanshards", "NodePlanShard", name, spec)
        assert published.spec is not None
        generation = self._put("nodeplans", "NodePlan", self.node, published.spec)
        for name in published.obsolete:
            with contextlib.suppress(ApiException):
                self.api.delete_cluster_custom_object(GROUP, VERSION, "nodeplanshards", name)
        return generation

    def _put(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> int:
        from kubernetes.client import ApiException

        try:
            current = self.api.get_cluster_custom_object(GROUP, VERSION, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                    "metadata": {"name": name}, "spec": spec}
            created = self.api.create_cluster_custom_object(GROUP, VERSION, plural, body)
            return int(created["metadata"].get("generation", 1))
        current["spec"] = spec
        replaced = self.api.replace_cluster_custom_object(GROUP, VERSION, plural, name, current)
        return int(replaced["metadata"].get("generation", 1))

    def nodeplan(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_cluster_custom_object(
            GROUP, VERSION, "nodeplans", self.node)
        return obj

    def delete(self) -> None:
        from kubernetes.client import ApiException

        for plural, name in [("nodeplans", self.node)] + [
            ("nodeplanshards", n) for n in self._shard_names()
        ]:
            with contextlib.suppress(ApiException):
                self.api.delete_cluster_custom_object(GROUP, VERSION, plural, name)

    def _shard_names(self) -> list[str]:
        items = self.api.list_cluster_custom_object(GROUP, VERSION, "nodeplanshards")["items"]
        return [i["metadata"]["name"] for i in items if i["spec"].get("node") == self.node]

    def programmed(self, generation: int) -> bool:
        status = self.nodeplan().get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        ready = conditions.get("Programmed", {})
        return (status.get("observedGeneration") == generation
                and ready.get("status") == "True" and ready.get("observedGeneration") == generation)


class AgentProcess:
    def __init__(self, node: str, kubeconfig: Path, netns: str, workdir: Path,
                 env: dict[str, str], interval: float = INTERVAL) -> None:
        self.log = workdir / f"agent-{secrets.token_hex(2)}.log"
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lvs_operator.agent.main", "--node", node,
             "--kubeconfig", str(kubeconfig), "--interval", str(interval),
             "--state-dir", str(workdir / "state"), "--netns", netns],
            stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the agent ignored SIGTERM:\n{self.text()}") from None
        self._logf.close()
        return self.proc.returncode


def lo_vips(netns: str) -> set[str]:
    out = run("ip", "-n", netns, "-o", "-4", "addr", "show", "dev", "lo")
    return {line.split()[3] for line in out.splitlines()} - {"127.0.0.1/8"}


def arp_sysctls(netns: str) -> dict[str, str]:
    return {k: run("ip", "netns", "exec", netns, "cat", f"/proc/sys/net/ipv4/conf/{k}").strip()
            for k in ARP}


# --------------------------------------------------------------------------- tests


def test_agent_follows_its_nodeplan_fails_static_and_stops_cleanly(
    control_plane: LocalControlPlane, agent_kubeconfig: Path, admin: Any, netns: str,
    forward: Forward, tmp_path: Path,
):
    node = f"ct-node-{secrets.token_hex(3)}"
    operator = Operator(admin, node)
    kubeconfig = via(agent_kubeconfig, f"https://127.0.0.1:{forward.port}",
                     tmp_path / "agent.kubeconfig")
    env = control_plane.env(kubeconfig)
    agents: list[AgentProcess] = []
    try:
        assert arp_sysctls(netns) != ARP  # a fresh namespace: nothing set yet
        gen1 = operator.publish(backend_plan(node, ["192.0.2.20"]))
        agents.append(AgentProcess(node, kubeconfig, netns, tmp_path, env))
        agent = agents[-1]
        wait_until("the VIP on lo", lambda: lo_vips(netns) == {"192.0.2.20/32"})
        wait_until("the ARP sysctls", lambda: arp_sysctls(netns) == ARP)
        wait_until("Programmed=True for generation 1", lambda: operator.programmed(gen1))
        status = operator.nodeplan()["status"]
        assert status["agent"].startswith("lvs-agent ")
        assert status["lastSyncTime"].endswith("Z")
        assert (status["services"], status["destinations"], status["failures"]) == (0, 0, [])
        assert {c["type"]: c["status"] for c in status["conditions"]} == \
            {"Programmed": "True", "Degraded": "False"}

        # A new plan is followed at once (the watch event triggers the pass).
        start = time.monotonic()
        gen2 = operator.publish(backend_plan(node, ["192.0.2.21", "192.0.2.22"]))
        assert gen2 == gen1 + 1
        wait_until("Programmed=True for generation 2", lambda: operator.programmed(gen2),
                 interval=0.01)
        latency = time.monotonic() - start
        print(f"publish -> Programmed: {latency * 1000:.0f} ms")
        assert latency < 5.0
        assert lo_vips(netns) == {"192.0.2.21/32", "192.0.2.22/32"}

        # The API server goes away: nothing is undone, drift is still repaired.
        forward.close()
        time.sleep(3 * INTERVAL)
        assert agent.alive()
        assert lo_vips(netns) == {"192.0.2.21/32", "192.0.2.22/32"}
        run("ip", "-n", netns, "addr", "del", "192.0.2.21/32", "dev", "lo")
        run("ip", "netns", "exec", netns, "sh", "-c",
            "echo 0 > /proc/sys/net/ipv4/conf/all/arp_ignore")
        wait_until("drift repaired without the API",
                 lambda: lo_vips(netns) == {"192.0.2.21/32", "192.0.2.22/32"}
                 and arp_sysctls(netns) == ARP, timeout=10)
        gen3 = operator.publish(backend_plan(node, ["192.0.2.23"]))  # unseen for now
        time.sleep(3 * INTERVAL)
        assert lo_vips(netns) == {"192.0.2.21/32", "192.0.2.22/32"}
        assert agent.text().count("the API server failed") == 1, agent.text()

        # It comes back: the agent catches up with what was published meanwhile.
        forward.open()
        wait_until("Programmed=True for generation 3", lambda: operator.programmed(gen3),
                 timeout=60)
        assert lo_vips(netns) == {"192.0.2.23/32"}
        assert "the API server answers again" in agent.text()

        # SIGTERM: a prompt, clean exit (it cuts the blocking watch) that leaves the kernel alone.
        stopping = time.monotonic()
        assert agent.terminate() == 0, agent.text()
        assert time.monotonic() - stopping < 3.0
        assert "stopping; the kernel is left as it is" in agent.text()
        assert lo_vips(netns) == {"192.0.2.23/32"} and arp_sysctls(netns) == ARP

        # No NodePlan (deleted): a restarted agent waits and touches nothing.
        operator.delete()
        agents.append(AgentProcess(node, kubeconfig, netns, tmp_path, env))
        waiting = f"waiting for the operator to publish a plan for node {node}"
        wait_until("the agent to say it waits", lambda: waiting in agents[-1].text())
        time.sleep(3 * INTERVAL)
        assert agents[-1].alive()
        assert lo_vips(netns) == {"192.0.2.23/32"} and arp_sysctls(netns) == ARP
        assert agents[-1].terminate() == 0
    finally:
        for a in agents:
            with contextlib.suppress(AssertionError):
                a.terminate()
        operator.delete()


def test_sigterm_cuts_a_long_watch_short(
    control_plane: LocalControlPlane, agent_kubeconfig: Path, netns: str, tmp_path: Path,
):
    """With --interval 60 the agent blocks in a watch for up to a minute; SIGTERM must not
    wait for it to end."""
    node = f"ct-idle-{secrets.token_hex(3)}"
    agent = AgentProcess(node, agent_kubeconfig, netns, tmp_path,
                         control_plane.env(agent_kubeconfig), interval=60.0)
    try:
        wait_until("the agent to watch", lambda: "waiting for the operator" in agent.text())
        time.sleep(1.0)  # well inside the watch now
        stopping = time.monotonic()
        assert agent.terminate() == 0, agent.text()
        assert time.monotonic() - stopping < 3.0
    finally:
        with contextlib.suppress(AssertionError):
            agent.terminate()


def test_the_agent_identity_reads_plans_and_writes_only_their_status(
    plan_crds: LocalControlPlane, agent_kubeconfig: Path, admin: Any,
):
    def can(verb: str, resource: str, *extra: str) -> bool:
        out = plan_crds.kubectl("auth", "can-i", verb, resource, *extra,
                                kubeconfig=agent_kubeconfig, check=False).stdout.strip()
        return out == "yes"

    assert can("watch", "nodeplans.lvs.dev") and can("get", "nodeplanshards.lvs.dev")
    assert can("patch", "nodeplans.lvs.dev", "--subresource=status")
    assert not can("update", "nodeplans.lvs.dev", "--subresource=status")
    for verb in ("create", "update", "patch", "delete"):
        assert not can(verb, "nodeplans.lvs.dev"), verb
        assert not can(verb, "nodeplanshards.lvs.dev"), verb
    assert not can("get", "secrets")

    node = f"ct-rbac-{secrets.token_hex(3)}"
    operator = Operator(admin, node)
    try:
        operator.publish(NodePlan(node))
        denied = plan_crds.kubectl(
            "patch", "nodeplan", node, "--type=merge", "-p", '{"spec":{"node":"elsewhere"}}',
            kubeconfig=agent_kubeconfig, check=False,
        )
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
        allowed = plan_crds.kubectl(
            "patch", "nodeplan", node, "--subresource=status", "--type=merge",
            "-p", '{"status":{"services":0}}', kubeconfig=agent_kubeconfig, check=False,
        )
        assert allowed.returncode == 0, allowed.stderr
        assert operator.nodeplan()["spec"]["node"] == node
    finally:
        operator.delete()
