"""tests/kind/kind_e2e.py where Docker is absent: everything about the kind run that can be
checked without a cluster. The manifests are valid for the CRD and compile to the IPVS table
the run then looks for; the skip/fail contract with `make kind-e2e` and the `kind` tier holds;
--dry-run runs nothing; the chart renders what the run relies on; the pins agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator.cli.lvsctl import main as lvsctl
from tests import run_tiers
from tests.harness.controlplane.binaries import KUBECTL_LAYER_VERSION, KUBECTL_MINOR, cache_root
from tests.kind import kind_e2e as e2e
from tests.unit.crd_judge import load_judge

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DOWN = (
    "#!/bin/sh\n"
    "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?' >&2\n"
    "exit 1\n"
)
DOWN_REASON = ("`docker info` failed (exit 1): Cannot connect to the Docker daemon at "
               "unix:///var/run/docker.sock. Is the docker daemon running?")


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in tests/kind/manifests/, keyed "Kind/name"."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(e2e.MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return spec["template"]["spec"] if "template" in spec else spec  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- manifests


def test_manifests_are_what_the_run_names_and_pinned() -> None:
    docs = manifests()
    assert set(docs) == {
        f"Namespace/{e2e.TEST_NAMESPACE}", f"Deployment/{e2e.BACKEND_DEPLOYMENT}",
        f"Service/{e2e.BACKEND_SERVICE}", f"VirtualService/{e2e.VIRTUAL_SERVICE}",
        f"Pod/{e2e.CLIENT_POD}",
    }
    for key, doc in docs.items():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == e2e.TEST_NAMESPACE, key
        if doc["kind"] in ("Deployment", "Pod"):
            spec = pod_spec(doc)
            # on the director: NAT replies must come back through it (manifests/backend.yaml)
            assert spec["nodeSelector"] == {e2e.DIRECTOR_LABEL: "true"}, key
            for container in spec["containers"]:
                image = container["image"]
                name, _, tag = image.rpartition(":")
                assert "/" in name and re.fullmatch(r"\d+\.\d+(\.\d+)?", tag), image
    backend = docs[f"Deployment/{e2e.BACKEND_DEPLOYMENT}"]
    assert backend["spec"]["replicas"] == e2e.BACKEND_REPLICAS
    container = pod_spec(backend)["containers"][0]
    assert container["args"] == ["netexec", f"--http-port={e2e.BACKEND_PORT}"]
    assert container["ports"] == [{"name": "http", "containerPort": e2e.BACKEND_PORT,
                                   "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/hostname"
    assert backend["spec"]["selector"]["matchLabels"] == {"app": e2e.BACKEND_DEPLOYMENT}
    client = docs[f"Pod/{e2e.CLIENT_POD}"]
    assert client["spec"]["hostNetwork"] is True
    assert "command" not in client["spec"]["containers"][0], "agnhost's default is `pause`"
    service = docs[f"Service/{e2e.BACKEND_SERVICE}"]
    assert service["spec"]["selector"] == {"app": e2e.BACKEND_DEPLOYMENT}
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_virtual_service_is_accepted_by_the_crd_as_written() -> None:
    vs = manifests()[f"VirtualService/{e2e.VIRTUAL_SERVICE}"]
    judge = load_judge(ROOT / "crds" / "virtualservices.lvs.dev.yaml")
    assert judge.validate(vs, strict=True) == []
    spec = vs["spec"]
    assert spec["address"] == e2e.VIP
    assert spec["ports"] == [{"name": "http", "port": e2e.VIP_PORT, "protocol": "TCP",
                              "targetPort": "http"}]
    assert spec["forwarding"] == {"method": "NAT"}
    assert spec["directors"]["nodeSelector"]["matchLabels"] == {e2e.DIRECTOR_LABEL: "true"}
    assert spec["backends"]["service"] == {"name": e2e.BACKEND_SERVICE}


def test_virtual_service_compiles_to_the_table_the_run_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the operator would plan for the kind cluster, given the EndpointSlice Kubernetes
    writes for the two backends (addresses from the documentation range: nothing is sent)."""
    pods = {"echo-a": "198.51.100.11", "echo-b": "198.51.100.12"}
    cluster = [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "e2e-worker", "labels": {e2e.DIRECTOR_LABEL: "true"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "e2e-worker2"}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": "e2e-control-plane", "labels": {e2e.CONTROL_PLANE_LABEL: ""}}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo-x1", "namespace": e2e.TEST_NAMESPACE,
                      "labels": {"kubernetes.io/service-name": e2e.BACKEND_SERVICE}},
         "addressType": "IPv4",
         "ports": [{"name": "http", "port": e2e.BACKEND_PORT, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "nodeName": "e2e-worker",
                        "conditions": {"ready": True, "serving": True, "terminating": False}}
                       for ip in pods.values()]},
    ]
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(cluster))
    assert lvsctl(["plan", "-f", str(e2e.MANIFESTS), "-f", str(tmp_path),
                   "--format", "ipvsadm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# node e2e-worker (director)\n")
    assert "# node e2e-worker2" not in out and "# node e2e-control-plane" not in out
    service = f"-t {e2e.VIP}:{e2e.VIP_PORT}"
    assert f"-A {service} -s rr\n" in out
    for ip in pods.values():
        assert f"-a {service} -r {ip}:{e2e.BACKEND_PORT} -m -w 1\n" in out
    # the same table as `ipvsadm -Ln` would print it passes the run's check
    listing = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        f"TCP  {e2e.VIP}:{e2e.VIP_PORT} rr\n"
        + "".join(f"  -> {ip}:{e2e.BACKEND_PORT}          Masq    1      0          0\n"
                  for ip in pods.values())
    )
    assert e2e.ipvs_problem(e2e.parse_ipvsadm(listing), list(pods.values())) is None


# ----------------------------------------------------------------------------- ipvsadm -Ln

LISTING = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.1:443 rr
  -> 172.18.0.3:6443              Masq    1      0          0
TCP  198.18.0.10:80 rr
  -> 10.244.1.2:8080              Masq    1      0          0
  -> 10.244.1.3:8080              Route   2      5          1
UDP  [2001:db8::10]:53 sh persistent 20
  -> [2001:db8::21]:53            Tunnel  1      0          0
FWM  99 rr persistent 600
  -> 198.51.100.51:0              Route   1      0          0
"""


def test_parse_ipvsadm_reads_services_and_destinations() -> None:
    services = e2e.parse_ipvsadm(LISTING)
    assert list(services) == ["TCP 10.96.0.1:443", "TCP 198.18.0.10:80",
                              "UDP [2001:db8::10]:53", "FWM 99"]
    vip = services["TCP 198.18.0.10:80"]
    assert vip.scheduler == "rr"
    assert vip.destinations == {"10.244.1.2:8080": ("Masq", 1), "10.244.1.3:8080": ("Route", 2)}
    assert services["UDP [2001:db8::10]:53"].destinations == {"[2001:db8::21]:53": ("Tunnel", 1)}
    assert e2e.parse_ipvsadm("") == {}


def test_ipvs_problem_names_what_is_missing() -> None:
    services = e2e.parse_ipvsadm(LISTING)
    assert e2e.ipvs_problem(services, ["10.244.1.2"]) is None
    assert e2e.ipvs_problem(services, ["10.244.1.2", "10.244.1.9"]) == (
        "TCP 198.18.0.10:80 lacks destination(s) 10.244.1.9:8080")
    assert e2e.ipvs_problem(services, ["10.244.1.3"]) == (
        "TCP 198.18.0.10:80: 10.244.1.3:8080 not forwarded with NAT (Masq)")
    assert e2e.ipvs_problem({}, ["10.244.1.2"]) == "no IPVS service TCP 198.18.0.10:80"


# ----------------------------------------------------------------------------- pins, config


def test_kind_config_is_one_control_plane_and_two_workers() -> None:
    config = yaml.safe_load(e2e.kind_config())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    assert all(set(n) == {"role"} for n in config["nodes"]), "kind's defaults otherwise"


def test_pins_are_exact_and_agree() -> None:
    assert re.fullmatch(r"v\d+\.\d+\.\d+", e2e.KIND_VERSION)
    assert re.fullmatch(r"h1:[A-Za-z0-9+/]{43}=", e2e.KIND_MODULE_SUM)
    match = re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+@sha256:[0-9a-f]{64}", e2e.NODE_IMAGE)
    assert match, e2e.NODE_IMAGE
    node_minor = int(match.group(1))
    kubectl_minor = int(KUBECTL_MINOR.split(".")[1])
    assert abs(node_minor - kubectl_minor) <= 1, "kubectl's supported version skew is one minor"
    chart = e2e.CHART / "Chart.yaml"
    if chart.exists():
        want = re.match(r">=\s*v?1\.(\d+)", yaml.safe_load(chart.read_text())["kubeVersion"])
        assert want and node_minor >= int(want.group(1)), "the chart's kubeVersion"


# ----------------------------------------------------------------------------- as a command


def run_script(tmp_path: Path, *args: str, tools: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """The script as `make kind-e2e` runs it, with a PATH holding only the given tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (tools or {}).items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LVS_CACHE": str(tmp_path / "cache"),
           "TMPDIR": str(tmp_path / "tmp"), "LVS_GO": str(bin_dir / "go")}
    return subprocess.run([sys.executable, "-m", "tests.kind.kind_e2e", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_skip_ok_prints_the_reason_and_exits_0(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "--skip-ok", tools={"docker": DOCKER_DOWN})
    assert proc.returncode == 0, proc.stderr
    assert f"{e2e.SKIP_PREFIX}{DOWN_REASON}\n" in proc.stdout
    match = run_tiers.KIND_SKIPPED.search(proc.stdout)
    assert match and match.group(1) == DOWN_REASON


def test_a_user_without_docker_gets_exit_3_and_the_reason(tmp_path: Path) -> None:
    proc = run_script(tmp_path, tools={"docker": DOCKER_DOWN})
    assert proc.returncode == e2e.EXIT_NO_DOCKER
    assert f"kind-e2e: cannot run without Docker: {DOWN_REASON}" in proc.stderr
    assert "SKIPPED" not in proc.stdout + proc.stderr


def test_no_docker_binary_at_all(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "--skip-ok")
    assert proc.returncode == 0
    assert f"{e2e.SKIP_PREFIX}docker is not installed (no `docker` on PATH)" in proc.stdout
    assert run_script(tmp_path).returncode == e2e.EXIT_NO_DOCKER


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    log = tmp_path / "invoked.log"
    spy = f'#!/bin/sh\necho "$0 $*" >> {log}\nexit 1\n'
    proc = run_script(tmp_path, "--dry-run", "--name", "lvs-e2e-t",
                      tools={name: spy for name in ("docker", "kind", "kubectl", "helm", "go")})
    assert proc.returncode == 0, proc.stderr
    assert not log.exists(), log.read_text()
    assert not list((tmp_path / "tmp").iterdir()), "the work directory is removed"
    assert not (tmp_path / "cache").exists(), "nothing fetched or built"
    plan = [
        f"$ docker build -t {e2e.IMAGE} {ROOT}",
        f"$ kind create cluster --name lvs-e2e-t --config {tmp_path / 'tmp'}",
        f"--image {e2e.NODE_IMAGE}",
        f"$ kind load docker-image {e2e.IMAGE} --name lvs-e2e-t",
        f"label node lvs-e2e-t-worker {e2e.DIRECTOR_LABEL}=true",
        f"$ docker exec lvs-e2e-t-worker2 ip route replace blackhole {e2e.VIP}/32",
        f"$ helm install lvs-operator {e2e.CHART}",
        "-n lvs-system --create-namespace --set image.repository=lvs-operator "
        "--set image.tag=kind-e2e --set image.pullPolicy=Never --wait --timeout 5m",
        "wait --for=condition=Programmed virtualservices.lvs.dev/echo",
        "-- ipvsadm -Ln",
        f"exec client -- curl --silent --show-error --max-time 3 http://{e2e.VIP}:80/hostname",
        "$ kind delete cluster --name lvs-e2e-t",
        "kind-e2e: DRY RUN (nothing was run)",
    ]
    positions = [proc.stdout.find(line) for line in plan]
    assert all(p >= 0 for p in positions), [s for s, p in zip(plan, positions, strict=True) if p < 0]
    assert positions == sorted(positions), "in this order"


def test_bad_cluster_name_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "--dry-run", "--name", "Not_Valid")
    assert proc.returncode == 2
    assert "bad --name" in proc.stderr


# ----------------------------------------------------------------------------- the kind tier


def fake_run(code: int, output: str, calls: list[list[str]]) -> Any:
    def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        calls.append(cmd)
        return code, output
    return run


def test_kind_tier_skipped_is_neither_passed_nor_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(run_tiers, "_run",
                        fake_run(0, f"x\n{e2e.SKIP_PREFIX}{DOWN_REASON}\n", calls))
    result = run_tiers.kind_tier()
    assert calls == [[sys.executable, "-m", "tests.kind.kind_e2e", "--skip-ok"]]
    assert (result.name, result.status, result.note) == ("kind", "skipped", DOWN_REASON)
    assert (result.passed, result.failed, result.skipped) == (0, 0, 1)
    assert run_tiers.main(["kind"]) == 0, "a skipped tier does not fail the run"
    summary = capsys.readouterr().out.split("===== summary =====")[-1]
    assert re.search(r"^kind\s+SKIPPED\s+0 passed\s+0 failed\s+1 skipped .*\(`docker info` "
                     r"failed", summary, re.MULTILINE), summary
    assert "total: 0 passed, 0 failed, 1 skipped" in summary


@pytest.mark.parametrize(("code", "output", "status"), [
    (0, "kind-e2e: PASSED in 300s\n", "passed"),
    (1, "kind-e2e: FAILED: ...\n", "failed"),
    (3, "kind-e2e: cannot run without Docker: ...\n", "failed"),
    # SKIPPED counts only with exit 0
    (1, f"{e2e.SKIP_PREFIX}something\n", "failed"),
])
def test_kind_tier_passes_or_fails_by_exit_status(
    monkeypatch: pytest.MonkeyPatch, code: int, output: str, status: str
) -> None:
    monkeypatch.setattr(run_tiers, "_run", fake_run(code, output, []))
    result = run_tiers.kind_tier()
    assert result.status == status
    assert (result.passed, result.failed, result.skipped) == (
        (1, 0, 0) if status == "passed" else (0, 1, 0))
    assert run_tiers.main(["kind"]) == (0 if status == "passed" else 1)


# ----------------------------------------------------------------------------- the chart


def local_helm() -> Path | None:
    """helm from PATH or the harness' cache; never fetched here."""
    cached = cache_root() / f"kubectl-layer-{KUBECTL_LAYER_VERSION}" / "helm"
    found = shutil.which("helm")
    if found:
        return Path(found)
    return cached if cached.is_file() and os.access(cached, os.X_OK) else None


def test_chart_renders_what_the_run_relies_on(tmp_path: Path) -> None:
    helm = local_helm()
    if not (e2e.CHART / "Chart.yaml").exists() or helm is None:
        pytest.skip("no chart or no helm here (helm is cached by the cluster tier)")
    node_version = e2e.NODE_IMAGE.split(":")[1].split("@")[0]
    env = {**os.environ, **{f"HELM_{k}_HOME": str(tmp_path / k) for k in ("CACHE", "CONFIG", "DATA")}}
    proc = subprocess.run(
        [str(helm), "template", e2e.RELEASE, str(e2e.CHART), "-n", e2e.SYSTEM_NAMESPACE,
         "--kube-version", node_version,
         "--set", f"image.repository={e2e.IMAGE_REPOSITORY}", "--set", f"image.tag={e2e.IMAGE_TAG}",
         "--set", "image.pullPolicy=Never"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    docs = {f"{d['kind']}/{d['metadata']['name']}": d
            for d in yaml.safe_load_all(proc.stdout) if d}
    operator = docs[f"Deployment/{e2e.OPERATOR_DEPLOYMENT}"]
    agent = docs[f"DaemonSet/{e2e.AGENT_DAEMONSET}"]
    for workload in (operator, agent):
        assert workload["metadata"]["namespace"] == e2e.SYSTEM_NAMESPACE
        for container in pod_spec(workload)["containers"]:
            assert container["image"] == e2e.IMAGE
            assert container["imagePullPolicy"] == "Never"
    agent_spec = pod_spec(agent)
    assert agent_spec["hostNetwork"] is True
    [agent_container] = agent_spec["containers"]  # `kubectl exec` picks it without -c
    assert agent_container["command"] == ["lvs-agent"]
    assert agent_container["securityContext"]["runAsUser"] == 0
    assert "NET_ADMIN" in agent_container["securityContext"]["capabilities"]["add"], "ipvsadm"
    selector = agent["spec"]["selector"]["matchLabels"]
    assert selector.items() <= agent["spec"]["template"]["metadata"]["labels"].items()
    assert selector.get("app.kubernetes.io/component") == "agent", "diagnostics select on it"
    assert pod_spec(operator)["containers"][0]["command"] == ["lvs-operator"]
    assert pod_spec(operator)["securityContext"]["runAsUser"] == 65532, "the image's USER"
    assert any(k.startswith("CustomResourceDefinition/") for k in docs) or (
        e2e.CHART / "crds" / "virtualservices.lvs.dev.yaml").exists(), "helm installs the CRDs"
