"""lvs-operator installed on a LocalControlPlane the way the chart installs it: CRDs, the
lvs-system namespace, ServiceAccounts bound to exactly the ClusterRoles in api/rbac.py, and
the operator as a host process under its ServiceAccount. Used by the cluster tier's
end-to-end tests, `make demo` and `make bench-e2e`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lvs_operator.api.rbac import (
    AGENT_RULES,
    OPERATOR_LEADER_ELECTION_RULES,
    OPERATOR_RULES,
    cluster_role,
    cluster_role_binding,
    role,
    role_binding,
)

from .controlplane import LocalControlPlane

REPO = Path(__file__).resolve().parents[2]
SYSTEM_NS = "lvs-system"

__all__ = ["REPO", "SYSTEM_NS", "HostOperator", "agent_argv", "install", "programmed"]


def install(cp: LocalControlPlane) -> Path:
    """CRDs, namespace, RBAC; returns the operator's kubeconfig (its ServiceAccount token)."""
    cp.kubectl("apply", "-f", str(REPO / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))

    def subjects(name: str) -> list[dict[str, Any]]:
        return [{"kind": "ServiceAccount", "name": name, "namespace": SYSTEM_NS}]

    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NS}},
        cluster_role("lvs-operator", OPERATOR_RULES),
        cluster_role("lvs-agent", AGENT_RULES),
        cluster_role_binding("lvs-operator", "lvs-operator", subjects("lvs-operator")),
        cluster_role_binding("lvs-agent", "lvs-agent", subjects("lvs-agent")),
        role("lvs-operator-leader-election", SYSTEM_NS, OPERATOR_LEADER_ELECTION_RULES),
        role_binding("lvs-operator-leader-election", SYSTEM_NS, "lvs-operator-leader-election",
                     subjects("lvs-operator")),
    ]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return cp.service_account_kubeconfig(SYSTEM_NS, "lvs-operator")


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
