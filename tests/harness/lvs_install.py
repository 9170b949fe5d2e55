"""lvs-operator installed on a LocalControlPlane with its Helm chart (charts/lvs-operator),
then run as processes under the chart's own identities: the operator on the host with a token
of the chart's operator ServiceAccount, each agent with a token of the agent ServiceAccount
bound to a stand-in for the DaemonSet's pod on its node (no kubelet runs here, so nothing
starts the chart's Deployment and DaemonSet; their pod templates are what we imitate). Used by
the cluster tier, `make demo` and `make bench-e2e`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .controlplane import LocalControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lvs-operator"
SYSTEM_NS = "lvs-system"
RELEASE = "lvs-operator"
# The chart's names for release "lvs-operator" (templates/_helpers.tpl).
OPERATOR_SA = "lvs-operator"
AGENT_SA = "lvs-operator-agent"
AGENT_DAEMONSET = "lvs-operator-agent"

__all__ = [
    "AGENT_SA",
    "CHART",
    "OPERATOR_SA",
    "RELEASE",
    "REPO",
    "SYSTEM_NS",
    "HostOperator",
    "agent_argv",
    "agent_kubeconfig",
    "helm",
    "install",
    "programmed",
]


def helm(cp: LocalControlPlane, *args: str, timeout: float = 180.0
         ) -> subprocess.CompletedProcess[str]:
    """The pinned helm against this control plane as admin; raises with helm's stderr."""
    assert cp.binaries is not None and cp.binaries.helm is not None, "helm was not fetched"
    proc = subprocess.run([str(cp.binaries.helm), *args], env=cp.env(), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def install(cp: LocalControlPlane, values: dict[str, Any] | None = None) -> Path:
    """`helm upgrade --install` the chart into lvs-system (idempotent: several tests share one
    control plane); returns a kubeconfig with a token of the chart's operator ServiceAccount."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="lvs-values-") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        helm(cp, "upgrade", "--install", RELEASE, str(CHART), "--namespace", SYSTEM_NS,
             "--create-namespace", "--values", f.name)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CHART / "crds"))
    return cp.service_account_kubeconfig(SYSTEM_NS, OPERATOR_SA, create=False)


def agent_kubeconfig(cp: LocalControlPlane, node: str, *, server: str | None = None,
                     path: Path | None = None) -> Path:
    """A kubeconfig for the agent on `node`, as the DaemonSet's pod there would have it: a
    token of the agent ServiceAccount bound to a pod on that node, so the API server names the
    node in the identity (the chart's admission policy lets it write only that NodePlan).
    The Node object must exist. The pod is the DaemonSet's template with spec.nodeName set,
    as the DaemonSet controller would create it; nothing runs it."""
    cp.kubectl("get", "node", node)  # a clear error here, not a token without a node name
    daemonset = _installed(cp, "DaemonSet", AGENT_DAEMONSET)
    template = daemonset["spec"]["template"]
    pod_name = f"{AGENT_DAEMONSET}-{node}"[:63].rstrip("-.")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": SYSTEM_NS,
                     "labels": template["metadata"]["labels"]},
        "spec": {**template["spec"], "nodeName": node},
    }
    # No kubelet confirms a graceful delete here: an earlier token's pod must go at once.
    cp.kubectl("delete", "pod", "-n", SYSTEM_NS, pod_name, "--ignore-not-found",
               "--grace-period=0", "--force")
    cp.kubectl("create", "-f", "-", input=json.dumps(pod))
    return cp.service_account_kubeconfig(SYSTEM_NS, AGENT_SA, create=False, bound_pod=pod_name,
                                         server=server, path=path)


def _installed(cp: LocalControlPlane, kind: str, name: str) -> dict[str, Any]:
    out = cp.kubectl("get", kind, name, "-n", SYSTEM_NS, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def programmed(cp: LocalControlPlane, namespace: str, names: Sequence[str] = (),
               timeout: float = 300.0) -> tuple[int, int, list[str]]:
    """(Programmed, total, "name: reason" of the others) for the VirtualServices in
    `namespace`, or only those named."""
    out = json.loads(cp.kubectl("get", "virtualservices", "-n", namespace, *names, "-o", "json",
                                timeout=timeout).stdout)
    items = out.get("items", [out])
    done, waiting = 0, []
    for item in items:
        conds = {c["type"]: c for c in (item.get("status") or {}).get("conditions") or ()}
        prog = conds.get("Programmed", {})
        if prog.get("status") == "True":
            done += 1
        else:
            waiting.append(f"{item['metadata']['name']}: {prog.get('reason', 'no status yet')}")
    return done, len(items), waiting


def agent_argv(node: str, kubeconfig: str, *, netns: str | None = None,
               interval: float = 5.0, state_dir: str = "/var/lib/lvs-agent") -> list[str]:
    argv = [sys.executable, "-m", "lvs_operator.agent.main", "--node", node,
            "--kubeconfig", kubeconfig, "--interval", str(interval), "--state-dir", state_dir]
    return argv + (["--netns", netns] if netns else [])


class HostOperator:
    """lvs-operator as a host process; restartable; its log goes to a file."""

    def __init__(self, kubeconfig: Path | str, log_path: Path | str,
                 extra_args: list[str] | None = None) -> None:
        self.kubeconfig = str(kubeconfig)
        self.log_path = Path(log_path)
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lvs_operator.controller.main", "--kubeconfig",
             self.kubeconfig, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
