"""Operator replicas and the leader-election Lease against a real kube-apiserver.

Operators run as host processes under the operator's ServiceAccount (the chart's RBAC: the
Lease Role in lvs-system), with --leader-elect, short timings (lease 4 s, renew deadline 3 s,
retry 0.5 s) and their health endpoints on loopback:

- two start together: exactly one leads (Lease holder, /readyz "leader"), the other stands by
  (/readyz "standby: lease held by ...") and writes nothing (its publisher never runs);
- SIGTERM to the leader releases the Lease: the standby takes over within about a retry
  period, and then publishes;
- SIGKILL to the leader releases nothing: a standby takes over only once the lease has run
  out, as observed by its own clock;
- a leader that finds the Lease taken from under it stops writing and exits with status 1.

Takeover times are printed; they are asserted only against generous bounds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import waiting
from tests.harness.controlplane import KubectlError, LocalControlPlane
from tests.harness.controlplane.server import free_port
from tests.harness.lvs_install import REPO, SYSTEM_NS, HostOperator, install

LEASE = "lvs-operator-election-test"
NS = "le-test"
NODE = "le-node"
AGENT_LABEL = "lvs.dev/le-agent"
VIP = "203.0.113.77"  # the example's VIP would clash with other tests' copies of it
LEASE_S, RENEW_S, RETRY_S = 4, 3.0, 0.5


# These waits watch processes and the API closely: poll often.
wait_until = functools.partial(waiting.wait_until, interval=0.05)


class Replica:
    """One operator replica: the process, its identity and its health endpoint."""

    def __init__(self, name: str, kubeconfig: Path, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.op = HostOperator(kubeconfig, workdir / f"{name}.log", [
            "--leader-elect",
            "--leader-election-namespace", SYSTEM_NS,
            "--leader-election-name", LEASE,
            "--leader-election-id", name,
            "--lease-duration", str(LEASE_S),
            "--renew-deadline", str(RENEW_S),
            "--retry-period", str(RETRY_S),
            "--health-address", f"127.0.0.1:{self.port}",
            "--agent-node-selector", f"{AGENT_LABEL}=true",
            "--stale-agent-after", "1",
        ])

    def start(self) -> Replica:
        self.op.start()
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.op.proc is not None, f"{self.name} is not running"
        return self.op.proc

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of the health endpoint; (0, why) while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def ready(self) -> tuple[int, str]:
        return self.get("/readyz")

    def metric(self, name: str) -> float | None:
        status, text = self.get("/metrics")
        if status != 200:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else None

    def leads(self) -> bool:
        """The Lease is ours: the write fence is open (lvs_operator_leader 1)."""
        return self.metric("lvs_operator_leader") == 1.0

    def log(self) -> str:
        return self.op.log(10**6)

    def exited(self) -> int | None:
        return self.op.proc.poll() if self.op.proc is not None else -1


def lease(cp: LocalControlPlane) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(cp.kubectl(
        "get", "lease", LEASE, "-n", SYSTEM_NS, "-o", "json").stdout)["spec"]
    return spec


def example_docs() -> list[dict[str, Any]]:
    """examples/nat-wrr-portmap in our namespace, with a VIP no other test uses."""
    docs = [d for d in yaml.safe_load_all(
        (REPO / "examples" / "nat-wrr-portmap" / "virtualservice.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = NS
        if doc["kind"] == "VirtualService":
            doc["spec"]["address"] = VIP
    return docs


def nodeplan_generation(cp: LocalControlPlane) -> int:
    proc = cp.kubectl("get", "nodeplan", NODE, "-o", "jsonpath={.metadata.generation}",
                      check=False)
    return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else 0


@pytest.fixture
def cluster(control_plane: LocalControlPlane, tmp_path: Path
            ) -> Iterator[tuple[LocalControlPlane, Path, list[Replica]]]:
    cp = control_plane
    kubeconfig = install(cp)
    cp.kubectl("delete", "lease", LEASE, "-n", SYSTEM_NS, "--ignore-not-found")
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": NODE, "labels": {"lvs.dev/director": "true", AGENT_LABEL: "true"}}},
    ]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    replicas: list[Replica] = []
    try:
        yield cp, kubeconfig, replicas
    finally:
        for r in replicas:
            if r.op.proc is not None and r.op.proc.poll() is None:
                r.op.proc.kill()
                r.op.proc.wait()
            print(f"---- {r.name} log (tail) ----\n{r.op.log(2500)}")
        for name in ("web-nat-1", "web-nat-2"):
            cp.kubectl("delete", "realserver", name, "-n", NS, "--ignore-not-found",
                       check=False)
        with contextlib.suppress(KubectlError):  # nobody is left to remove the finalizer
            cp.kubectl("patch", "virtualservice", "web-nat", "-n", NS, "--type=merge",
                       "-p", '{"metadata":{"finalizers":null}}')
        cp.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false",
                   check=False)
        cp.kubectl("delete", "lease", LEASE, "-n", SYSTEM_NS, "--ignore-not-found",
                   check=False)
        shards = cp.kubectl("get", "nodeplanshards", "-o", "name", check=False).stdout.split()
        mine = [s for s in shards if s.split("/", 1)[-1].startswith(f"{NODE}.")]
        if mine:
            cp.kubectl("delete", "--ignore-not-found", *mine, check=False)
        cp.kubectl("delete", "nodeplan", NODE, "--ignore-not-found", check=False)
        cp.kubectl("delete", "node", NODE, "--ignore-not-found", check=False)


def test_one_leader_graceful_handover_and_takeover_after_expiry(
        cluster: tuple[LocalControlPlane, Path, list[Replica]], tmp_path: Path) -> None:
    cp, kubeconfig, replicas = cluster

    # ---- two replicas start together: exactly one leads
    a, b = Replica("op-a", kubeconfig, tmp_path), Replica("op-b", kubeconfig, tmp_path)
    replicas += [a, b]
    a.start()
    b.start()
    wait_until("one replica ready as leader", lambda: any(
        r.ready() == (200, "leader\n") for r in (a, b)), timeout=60)
    leader, standby = (a, b) if a.ready()[1] == "leader\n" else (b, a)
    wait_until("the other ready as standby", lambda: standby.ready() == (
        200, f"standby: lease held by {leader.name}\n"), timeout=30)
    assert lease(cp)["holderIdentity"] == leader.name
    assert lease(cp)["leaseDurationSeconds"] == LEASE_S
    assert leader.leads() and not standby.leads()
    assert leader.get("/healthz") == (200, "ok\n")
    assert standby.get("/healthz") == (200, "ok\n")

    # ---- only the leader writes
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(example_docs()))
    wait_until("the leader publishes NodePlan le-node", lambda: nodeplan_generation(cp) > 0)
    wait_until("the VirtualService has a status", lambda: json.loads(cp.kubectl(
        "get", "virtualservice", "web-nat", "-n", NS, "-o", "json").stdout).get("status"))
    assert (leader.metric("lvs_operator_nodeplans_written_total") or 0) >= 1
    assert (leader.metric("lvs_operator_publish_rounds_total") or 0) >= 1
    assert standby.metric("lvs_operator_nodeplans_written_total") == 0
    assert standby.metric("lvs_operator_publish_rounds_total") == 0
    assert "initial list" in leader.log()
    assert "initial list" not in standby.log(), "a standby must not even start kopf"
    assert f"standing by: lease {SYSTEM_NS}/{LEASE} held by {leader.name}" in standby.log()

    # ---- SIGTERM: the leader releases, the standby takes over at once
    t0 = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    wait_until("the standby holds the Lease", standby.leads, timeout=LEASE_S + 10, interval=0.02)
    graceful = time.monotonic() - t0
    wait_until("the new leader is ready", lambda: standby.ready() == (200, "leader\n"),
             timeout=60, interval=0.02)
    graceful_ready = time.monotonic() - t0
    assert leader.proc.wait(timeout=30) == 0, leader.log()[-3000:]
    assert f"released Lease {SYSTEM_NS}/{LEASE}" in leader.log()
    assert lease(cp)["holderIdentity"] == standby.name
    print(f"graceful handover (SIGTERM): Lease taken over after {graceful:.2f} s, "
          f"new leader ready after {graceful_ready:.2f} s")
    assert graceful < LEASE_S + 5

    # the new leader publishes
    before = nodeplan_generation(cp)
    cp.kubectl("patch", "realserver", "web-nat-1", "-n", NS, "--type=merge",
               "-p", '{"spec":{"weight":5}}')
    wait_until("the new leader publishes the change", lambda: nodeplan_generation(cp) > before)
    assert (standby.metric("lvs_operator_nodeplans_written_total") or 0) >= 1
    new_leader = standby

    # ---- SIGKILL: nothing is released, a fresh standby waits out the lease
    c = Replica("op-c", kubeconfig, tmp_path)
    replicas.append(c)
    c.start()
    wait_until("op-c ready as standby", lambda: c.ready() == (
        200, f"standby: lease held by {new_leader.name}\n"), timeout=60)
    time.sleep(2 * RETRY_S)  # a few renewals seen by op-c
    t0 = time.monotonic()
    new_leader.proc.kill()
    new_leader.proc.wait()
    wait_until("op-c holds the Lease", c.leads, timeout=LEASE_S + 10, interval=0.02)
    after_kill = time.monotonic() - t0
    wait_until("op-c is ready as leader", lambda: c.ready() == (200, "leader\n"), timeout=60,
             interval=0.02)
    after_kill_ready = time.monotonic() - t0
    assert lease(cp)["holderIdentity"] == "op-c"
    print(f"takeover after SIGKILL: Lease taken over after {after_kill:.2f} s, "
          f"new leader ready after {after_kill_ready:.2f} s (lease {LEASE_S} s)")
    # op-c saw the dead leader's last renewal at most a retry period (plus jitter) before
    # the kill, and waits a whole lease from that sight.
    assert LEASE_S - 1.5 * RETRY_S <= after_kill < LEASE_S + 5

    # ---- the Lease taken from under the leader: it stops and exits with status 1
    cp.kubectl("patch", "lease", LEASE, "-n", SYSTEM_NS, "--type=merge", "-p", json.dumps(
        {"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60}}))
    t0 = time.monotonic()
    code = wait_until("op-c exits", c.exited, timeout=RENEW_S + 10, interval=0.02)
    print(f"leader that lost the Lease exited with status {code} after "
          f"{time.monotonic() - t0:.2f} s")
    assert code == 1
    assert "lost the lease to intruder" in c.log()
    assert lease(cp)["holderIdentity"] == "intruder"
