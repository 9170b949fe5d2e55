"""Boot the VM once, run one command in it, stream its output, return its exit status.

The guest sees the host's / read-only over 9p and chroots into it, so the host's Python, venv
and checkout work unchanged. Per-run data (the command, its environment, the exit status) goes
through a small read-write "control" share; results go through a second one (LVS_VM_OUTDIR).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ._image import VmImage, byte_compile_project, log, prepare, static_busybox

GUEST_DIR = "/run/lvs-vm"  # where init.sh mounts the shares and helpers, inside the guest
GUEST_OUTDIR = f"{GUEST_DIR}/out"
GUEST_MODULES_DIR = f"{GUEST_DIR}/modules"
FORWARD_ADDR = "10.0.2.100"  # qemu user-mode guestfwd address; nothing else is reachable

EXIT_TIMEOUT = 124  # like timeout(1)
EXIT_HARNESS = 125  # the VM could not run the command at all (like `docker run`)

# Kernel command line. `mitigations=off` matters under TCG: page-table isolation would flush
# the emulated TLB on every syscall. loglevel=3 keeps routine messages off the console.
KERNEL_CMDLINE = (
    "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off random.trust_cpu=on "
    "8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp rdinit=/init"
)


@dataclass
class VmRun:
    """What happened in one VM run; timings are seconds since qemu started."""

    status: int
    boot_s: float | None = None  # qemu start -> the command starts in the guest
    total_s: float = 0.0
    timed_out: bool = False
    console_tail: list[str] = field(default_factory=list)


class ConsoleFilter:
    """Splits the guest console into boot noise, the command's output and the exit marker.

    The command's bytes go to `out` as they arrive; only a possible start of the exit marker
    (and a trailing newline, which may be the one init.sh prints before it) is held back.
    """

    def __init__(self, nonce: str, out: BinaryIO, verbose: bool = False) -> None:
        self.start = f"@@LVS-VM-START-{nonce}@@".encode()
        self.end = f"\n@@LVS-VM-EXIT-{nonce}@@".encode()
        self.out = out
        self.verbose = verbose
        self.phase = "boot"  # boot -> command -> done
        self.status: int | None = None
        self.started_at: float | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self._buf = b""
        self.t0 = time.monotonic()

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self.phase == "boot":
            self._boot_lines()
        if self.phase == "command":
            self._command_bytes()
        if self.phase == "done":
            self._buf = b""

    def _boot_lines(self) -> None:
        while self.phase == "boot" and b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            line = raw.rstrip(b"\r")
            text = line.decode(errors="replace")
            if line == self.start:
                self.phase = "command"
                self.started_at = time.monotonic()
            elif line.startswith(b"@@LVS-VM-FAILED@@"):
                self.status = int(line.split()[-1])
                self.phase = "done"
            elif line.startswith(b"lvs-vm:"):
                print(f">> vm: guest: {text[7:].strip()}", file=sys.stderr, flush=True)
                self.tail.append(text)
            else:
                self.tail.append(text)
                if self.verbose:
                    elapsed = time.monotonic() - self.t0
                    print(f"   |{elapsed:6.2f} {text}", file=sys.stderr, flush=True)

    def _command_bytes(self) -> None:
        buf = self._buf.replace(b"\r\n", b"\n")  # the serial console turns \n into \r\n
        idx = buf.find(self.end)
        if idx >= 0:
            rest = buf[idx + len(self.end):]
            if b"\n" not in rest:  # wait for the whole marker line
                self._emit(buf[:idx])
                self._buf = buf[idx:]
                return
            self._emit(buf[:idx])
            m = re.match(rb"\s*(\d+)", rest)
            self.status = int(m.group(1)) if m else None
            self.phase = "done"
            return
        hold = 1 if buf.endswith(b"\r") else 0
        for k in range(min(len(buf), len(self.end)), 0, -1):
            if buf.endswith(self.end[:k]):
                hold = max(hold, k)
                break
        self._emit(buf[: len(buf) - hold])
        self._buf = buf[len(buf) - hold:]

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.out.flush()


def _accel_args() -> list[str]:
    """TCG unless LVS_VM_ACCEL=kvm: here /dev/kvm exists but hangs or aborts (VM-FACTS.md)."""
    if os.environ.get("LVS_VM_ACCEL", "tcg") == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # -cpu max: with the default TCG model a static busybox applet segfaulted.
    return ["-accel", "tcg", "-cpu", "max"]


def _virtfs(path: Path | str, tag: str, readonly: bool) -> list[str]:
    opts = [f"local,path={str(path).replace(',', ',,')}", f"mount_tag={tag}",
            "security_model=none", "multidevs=remap"]
    if readonly:
        opts.append("readonly=on")
    return ["-virtfs", ",".join(opts)]


def parse_forward(spec: str) -> tuple[int, int]:
    """'GUESTPORT:HOSTPORT' -> (guest, host); both must be TCP ports."""
    guest, sep, host = spec.partition(":")
    try:
        g, h = int(guest), int(host)
    except ValueError:
        g = h = 0
    if not sep or not (0 < g < 65536 and 0 < h < 65536):
        raise ValueError(f"--forward wants GUESTPORT:HOSTPORT, got {spec!r}")
    return g, h


def qemu_argv(image: VmImage, ctl: Path, outdir: Path, *, memory_mb: int, cpus: int,
              forwards: Sequence[tuple[int, int]]) -> list[str]:
    """The qemu command line (no terminal, no monitor, no network unless forwards are asked)."""
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-no-reboot",
        *_accel_args(), "-smp", str(cpus), "-m", str(memory_mb),
        "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
        "-append", f"{KERNEL_CMDLINE} {os.environ.get('LVS_VM_APPEND', '')}".strip(),
        *_virtfs("/", "hostroot", readonly=True),
        *_virtfs(ctl, "lvsctl", readonly=False),
        *_virtfs(outdir, "lvsout", readonly=False),
    ]
    argv += shlex.split(os.environ.get("LVS_VM_QEMU_EXTRA", ""))  # escape hatch for debugging
    if forwards:
        busybox = static_busybox()
        # The cmd: form relays every connection; `tcp:127.0.0.1:PORT` carries only the first.
        # slirp gives the command the connection as stdin, stdout AND stderr: nc's "can't
        # connect" (host port down) would reach the guest's client as bytes of the stream
        # (a TLS client then reports WRONG_VERSION_NUMBER), so stderr goes to /dev/null.
        fwd = [f"guestfwd=tcp:{FORWARD_ADDR}:{g}-cmd:{busybox} sh -c "
               f"'exec {busybox} nc 127.0.0.1 {h} 2>/dev/null'"
               for g, h in forwards]
        argv += ["-nic", ",".join(["user", "model=virtio-net-pci", "restrict=on", *fwd])]
    else:
        argv += ["-nic", "none"]
    return argv


def guest_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The command's whole environment: a clean one, not the host's, plus LVS_* and `env`."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if d not in path.split(":"):
            path += f":{d}"
    result = {k: v for k, v in os.environ.items() if k.startswith("LVS_")}
    result.update({
        "PATH": f"{GUEST_DIR}/bin:{path}",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": os.environ.get("TERM", "dumb") if sys.stdout.isatty() else "dumb",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LVS_IN_VM": "1",
        "LVS_VM_MODULES_DIR": GUEST_MODULES_DIR,
        "LVS_VM_OUTDIR": GUEST_OUTDIR,
    })
    if sys.stdout.isatty():
        result["COLUMNS"] = str(shutil.get_terminal_size().columns)
    result.update(env or {})
    return result


def _write_control(ctl: Path, image: VmImage, argv: Sequence[str], env: Mapping[str, str],
                   cwd: str, forwards: Sequence[tuple[int, int]], nonce: str) -> None:
    """The per-run files init.sh reads from the control share."""
    if not argv:
        raise ValueError("no command given")
    (ctl / "nonce").write_text(nonce)
    (ctl / "modules_root").write_text(str(image.modules_root))
    (ctl / "net").write_text(" ".join(f"{g}:{h}" for g, h in forwards))
    q = shlex.quote
    # Sourced by busybox in the initramfs: a clean environment, then the host's /bin/sh in the
    # chroot changes to `cwd` and execs the command.
    script = (f'cd "$1" || {{ echo "lvs-vm: $1 is not visible in the guest" >&2; '
              f'exit {EXIT_HARNESS}; }}; shift; exec "$@"')
    assigns = " ".join(q(f"{k}={v}") for k, v in env.items())
    words = " ".join(q(a) for a in argv)
    (ctl / "launch.sh").write_text(
        f"exec env -i {assigns} chroot /newroot /bin/sh -c {q(script)} sh {q(cwd)} {words}\n"
    )


def _pump_stderr(stream: BinaryIO) -> None:
    """qemu's own warnings, prefixed so nobody mistakes them for the command's output."""
    for raw in iter(stream.readline, b""):
        print(f">> vm: qemu: {raw.decode(errors='replace').rstrip()}", file=sys.stderr,
              flush=True)


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 900,
        memory_mb: int = 2048, cpus: int = 1, forwards: Sequence[tuple[int, int]] = (),
        outdir: str | os.PathLike[str] | None = None, cwd: str | None = None,
        verbose: bool = False, stdout: BinaryIO | None = None,
        stop: threading.Event | None = None) -> VmRun:
    """Boot a VM, run `argv` in it and report; see run_in_vm for the plain exit-status API.

    `stop`: when another thread sets it, qemu is killed within a second (a VM run in a
    background thread, as GuestVM does, needs a way out that does not wait for `timeout`).
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    for own in ("/run", "/proc", "/sys", "/dev"):
        if cwd == own or cwd.startswith(own + "/"):
            raise ValueError(f"the guest has its own {own}; run from a directory it can see "
                             f"(not {cwd})")
    image = prepare()
    byte_compile_project()
    nonce = secrets.token_hex(8)
    out = stdout or sys.stdout.buffer
    with tempfile.TemporaryDirectory(prefix="lvs-vm-") as tmp:
        ctl = Path(tmp) / "ctl"
        ctl.mkdir()
        if outdir is None:
            host_out = Path(tmp) / "out"
            host_out.mkdir()
        else:
            host_out = Path(outdir).resolve()
            host_out.mkdir(parents=True, exist_ok=True)
        _write_control(ctl, image, argv, guest_env(env), cwd, forwards, nonce)
        qargv = qemu_argv(image, ctl, host_out, memory_mb=memory_mb, cpus=cpus,
                          forwards=forwards)
        accel = "KVM" if os.environ.get("LVS_VM_ACCEL") == "kvm" else "TCG"
        log(f"booting Linux {image.kernel_version} ({accel}, {cpus} CPU, {memory_mb} MB)")
        if verbose:
            log("qemu command line: " + shlex.join(qargv))
        result = _supervise(qargv, nonce, out, timeout, verbose, stop)
        status_file = ctl / "status"
        if status_file.exists():
            with contextlib.suppress(ValueError):
                result.status = int(status_file.read_text().strip())
    return result


def _supervise(qargv: list[str], nonce: str, out: BinaryIO, timeout: float,
               verbose: bool, stop: threading.Event | None = None) -> VmRun:
    t0 = time.monotonic()
    flt = ConsoleFilter(nonce, out, verbose)
    proc = subprocess.Popen(qargv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    err_thread = threading.Thread(target=_pump_stderr, args=(proc.stderr,), daemon=True)
    err_thread.start()
    fd = proc.stdout.fileno()
    # LVS_VM_CONSOLE_LOG=FILE keeps the raw console (boot messages included) for debugging.
    raw_log_path = os.environ.get("LVS_VM_CONSOLE_LOG")
    raw_log = open(raw_log_path, "wb") if raw_log_path else None  # noqa: SIM115
    timed_out = stopped = False
    announced = False
    deadline = t0 + timeout
    try:
        while True:
            if flt.phase == "done":  # the guest only has to power off now
                deadline = min(deadline, time.monotonic() + 15)
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = flt.phase != "done"
                break
            if stop is not None and stop.is_set():
                stopped = True
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    break
                if raw_log:
                    raw_log.write(data)
                flt.feed(data)
            if flt.started_at is not None and not announced:
                announced = True
                log(f"guest up after {flt.started_at - t0:.1f} s; running the command")
    finally:
        if not (timed_out or stopped):  # EOF or an exception: give qemu a moment to exit
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err_thread.join(timeout=5)
        if raw_log:
            raw_log.close()
    total = time.monotonic() - t0
    result = VmRun(
        status=flt.status if flt.status is not None else EXIT_HARNESS,
        boot_s=None if flt.started_at is None else flt.started_at - t0,
        total_s=total,
        timed_out=timed_out,
        console_tail=list(flt.tail),
    )
    if timed_out:
        result.status = EXIT_TIMEOUT
        where = "booting" if flt.phase == "boot" else "running the command"
        log(f"TIMEOUT: no exit after {timeout:.0f} s ({where}); killed qemu")
        if flt.phase == "boot":
            _show_tail(result)
    elif stopped:
        log("stopped by the caller; killed qemu")
    elif flt.phase != "done":
        log(f"the VM stopped without reporting an exit status (qemu exit code {proc.returncode})")
        _show_tail(result)
    return result


def _show_tail(result: VmRun) -> None:
    """Boot messages are hidden unless something went wrong: then they are the clue."""
    if result.console_tail:
        log("last console lines:")
        for line in result.console_tail[-40:]:
            print(f"   | {line}", file=sys.stderr)


def run_in_vm(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 900,
              memory_mb: int = 2048, cpus: int = 1, forwards: Sequence[tuple[int, int]] = (),
              outdir: str | os.PathLike[str] | None = None, verbose: bool = False) -> int:
    """Run `argv` in a fresh VM (cwd = the current directory) and return its exit status.

    124 means the host-side timeout killed the VM, 125 that the VM never ran the command.
    """
    result = run(argv, env=env, timeout=timeout, memory_mb=memory_mb, cpus=cpus,
                 forwards=forwards, outdir=outdir, verbose=verbose)
    boot = "-" if result.boot_s is None else f"{result.boot_s:.1f} s"
    log(f"exit status {result.status} (boot {boot}, total {result.total_s:.1f} s)")
    return result.status
