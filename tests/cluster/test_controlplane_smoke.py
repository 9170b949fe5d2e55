"""Smoke tests of the local control plane: real API server, CRDs, CEL, RBAC, tokens.

Why: every later cluster test (operator, agents, chart RBAC) stands on these; when one of
them fails, this file says whether the ground itself is broken.
"""

from __future__ import annotations

import json
import os
import secrets
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.harness.controlplane import KUBERNETES_VERSION, LocalControlPlane

REPO_ROOT = Path(__file__).resolve().parents[2]
# LVS_CRD_DIR lets a developer try regenerated CRDs against the real API server first.
CRD_DIR = Path(os.environ.get("LVS_CRD_DIR") or REPO_ROOT / "crds")
CRD_FILES = sorted(p for p in CRD_DIR.glob("*.y*ml") if p.is_file())
MINOR = ".".join(KUBERNETES_VERSION.split(".")[:2]) + "."


def _suffix() -> str:
    return secrets.token_hex(3)


def test_server_and_client_are_kubernetes_1_33(control_plane: LocalControlPlane) -> None:
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"].startswith(MINOR), versions
    assert (versions["serverVersion"]["major"], versions["serverVersion"]["minor"]) == ("1", "33")
    assert versions["clientVersion"]["gitVersion"].startswith(MINOR), versions
    raw = json.loads(control_plane.kubectl("get", "--raw", "/version").stdout)
    assert raw["gitVersion"] == versions["serverVersion"]["gitVersion"]


def test_server_listens_on_loopback_only(control_plane: LocalControlPlane) -> None:
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert control_plane.etcd_url.startswith("http://127.0.0.1:")


def test_configmap_create_and_read(control_plane: LocalControlPlane) -> None:
    name = f"smoke-{_suffix()}"
    control_plane.kubectl(
        "create", "configmap", name, "-n", "default", "--from-literal=greeting=hello"
    )
    try:
        got = json.loads(
            control_plane.kubectl("get", "configmap", name, "-n", "default", "-o", "json").stdout
        )
        assert got["data"] == {"greeting": "hello"}
        assert got["metadata"]["uid"]
    finally:
        control_plane.kubectl("delete", "configmap", name, "-n", "default", "--wait=false")


def _apply_crds_and_wait(control_plane: LocalControlPlane, path: Path) -> list[str]:
    """kubectl apply (server side, as big CRDs need) and wait until each CRD is Established."""
    names = [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    ]
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=lvs-cluster-tests",
        "-f", str(path),
    )
    for name in names:
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}"
        )
        crd = json.loads(control_plane.kubectl("get", f"crd/{name}", "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("NamesAccepted") == "True", conditions
        # The new resource is served: listing it across namespaces works.
        control_plane.kubectl("get", name, "-A")
    return names


@pytest.mark.parametrize(
    "crd_file",
    CRD_FILES
    or [pytest.param(None, marks=pytest.mark.skip(reason=f"no CRD YAML under {CRD_DIR} yet"))],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_project_crd_becomes_established(
    control_plane: LocalControlPlane, crd_file: Path
) -> None:
    names = _apply_crds_and_wait(control_plane, crd_file)
    assert names, f"{crd_file} holds no CustomResourceDefinition"


def test_crd_mechanism_with_cel_validation(
    control_plane: LocalControlPlane, tmp_path: Path
) -> None:
    """A tiny CRD of our own: apply, Established, CEL rule enforced, CR round trip."""
    group = f"smoke{_suffix()}.lvs.dev"
    crd = tmp_path / "widgets.yaml"
    crd.write_text(textwrap.dedent(f"""\
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata:
          name: widgets.{group}
        spec:
          group: {group}
          scope: Namespaced
          names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}}
          versions:
            - name: v1alpha1
              served: true
              storage: true
              subresources: {{status: {{}}}}
              schema:
                openAPIV3Schema:
                  type: object
                  properties:
                    spec:
                      type: object
                      required: [port]
                      x-kubernetes-validations:
                        - rule: "self.port != 22"
                          message: "port 22 is reserved"
                      properties:
                        port: {{type: integer, minimum: 1, maximum: 65535}}
        """))
    try:
        assert _apply_crds_and_wait(control_plane, crd) == [f"widgets.{group}"]
        good = {"apiVersion": f"{group}/v1alpha1", "kind": "Widget",
                "metadata": {"name": "ok", "namespace": "default"}, "spec": {"port": 80}}
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(good))
        got = json.loads(control_plane.kubectl(
            "get", f"widgets.{group}", "ok", "-n", "default", "-o", "json").stdout)
        assert got["spec"] == {"port": 80}
        bad = {**good, "metadata": {"name": "bad", "namespace": "default"}, "spec": {"port": 22}}
        proc = control_plane.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert proc.returncode != 0
        assert "port 22 is reserved" in proc.stderr
    finally:
        control_plane.kubectl("delete", "-f", str(crd), "--wait=false", check=False)


def test_rbac_denies_an_identity_without_roles(control_plane: LocalControlPlane) -> None:
    user, group = f"smoke-nobody-{_suffix()}", f"smoke-team-{_suffix()}"
    kubeconfig = control_plane.mint_kubeconfig(user, [group])

    who = json.loads(control_plane.kubectl(
        "auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == user
    assert {group, "system:authenticated"} <= set(who["status"]["userInfo"]["groups"])

    denied = control_plane.kubectl("get", "secrets", "-n", "default", kubeconfig=kubeconfig,
                                   check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr, denied.stderr
    assert f'User "{user}" cannot list resource "secrets"' in denied.stderr
    raw = control_plane.kubectl("get", "--raw", "/api/v1/namespaces/default/secrets",
                                kubeconfig=kubeconfig, check=False)
    assert raw.returncode != 0 and "Forbidden" in raw.stderr

    # Granting the group a Role opens exactly that: RBAC evaluates the minted groups.
    role = f"smoke-cm-reader-{_suffix()}"
    control_plane.kubectl("create", "role", role, "-n", "default", "--verb=get,list",
                          "--resource=configmaps")
    control_plane.kubectl("create", "rolebinding", role, "-n", "default", f"--role={role}",
                          f"--group={group}")
    try:
        control_plane.kubectl("get", "configmaps", "-n", "default", kubeconfig=kubeconfig)
        again = control_plane.kubectl("auth", "can-i", "list", "secrets", "-n", "default",
                                      kubeconfig=kubeconfig, check=False)
        assert again.stdout.strip() == "no"
    finally:
        control_plane.kubectl("delete", "rolebinding,role", role, "-n", "default",
                              check=False)


def test_service_account_token_identity(control_plane: LocalControlPlane) -> None:
    name = f"smoke-sa-{_suffix()}"
    kubeconfig = control_plane.service_account_kubeconfig("default", name, duration="10m")
    who = json.loads(control_plane.kubectl(
        "auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:default:{name}"
    denied = control_plane.kubectl("get", "secrets", kubeconfig=kubeconfig, check=False)
    assert "Forbidden" in denied.stderr, denied.stderr
    control_plane.kubectl("delete", "serviceaccount", name, "-n", "default", check=False)


def test_python_kubernetes_client_uses_the_kubeconfigs(control_plane: LocalControlPlane) -> None:
    """The operator's own client stack (kubernetes, as kopf logs in with) accepts our configs."""
    kubernetes = pytest.importorskip("kubernetes")
    api_client = kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    with api_client:
        names = {ns.metadata.name for ns in kubernetes.client.CoreV1Api(api_client)
                 .list_namespace().items}
    assert {"default", "kube-system"} <= names

    nobody = control_plane.mint_kubeconfig(f"smoke-py-{_suffix()}")
    limited = kubernetes.config.new_client_from_config(config_file=str(nobody))
    with limited, pytest.raises(kubernetes.client.ApiException) as denied:
        kubernetes.client.CoreV1Api(limited).list_namespaced_secret("default")
    assert denied.value.status == 403


def test_the_agents_own_client_uses_the_kubeconfigs(control_plane: LocalControlPlane) -> None:
    """agent/kubeapi.py over TLS against the real server: the CA from the kubeconfig, a client
    certificate (admin, and an identity with no rights), and a ServiceAccount token."""
    from lvs_operator.agent.kubeapi import KubeAPI, KubeAPIError, load_credentials

    admin = KubeAPI(load_credentials(control_plane.kubeconfig))
    listed = admin.call("GET", KubeAPI.path("api", "v1", "namespaces"), doing="listing")
    assert {"default", "kube-system"} <= {n["metadata"]["name"] for n in listed["items"]}

    nobody = KubeAPI(load_credentials(control_plane.mint_kubeconfig(f"smoke-agent-{_suffix()}")))
    with pytest.raises(KubeAPIError) as denied:
        nobody.call("GET", KubeAPI.path("api", "v1", "namespaces", "default", "secrets"),
                    doing="listing Secrets")
    assert denied.value.status == 403 and "forbidden" in str(denied.value)

    name = f"smoke-agent-{_suffix()}"
    token = KubeAPI(load_credentials(control_plane.service_account_kubeconfig("default", name)))
    who = token.call("POST", KubeAPI.path("apis", "authentication.k8s.io", "v1",
                                          "selfsubjectreviews"), doing="asking who I am",
                     body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:default:{name}"
    control_plane.kubectl("delete", "serviceaccount", name, "-n", "default", check=False)
