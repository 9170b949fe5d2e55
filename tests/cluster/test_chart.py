"""The Helm chart (charts/lvs-operator) held to its promises: lint-clean, every rendering valid
against Kubernetes' own schemas, bad values refused naming the value, installable into the real
API server, RBAC exactly as operator/lvs_operator/api/rbac.py says, each agent confined to its
own NodePlan, and pods within the "baseline" Pod Security Standard except for the documented
exceptions of the agent (README, "Security").

The end-to-end tests (test_e2e.py, test_demo.py) install the same chart and run the operator and
agents under its ServiceAccounts (tests/harness/lvs_install.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lvs_operator.agent.kubeapi import KubeAPI, load_credentials
from lvs_operator.agent.main import vrrp_password_reader
from lvs_operator.api.rbac import (
    AGENT_HA_LEASE_RULES,
    AGENT_RULES,
    OPERATOR_LEADER_ELECTION_RULES,
    OPERATOR_RULES,
    agent_vrrp_auth_rules,
)
from tests.harness.controlplane import KubectlError, LocalControlPlane
from tests.harness.lvs_install import (
    AGENT_SA,
    CHART,
    OPERATOR_SA,
    REPO,
    SYSTEM_NS,
    agent_kubeconfig,
    helm,
    install,
)

# Kubernetes versions whose schemas every rendering must satisfy (kubernetes-validate ships
# them, strict: unknown fields are errors).
KUBERNETES_VERSIONS = ("1.33.0", "1.34.0", "1.35.0")

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "operator-standbys": {"operator": {"replicas": 3, "priorityClassName": "system-cluster-critical"}},
    "directors-only-no-election": {
        "agent": {"nodeSelector": {"lvs.dev/director": "true"}, "tolerations": [],
                  "iptables": "nft", "intervalSeconds": 2.5, "extraArgs": ["--json"]},
        "operator": {"leaderElection": {"enabled": False}, "legacyEndpoints": True,
                     "verbose": True, "nodeSelector": {"kubernetes.io/os": "linux"}},
        "commonLabels": {"team": "edge"},
    },
    "bring-your-own-rbac": {
        "image": {"repository": "registry.example/lvs", "digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "pull"}],
        "rbac": {"create": False},
        "admissionPolicy": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
        "serviceAccount": {"operator": {"name": "ops"}, "agent": {"name": "node-agent"}},
    },
    "vrrp-auth-secrets": {
        "agent": {"vrrpAuthSecrets": {"shop": ["vrrp-pass", "edge-pass", "vrrp-pass"],
                                      "edge": ["p"]}},
    },
}


def _values_file(values: dict[str, Any], directory: Path) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _helm_run(cp: LocalControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    assert cp.binaries is not None and cp.binaries.helm is not None
    return subprocess.run([str(cp.binaries.helm), *args], env=cp.env(), capture_output=True,
                          text=True, timeout=120, check=False)


def render(cp: LocalControlPlane, values: dict[str, Any], release: str = "lvs-operator"
           ) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = helm(cp, "template", release, str(CHART), "--namespace", SYSTEM_NS,
                   "--values", str(_values_file(values, Path(tmp)))).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# ------------------------------------------------------------------------- static: lint, render


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_is_clean(control_plane: LocalControlPlane, value_set: str,
                            tmp_path: Path) -> None:
    proc = _helm_run(control_plane, "lint", "--strict", str(CHART), "--namespace", SYSTEM_NS,
                     "--values", str(_values_file(VALUE_SETS[value_set], tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert not re.search(r"\[(WARNING|ERROR)\]", proc.stdout), proc.stdout


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_for_kubernetes_1_33_and_later(
        control_plane: LocalControlPlane, value_set: str) -> None:
    docs = render(control_plane, VALUE_SETS[value_set])
    kinds = sorted(d["kind"] for d in docs)
    assert "Deployment" in kinds and "DaemonSet" in kinds and kinds.count("ServiceAccount") == 2
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{value_set}: {doc['kind']} {doc['metadata']['name']} is not a "
                            f"valid Kubernetes {version} object: {exc.message} at "
                            f"{'/'.join(map(str, exc.path))}")


def test_rendered_rbac_is_exactly_the_rules_the_cluster_tier_proves_enough(
        control_plane: LocalControlPlane) -> None:
    docs = render(control_plane, {})
    assert one(docs, "ClusterRole", "lvs-operator")["rules"] == OPERATOR_RULES
    assert one(docs, "ClusterRole", "lvs-operator-agent")["rules"] == AGENT_RULES
    role = one(docs, "Role", "lvs-operator-leader-election")
    assert role["rules"] == OPERATOR_LEADER_ELECTION_RULES
    assert role["metadata"]["namespace"] == SYSTEM_NS
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"].endswith("Binding")
                and d["kind"] != "ValidatingAdmissionPolicyBinding"}
    assert {n: b["subjects"] for n, b in bindings.items()} == {
        "lvs-operator": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": SYSTEM_NS}],
        "lvs-operator-leader-election": [
            {"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": SYSTEM_NS}],
        "lvs-operator-agent": [{"kind": "ServiceAccount", "name": AGENT_SA,
                                "namespace": SYSTEM_NS}],
        "lvs-operator-agent-ha-leases": [{"kind": "ServiceAccount", "name": AGENT_SA,
                                          "namespace": SYSTEM_NS}],
    }
    ha_role = one(docs, "Role", "lvs-operator-agent-ha-leases")
    assert ha_role["rules"] == AGENT_HA_LEASE_RULES
    assert ha_role["metadata"]["namespace"] == SYSTEM_NS
    # Secrets are in no rule of either component.
    for rules in (OPERATOR_RULES, AGENT_RULES):
        assert not any("secrets" in r["resources"] or "*" in r["resources"] for r in rules)


def test_vrrp_auth_secrets_get_one_role_per_namespace_naming_only_them(
        control_plane: LocalControlPlane) -> None:
    docs = render(control_plane, VALUE_SETS["vrrp-auth-secrets"])
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"
             and d["metadata"]["name"] == "lvs-operator-agent-vrrp-auth"}
    assert set(roles) == {"shop", "edge"}
    assert roles["shop"]["rules"] == agent_vrrp_auth_rules(["edge-pass", "vrrp-pass"])
    assert roles["shop"]["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                       "resourceNames": ["edge-pass", "vrrp-pass"],
                                       "verbs": ["get"]}]
    assert roles["edge"]["rules"][0]["resourceNames"] == ["p"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"
                and d["metadata"]["name"] == "lvs-operator-agent-vrrp-auth"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["edge", "shop"]
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": AGENT_SA,
                                  "namespace": SYSTEM_NS}] for b in bindings)
    # By default: no Role names a Secret.
    assert not [d for d in render(control_plane, {}) if d["kind"] == "Role"
                and any("secrets" in r["resources"] for r in d["rules"])]


def test_crds_in_the_chart_are_the_generated_ones() -> None:
    chart_crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart_crds == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    for name in chart_crds:
        assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), name


def test_values_shape_the_workloads(control_plane: LocalControlPlane) -> None:
    docs = render(control_plane, VALUE_SETS["directors-only-no-election"])
    operator = one(docs, "Deployment")
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    args = container(operator)["args"]
    assert "--agent-node-selector=lvs.dev/director=true" in args  # plans only where agents run
    assert "--legacy-endpoints" in args and "--verbose" in args
    assert not [a for a in args if a.startswith("--leader-elect")]
    agent = one(docs, "DaemonSet")
    pod = agent["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"lvs.dev/director": "true"}
    assert "tolerations" not in pod
    assert {"--iptables=nft", "--interval=2.5", "--json", "--node=$(NODE_NAME)",
            "--proc-sys=/host/proc/sys"} <= set(container(agent)["args"])

    docs = render(control_plane, VALUE_SETS["operator-standbys"])
    operator = one(docs, "Deployment")
    assert operator["spec"]["replicas"] == 3
    args = container(operator)["args"]
    assert {"--leader-elect", "--leader-election-id=$(POD_NAME)",
            "--leader-election-namespace=$(POD_NAMESPACE)", "--lease-duration=15",
            "--renew-deadline=10", "--retry-period=2"} <= set(args)
    assert not [a for a in args if a.startswith("--agent-node-selector")]  # every node

    docs = render(control_plane, VALUE_SETS["bring-your-own-rbac"], release="edge")
    assert not [d for d in docs if d["kind"] in (
        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")]
    assert container(one(docs, "DaemonSet", "edge-lvs-operator-agent"))["image"] == \
        "registry.example/lvs@sha256:" + "ab" * 32
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"} == \
        {"ops", "node-agent"}


@pytest.mark.parametrize(("values", "says"), [
    ({"agent": {"iptables": "iptables"}}, "/agent/iptables"),
    ({"agent": {"intervalSecs": 5}}, "intervalSecs"),
    ({"agent": {"nodeSelector": {"lvs.dev/director": "a,b"}}}, "/agent/nodeSelector"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"operator": {"replicas": "two"}}, "/operator/replicas"),
    ({"operator": {"leaderElection": {"renewDeadlineSeconds": 20}}},
     "need leaseDurationSeconds (15) > renewDeadlineSeconds (20)"),
    ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
     "operator.replicas > 1 needs operator.leaderElection.enabled=true"),
    ({"agent": {"vrrpAuthSecrets": {"shop": []}}}, "/agent/vrrpAuthSecrets/shop"),
    ({"agent": {"vrrpAuthSecrets": {"Shop": ["p"]}}}, "invalid propertyName 'Shop'"),
    ({"agent": {"vrrpAuthSecrets": {"shop": "p"}}}, "/agent/vrrpAuthSecrets/shop"),
])
def test_bad_values_are_refused_naming_the_value(control_plane: LocalControlPlane,
                                                 values: dict[str, Any], says: str,
                                                 tmp_path: Path) -> None:
    proc = _helm_run(control_plane, "template", "lvs-operator", str(CHART),
                     "--values", str(_values_file(values, tmp_path)))
    assert proc.returncode != 0
    assert says in proc.stderr, proc.stderr


# ------------------------------------------------------------------ installed into the cluster


@pytest.fixture(scope="module")
def installed(control_plane: LocalControlPlane) -> Iterator[LocalControlPlane]:
    install(control_plane)
    yield control_plane
    install(control_plane)  # back to the defaults the other modules expect


def test_helm_install_and_upgrade(installed: LocalControlPlane) -> None:
    cp = installed
    status = json.loads(helm(cp, "status", "lvs-operator", "-n", SYSTEM_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    for kind, name in (("deployment", "lvs-operator"), ("daemonset", "lvs-operator-agent"),
                       ("serviceaccount", OPERATOR_SA), ("serviceaccount", AGENT_SA),
                       ("service", "lvs-operator-metrics"),
                       ("service", "lvs-operator-agent-metrics")):
        cp.kubectl("get", kind, name, "-n", SYSTEM_NS)
    cp.kubectl("get", "validatingadmissionpolicy", "lvs-operator-agent-own-nodeplan")
    assert "virtualservices.lvs.dev" in cp.kubectl("get", "crd", "-o", "name").stdout

    install(cp, {"agent": {"intervalSeconds": 3}})
    ds = json.loads(cp.kubectl("get", "daemonset", "lvs-operator-agent", "-n", SYSTEM_NS,
                               "-o", "json").stdout)
    assert "--interval=3" in container(ds)["args"]

    # The README's upgrade path, verbatim: CRDs first (Helm never updates them), then upgrade.
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    helm(cp, "upgrade", "lvs-operator", str(CHART), "-n", SYSTEM_NS, "--reuse-values")
    status = json.loads(helm(cp, "status", "lvs-operator", "-n", SYSTEM_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    ds = json.loads(cp.kubectl("get", "daemonset", "lvs-operator-agent", "-n", SYSTEM_NS,
                               "-o", "json").stdout)
    assert "--interval=3" in container(ds)["args"]  # --reuse-values kept the user's values


@pytest.fixture
def two_nodes(installed: LocalControlPlane) -> Iterator[tuple[str, str]]:
    """Nodes chart-n1 and chart-n2 with a NodePlan each (as the operator would write them)."""
    cp = installed
    nodes = ("chart-n1", "chart-n2")
    docs: list[dict[str, Any]] = []
    for n in nodes:
        docs.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
        docs.append({"apiVersion": "lvs.dev/v1alpha1", "kind": "NodePlan", "metadata": {"name": n},
                     "spec": {"formatVersion": 1, "node": n, "plan": {}, "shards": []}})
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        yield nodes
    finally:
        for n in nodes:
            cp.kubectl("delete", "nodeplan", n, "--ignore-not-found")
            cp.kubectl("delete", "pod", "-n", SYSTEM_NS, f"lvs-operator-agent-{n}",
                       "--ignore-not-found", "--wait=false")
            cp.kubectl("delete", "node", n, "--ignore-not-found")


def _as(cp: LocalControlPlane, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(*args, kubeconfig=kubeconfig, check=False)


def test_agent_identity_writes_only_its_own_nodeplan_status(
        installed: LocalControlPlane, two_nodes: tuple[str, str]) -> None:
    cp = installed
    mine, other = two_nodes
    kc = agent_kubeconfig(cp, mine)
    who = _as(cp, kc, "auth", "whoami", "-o", "json")
    extra = json.loads(who.stdout)["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/node-name"] == [mine]
    status = json.dumps({"status": {"agent": "lvs-agent test"}})

    ok = _as(cp, kc, "patch", "nodeplan", mine, "--subresource=status", "--type=merge",
             "-p", status)
    assert ok.returncode == 0, ok.stderr
    refused = _as(cp, kc, "patch", "nodeplan", other, "--subresource=status", "--type=merge",
                  "-p", status)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr
    assert f"the lvs agent on node {mine} may write only nodeplans/status of {mine}, " \
           f"not nodeplans/status of {other}" in refused.stderr
    # The plans themselves, the shards and anything else are the operator's (RBAC).
    for args in (("patch", "nodeplan", mine, "--type=merge", "-p", '{"spec":{"node":"x"}}'),
                 ("delete", "nodeplan", other),
                 ("create", "secret", "generic", "stolen", "-n", SYSTEM_NS,
                  "--from-literal=a=b"),
                 ("get", "secrets", "-n", SYSTEM_NS),
                 ("get", "secrets", "-n", "kube-system"),
                 ("patch", "node", mine, "-p", '{"metadata":{"labels":{"x":"y"}}}'),
                 ("get", "virtualservices", "-A")):
        proc = _as(cp, kc, *args)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (args, proc.stderr)
    assert _as(cp, kc, "get", "nodeplan", mine).returncode == 0  # it reads what it consumes


def test_agent_reads_exactly_the_vrrp_auth_secrets_the_values_name(
        installed: LocalControlPlane, two_nodes: tuple[str, str]) -> None:
    """The agent's own Secret reader (agent/main.py), under the DaemonSet's identity: the
    named Secret is read, its neighbour is refused with a message saying how to grant it."""
    cp = installed
    cp.kubectl("create", "namespace", "vrrp-shop")
    try:
        for name, password in (("vrrp-pass", "s3cret-1"), ("not-granted", "s3cret-2")):
            cp.kubectl("create", "secret", "generic", name, "-n", "vrrp-shop",
                       f"--from-literal=password={password}")
        install(cp, {"agent": {"vrrpAuthSecrets": {"vrrp-shop": ["vrrp-pass", "absent"]}}})
        kc = agent_kubeconfig(cp, two_nodes[0])
        read = vrrp_password_reader(KubeAPI(load_credentials(kc)))
        assert read("vrrp-shop/vrrp-pass") == "s3cret-1"
        assert read("vrrp-shop/absent") is None  # granted, not there: "missing", not "refused"
        with pytest.raises(ValueError) as refused:
            read("vrrp-shop/not-granted")
        assert "403" in str(refused.value)
        assert "--set agent.vrrpAuthSecrets.vrrp-shop={not-granted}" in str(refused.value)
        for args in (("get", "secrets", "-n", "vrrp-shop"), ("get", "secrets", "-n", SYSTEM_NS)):
            proc = _as(cp, kc, *args)
            assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (args, proc.stderr)
    finally:
        install(cp)
        cp.kubectl("delete", "namespace", "vrrp-shop", "--wait=false")


def test_agent_token_not_bound_to_a_node_writes_nothing(
        installed: LocalControlPlane, two_nodes: tuple[str, str]) -> None:
    cp = installed
    kc = cp.service_account_kubeconfig(SYSTEM_NS, AGENT_SA, create=False)
    proc = _as(cp, kc, "patch", "nodeplan", two_nodes[0], "--subresource=status",
               "--type=merge", "-p", '{"status":{"agent":"x"}}')
    assert proc.returncode != 0
    assert "this token names no node: run the agent in its DaemonSet pod" in proc.stderr


def test_operator_identity_has_no_secrets_and_no_node_writes(installed: LocalControlPlane) -> None:
    cp = installed
    kc = cp.service_account_kubeconfig(SYSTEM_NS, OPERATOR_SA, create=False)
    node = json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "chart-x"}})
    for args, stdin in ((("get", "secrets", "-A"), None),
                        (("create", "configmap", "x", "-n", SYSTEM_NS), None),
                        (("create", "-f", "-"), node),
                        (("delete", "service", "kubernetes", "-n", "default"), None),
                        (("get", "leases", "-n", "default"), None)):
        proc = cp.kubectl(*args, kubeconfig=kc, check=False, input=stdin)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (args, proc.stderr)
    can = _as(cp, kc, "auth", "can-i", "update", "leases", "-n", SYSTEM_NS)
    assert can.stdout.strip() == "yes"  # its leader-election Lease, in its own namespace


# --------------------------------------------------------------------------- Pod Security

# The agent's documented exceptions to "baseline" (README, Security), as the PodSecurity
# admission plugin names them. Nothing else may appear.
AGENT_BASELINE_EXCEPTIONS = {
    "host namespaces": "hostNetwork=true",
    "non-default capabilities": '"NET_ADMIN", "NET_RAW"',
    "hostPath volumes": '"proc-sys-net", "state", "xtables-lock"',
}


def _pod_of(workload: dict[str, Any]) -> dict[str, Any]:
    template = workload["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": workload["metadata"]["name"],
                         "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


@pytest.fixture(scope="module")
def pss_namespaces(installed: LocalControlPlane) -> Iterator[dict[str, str]]:
    cp = installed
    names = {level: f"pss-{level}" for level in ("baseline", "restricted")}
    for level, ns in names.items():
        cp.kubectl("create", "namespace", ns)
        cp.kubectl("label", "namespace", ns, f"pod-security.kubernetes.io/enforce={level}")
    yield names
    for ns in names.values():
        cp.kubectl("delete", "namespace", ns, "--wait=false")


def _admit(cp: LocalControlPlane, namespace: str, pod: dict[str, Any]) -> str:
    """'' if the API server admits the pod (server-side dry run), else its refusal."""
    try:
        cp.kubectl("create", "-n", namespace, "--dry-run=server", "-f", "-",
                   input=json.dumps(pod))
    except KubectlError as exc:
        return exc.stderr
    return ""


def _violations(refusal: str) -> dict[str, str]:
    """'violates PodSecurity "baseline:latest": a (x, y), b (z)' -> {a: "x, y", b: "z"}."""
    head, sep, listed = refusal.partition(':latest":')
    assert sep and "violates PodSecurity" in head, refusal
    found: dict[str, str] = {}
    name, detail, depth = "", "", 0
    for ch in listed.strip():
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                found[name.strip(" ,")] = detail
                name, detail = "", ""
                continue
        if depth:
            detail += ch
        else:
            name += ch
    return found


def test_operator_pod_meets_the_restricted_standard(installed: LocalControlPlane,
                                                    pss_namespaces: dict[str, str]) -> None:
    operator = one(render(installed, {"operator": {"replicas": 2}}), "Deployment")
    assert _admit(installed, pss_namespaces["restricted"], _pod_of(operator)) == ""


def test_agent_pod_breaks_baseline_only_where_documented(installed: LocalControlPlane,
                                                         pss_namespaces: dict[str, str]) -> None:
    cp = installed
    agent = _pod_of(one(render(cp, {}), "DaemonSet"))
    refusal = _admit(cp, pss_namespaces["baseline"], agent)
    assert "violates PodSecurity \"baseline:latest\"" in refusal, refusal
    found = _violations(refusal)
    assert set(found) == set(AGENT_BASELINE_EXCEPTIONS), refusal
    for check, detail in AGENT_BASELINE_EXCEPTIONS.items():
        assert detail in found[check], (check, found[check])

    # Without exactly those, the same pod is a baseline pod: nothing else was hiding.
    spec = agent["spec"]
    spec["hostNetwork"] = False
    del spec["containers"][0]["securityContext"]["capabilities"]["add"]
    spec["volumes"] = [v if "hostPath" not in v else {"name": v["name"], "emptyDir": {}}
                       for v in spec["volumes"]]
    assert _admit(cp, pss_namespaces["baseline"], agent) == ""
    assert not spec["containers"][0]["securityContext"].get("privileged", False)
