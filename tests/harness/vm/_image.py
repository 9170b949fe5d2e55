"""Everything the VM needs before it boots: host packages, Debian's kernel, a tiny initramfs.

The host kernel has no IPVS, so the `vm` tier boots Debian's stock 6.1 kernel under qemu.
All of it is cached under ``${LVS_CACHE:-~/.cache/lvs-operator}/vm/<kernel-version>/`` so only
the first run on a machine pays for the download (about 70 MB) and the unpacking.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..waiting import file_lock

HERE = Path(__file__).resolve().parent

# Debian packages the harness itself needs on the host (checked with dpkg -s first).
HOST_PACKAGES = (
    "qemu-system-x86",  # the emulator
    "busybox-static",  # PID 1 inside the initramfs, and the guestfwd relay (`busybox nc`)
    "kmod",  # depmod/modprobe for the Debian kernel's modules (host and guest)
    "ipvsadm",  # the real userland, run inside the guest
    "ipset",
    "iptables",
    "iproute2",
    "keepalived",  # VRRP mode: the agent runs the host's keepalived (tests/vm/test_vrrp.py)
)

# Loaded into the initramfs: what it takes to mount the host's / over virtio 9p.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

# Preloaded in the guest so tests never depend on module autoloading.
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh",
                   "fo", "ovf")
PRELOAD_MODULES = (
    "ip_vs",
    *(f"ip_vs_{s}" for s in IPVS_SCHEDULERS), "ip_vs_pe_sip",
    "ipip", "ip_gre", "fou", "veth", "dummy", "bridge",
    "ip_set", "ip_set_*",  # every ipset type the package ships
    # xt_mark carries both the mark match and the MARK target in 6.1 (there is no xt_MARK)
    "xt_set", "xt_mark", "xt_ipvs", "xt_multiport", "xt_conntrack", "xt_comment",
    "xt_tcpudp", "xt_nat", "nf_conntrack", "nf_nat", "xt_MASQUERADE",
    "ip_tables", "iptable_filter", "iptable_mangle", "iptable_nat",
    "ip6_tables", "ip6table_mangle", "ip6table_nat",
    # Debian's `iptables` is iptables-nft: nf_tables plus the xt compatibility layer.
    "nf_tables", "nft_compat", "nft_chain_nat",
)
NET_MODULES = ("virtio_net",)  # only when --forward asks for the user-mode NIC

PACKAGE_RE = re.compile(r"^linux-image-(6\.1\.0-(\d+)-amd64)$")


def log(msg: str) -> None:
    """Progress goes to stderr so the command's own output on stdout stays clean."""
    print(f">> vm: {msg}", file=sys.stderr, flush=True)


class VmSetupError(RuntimeError):
    """Preparing the VM failed; the message says what to do."""


@dataclass(frozen=True)
class VmImage:
    """A ready-to-boot kernel, its initramfs and its unpacked module tree."""

    kernel_version: str  # e.g. 6.1.0-56-amd64
    kernel: Path  # the extracted vmlinux (direct PVH boot), else the package's vmlinuz
    initramfs: Path
    modules_root: Path  # package root: modules are under lib/modules/<version>/
    preload: tuple[str, ...]  # modules that exist in this kernel, in load order
    net_modules: tuple[str, ...]


def cache_root() -> Path:
    """The cache lives outside the repo and survives `git clean`."""
    base = os.environ.get("LVS_CACHE") or str(Path.home() / ".cache" / "lvs-operator")
    return Path(base) / "vm"


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         quiet: bool = False) -> None:
    """Run a setup step; a quiet one shows its output only when it fails (apt is chatty)."""
    if not quiet:
        subprocess.run(argv, check=True, cwd=cwd, env=env)
        return
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout)
        raise subprocess.CalledProcessError(done.returncode, argv)


def _dpkg_installed(pkg: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", pkg],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0 and out.stdout.strip().endswith(" installed")


_apt_updated = False


def _apt_update() -> None:
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        _run(["apt-get", "update", "-qq"], quiet=True)
        _apt_updated = True


def ensure_host_packages() -> None:
    """Install whatever of HOST_PACKAGES is missing (a warm machine installs nothing)."""
    missing = [p for p in HOST_PACKAGES if not _dpkg_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise VmSetupError(f"missing Debian packages {missing}; run as root or install them")
    _apt_update()
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
         env=env, quiet=True)


APT_LISTS = Path("/var/lib/apt/lists")


def _newest_kernel_in_apt() -> str | None:
    """apt-cache search takes most of a second: remember its answer until apt's lists change."""
    memo = cache_root() / ".apt-choice"
    try:
        stamp = str(APT_LISTS.stat().st_mtime_ns)
        cached_stamp, cached_version = memo.read_text().split()
        if cached_stamp == stamp:
            return cached_version
    except (OSError, ValueError):
        pass
    version = _search_apt()
    if version is not None:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(f"{APT_LISTS.stat().st_mtime_ns} {version}\n")
    return version


def _search_apt() -> str | None:
    pattern = r"^linux-image-6\.1\.0-[0-9]+-amd64$"
    out = subprocess.run(["apt-cache", "search", "--names-only", pattern],
                         capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        m = PACKAGE_RE.match(line.split(" ", 1)[0])
        if m:
            found.append((int(m.group(2)), m.group(1)))
    return max(found)[1] if found else None


def _cached_versions() -> list[str]:
    root = cache_root()
    if not root.is_dir():
        return []
    ready = [d.name for d in root.iterdir() if (d / "root" / ".ready").exists()]
    return sorted(ready, key=lambda v: int(v.split("-")[1]) if v.count("-") >= 2 else 0)


def choose_kernel_version() -> str:
    """LVS_VM_KERNEL wins; else the newest 6.1 kernel apt knows; else the newest cached one."""
    pinned = os.environ.get("LVS_VM_KERNEL")
    if pinned:
        return pinned
    version = _newest_kernel_in_apt()
    if version is None:
        cached = _cached_versions()
        if cached:  # no apt lists (fresh container): a cached kernel is good enough
            return cached[-1]
        _apt_update()
        version = _newest_kernel_in_apt()
    if version is None:
        raise VmSetupError("apt knows no linux-image-6.1.0-*-amd64 package (is this Debian 12?)")
    return version


def _unpack_kernel(version: str, dest: Path) -> None:
    """apt-get download + dpkg-deb -x + depmod, into a temp dir renamed into place at the end."""
    pkg = f"linux-image-{version}"
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        log(f"downloading {pkg} (about 70 MB)")
        t0 = time.monotonic()
        dl = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg]
        try:
            _run(dl, cwd=tmp, quiet=True)
        except subprocess.CalledProcessError:
            _apt_update()  # stale lists name a version the mirror no longer has
            _run(dl, cwd=tmp, quiet=True)
        (deb,) = tmp.glob("*.deb")
        log(f"downloaded {deb.name} ({deb.stat().st_size // 2**20} MB, "
            f"{time.monotonic() - t0:.1f} s); unpacking")
        tree = tmp / "root"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        deb.unlink()
        log(f"depmod {version}")
        _run(["depmod", "-b", str(tree), version])
        (tree / ".ready").touch()
        if dest.exists():
            shutil.rmtree(dest)
        tree.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _show_depends(tree: Path, version: str, module: str) -> list[Path] | None:
    """Module files to insmod, dependencies first; None when the kernel has no such module."""
    out = subprocess.run(["modprobe", "-d", str(tree), "-S", version, "--show-depends", module],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    return [Path(line.split()[1]) for line in out.stdout.splitlines()
            if line.startswith("insmod ")]


def _resolve_preload(tree: Path, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Expand globs; split PRELOAD_MODULES into (present, missing in this kernel)."""
    kdir = tree / "lib" / "modules" / version / "kernel"
    names: list[str] = []
    missing: list[str] = []
    for name in PRELOAD_MODULES:
        if "*" in name:
            names += sorted(p.name.removesuffix(".ko") for p in kdir.rglob(f"{name}.ko"))
        elif _show_depends(tree, version, name) is not None:
            names.append(name)
        else:
            missing.append(name)
    return tuple(dict.fromkeys(names)), tuple(missing)


# --- initramfs --------------------------------------------------------------------------------

def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as initramfs); entries: name, mode, data,
    rdev. Written here so the build is byte-for-byte reproducible and needs no cpio binary."""
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev),
                  len(raw), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        pad4()
        out += data
        pad4()
    return bytes(out)


SIG_MAGIC = b"~Module signature appended~\n"


def _strip_signature(data: bytes) -> bytes:
    """Checking a module's signature (SHA-256 + RSA) costs ~20 ms of emulated CPU per module
    under TCG; unsigned modules load at once (the kernel only notes a taint)."""
    if not data.endswith(SIG_MAGIC):
        return data
    sig_len = int.from_bytes(data[-len(SIG_MAGIC) - 4:-len(SIG_MAGIC)], "big")
    return data[: len(data) - len(SIG_MAGIC) - 12 - sig_len]


def _is_static_elf(path: str) -> bool:
    """True for an ELF binary without a program interpreter (it runs with no libraries)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(int.from_bytes(table[i:i + 4], "little") != pt_interp
               for i in range(0, len(table), phentsize))


def static_busybox() -> str:
    """The initramfs's PID 1 must not need libraries: busybox-static, not busybox."""
    for candidate in ("/bin/busybox", shutil.which("busybox")):
        if candidate and _is_static_elf(candidate):
            return candidate
    raise VmSetupError("no static busybox found: apt-get install busybox-static")


def _build_initramfs(tree: Path, version: str, preload: tuple[str, ...], dest: Path) -> None:
    busybox = static_busybox()
    entries: list[tuple[str, int, bytes, int]] = []
    for d in ("bin", "dev", "proc", "sys", "newroot", "modules", "sbin", "usr", "usr/bin",
              "usr/sbin"):
        entries.append((d, 0o40755, b"", 0))
    entries.append(("dev/console", 0o20600, b"", os.makedev(5, 1)))
    entries.append(("bin/busybox", 0o100755, Path(busybox).read_bytes(), 0))
    entries.append(("init", 0o100755, (HERE / "init.sh").read_bytes(), 0))
    # boot.order must load (9p); preload.order is best effort, warned about by init.sh.
    seen: set[str] = set()
    lists = (("boot", INITRAMFS_MODULES), ("preload", preload), ("net", NET_MODULES))
    for list_name, modules in lists:
        order: list[str] = []
        for module in modules:
            deps = _show_depends(tree, version, module)
            if deps is None:
                raise VmSetupError(f"{version} has no module {module}")
            for ko in deps:
                if ko.name not in seen:
                    seen.add(ko.name)
                    order.append(ko.name)
                    data = _strip_signature(ko.read_bytes())
                    entries.append((f"modules/{ko.name}", 0o100644, data, 0))
        text = "".join(f"{n}\n" for n in order).encode()
        entries.append((f"modules/{list_name}.order", 0o100644, text, 0))
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(_cpio_newc(entries))
    tmp.rename(dest)


def _initramfs_key(version: str, preload: tuple[str, ...]) -> str:
    """Rebuild when init.sh, the module list or busybox changes."""
    h = hashlib.sha256()
    h.update(version.encode())
    h.update((HERE / "init.sh").read_bytes())
    h.update(repr((INITRAMFS_MODULES, preload, NET_MODULES)).encode())
    st = os.stat(static_busybox())
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _extract_vmlinux(bzimage: Path, config: Path, dest: Path) -> bool:
    """Unpack the ELF kernel inside the bzImage so qemu can boot it directly (PVH entry).

    That skips the firmware's real-mode path and the in-guest XZ decompression, which take
    2-3 s under TCG. False (boot the bzImage) when this kernel cannot be booted that way.
    """
    if "CONFIG_PVH=y" not in config.read_text():
        return False
    blob = bzimage.read_bytes()
    start = blob.find(b"\xfd7zXZ\x00")
    if start < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob[start:])
    except lzma.LZMAError:
        return False
    if not elf.startswith(b"\x7fELF"):
        return False
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.rename(dest)
    return True


def prepare() -> VmImage:
    """Install, download and build whatever is missing; cheap (well under a second) when warm."""
    with file_lock(cache_root() / ".lock"):
        ensure_host_packages()
        version = choose_kernel_version()
        vdir = cache_root() / version
        tree = vdir / "root"
        if not (tree / ".ready").exists():
            vdir.mkdir(parents=True, exist_ok=True)
            _unpack_kernel(version, tree)
        preload_key = hashlib.sha256(repr(("v2", PRELOAD_MODULES)).encode()).hexdigest()[:12]
        preload_file = vdir / f"preload-{preload_key}"
        if not preload_file.exists():
            for stale in vdir.glob("preload-*"):
                stale.unlink()
            present, absent = _resolve_preload(tree, version)
            preload_file.write_text("".join(f"{m}\n" for m in present)
                                    + "".join(f"-{m}\n" for m in absent))
        lines = preload_file.read_text().split()
        preload = tuple(m for m in lines if not m.startswith("-"))
        missing = tuple(m[1:] for m in lines if m.startswith("-"))
        initramfs = vdir / f"initramfs-{_initramfs_key(version, preload)}.cpio"
        if not initramfs.exists():
            log(f"building initramfs {initramfs.name}")
            _build_initramfs(tree, version, preload, initramfs)
            # Keep a few older ones: a VM started a moment ago may still be reading one.
            builds = sorted(vdir.glob("initramfs-*.cpio"), key=lambda p: p.stat().st_mtime)
            for old in builds[:-3]:
                old.unlink()
        kernel = tree / "boot" / f"vmlinuz-{version}"
        vmlinux, no_pvh = vdir / "vmlinux", vdir / "vmlinux.unusable"
        if not vmlinux.exists() and not no_pvh.exists() and os.environ.get("LVS_VM_PVH") != "0":
            log("extracting vmlinux for a direct (PVH) boot")
            if not _extract_vmlinux(kernel, tree / "boot" / f"config-{version}", vmlinux):
                no_pvh.touch()
        if vmlinux.exists() and os.environ.get("LVS_VM_PVH") != "0":
            kernel = vmlinux
    if missing:
        log(f"warning: not in {version}, so not preloaded: {' '.join(missing)}"
            + (" (xt_mark carries the MARK target)" if "xt_MARK" in missing else ""))
    return VmImage(
        kernel_version=version,
        kernel=kernel,
        initramfs=initramfs,
        modules_root=tree,
        preload=preload,
        net_modules=NET_MODULES,
    )


_REPO = Path(__file__).resolve().parents[3]


def byte_compile_project() -> None:
    """Write the .pyc files of this checkout before a guest starts. The guest sees the host's
    tree read-only and cannot cache bytecode itself, so without them every Python process in
    it compiles the project from source again: 2-3 s more per agent start under TCG. A warm
    tree costs a stat per file."""
    import compileall

    for folder in ("operator", "tests", "bench"):
        if (_REPO / folder).is_dir():
            compileall.compile_dir(_REPO / folder, quiet=1)
