"""The permissions each component needs, in one place: the cluster tier grants exactly these
(and so proves they are enough), and the Helm chart renders the same rules.

The agent reads plans and writes only its NodePlan's status; the operator never writes to
Nodes, Services or EndpointSlices (it watches them) and owns the NodePlans.

Director high availability (`spec.ha.mode: Lease`, agent/vip_lease.py): the agents compete
for one Lease per VIP, `lvs-ha-<address>`, and those Leases live in the operator's (the
release's) namespace, not in the VirtualService's. So the agents get Lease rights through a
namespaced Role there (`AGENT_HA_LEASE_RULES`: get, create, update; no list, watch, patch or
delete) instead of a ClusterRole over every namespace's Leases, where users keep their own
leader elections.

VRRP mode with authentication (`spec.ha.vrrp.authSecretRef`): the agent reads that one Secret
in the VirtualService's namespace. Nothing grants Secrets by default; the chart's
`agent.vrrpAuthSecrets` (namespace -> names) renders a Role per namespace with `get` on
exactly those names (`agent_vrrp_auth_rules`), never list or watch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .objects import API_GROUP

__all__ = [
    "AGENT_HA_LEASE_RULES",
    "AGENT_RULES",
    "AGENT_VRRP_AUTH_RULE",
    "OPERATOR_LEADER_ELECTION_RULES",
    "OPERATOR_RULES",
    "agent_vrrp_auth_rules",
    "chart_rules_file",
    "cluster_role",
    "cluster_role_binding",
    "role",
    "role_binding",
]

_READ = ["get", "list", "watch"]

AGENT_RULES: list[dict[str, Any]] = [
    {"apiGroups": [API_GROUP], "resources": ["nodeplans", "nodeplanshards"], "verbs": _READ},
    {"apiGroups": [API_GROUP], "resources": ["nodeplans/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]

OPERATOR_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [API_GROUP],
        "resources": ["virtualservices", "realservers"],
        "verbs": [*_READ, "patch", "update"],
    },
    {
        "apiGroups": [API_GROUP],
        "resources": [
            "virtualservices/status",
            "realservers/status",
            "virtualservices/finalizers",
            "realservers/finalizers",
        ],
        "verbs": ["get", "patch", "update"],
    },
    {
        "apiGroups": [API_GROUP],
        "resources": ["nodeplans", "nodeplanshards"],
        "verbs": [*_READ, "create", "update", "patch", "delete"],
    },
    {"apiGroups": [API_GROUP], "resources": ["nodeplans/status"], "verbs": ["get"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
    {"apiGroups": [""], "resources": ["services", "endpoints", "nodes", "namespaces"],
     "verbs": _READ},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": _READ},
]

# Namespaced, in the operator's own namespace: the Lease that makes one replica the active one.
OPERATOR_LEADER_ELECTION_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["get", "create", "update", "patch"]},
]


# Namespaced, in the operator's namespace: the Leases that say which director holds an HA VIP.
# An elector reads (GET), creates the Lease when absent (POST) and writes it whole (PUT).
AGENT_HA_LEASE_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["get", "create", "update"]},
]


# Namespaced, in a VirtualService's namespace: the VRRP password Secrets named there (the chart
# adds `resourceNames`, one Role per namespace of agent.vrrpAuthSecrets).
AGENT_VRRP_AUTH_RULE: dict[str, Any] = {
    "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
}


def agent_vrrp_auth_rules(names: list[str]) -> list[dict[str, Any]]:
    """The rules of one namespace's VRRP-auth Role: `get` on the named Secrets only."""
    return [{**AGENT_VRRP_AUTH_RULE, "resourceNames": sorted(set(names))}]


def cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }


def cluster_role_binding(name: str, role: str, subjects: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }


def role(name: str, namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }


def role_binding(name: str, namespace: str, role_name: str,
                 subjects: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
        "subjects": subjects,
    }


def chart_rules_file() -> str:
    """The rules as the Helm chart reads them (`files/rbac.yaml`, via .Files.Get), so the chart
    grants exactly what this module defines and the cluster tier proves is enough."""
    doc = {
        "operator": OPERATOR_RULES,
        "operatorLeaderElection": OPERATOR_LEADER_ELECTION_RULES,
        "agent": AGENT_RULES,
        "agentHALeases": AGENT_HA_LEASE_RULES,
        "agentVRRPAuth": AGENT_VRRP_AUTH_RULE,
    }
    header = "# Generated from operator/lvs_operator/api/rbac.py by `make crds`; do not edit.\n"
    return header + yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, width=100)


class _NoAliases(yaml.SafeDumper):
    """Rules share their verb lists; a person reading the file wants them written out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str]) -> int:
    """`[--check] FILE`: write (or check) the chart's copy of the rules."""
    check = "--check" in argv
    paths = [Path(a) for a in argv if a != "--check"]
    if len(paths) != 1:
        print("usage: python -m lvs_operator.api.rbac [--check] FILE", file=sys.stderr)
        return 2
    path, text = paths[0], chart_rules_file()
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date with operator/lvs_operator/api/rbac.py; run `make crds`")
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
