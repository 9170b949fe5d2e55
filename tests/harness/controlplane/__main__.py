"""CLI: ``python -m tests.harness.controlplane prepare | up | run -- COMMAND...``.

Why: scripts (``make demo``, CI, a person debugging) need the same control plane as the
pytest fixture without writing Python: ``prepare`` fills the binary cache, ``up`` keeps a
control plane running until Ctrl-C, ``run`` wraps one command and returns its exit status.
Logs go to stderr; stdout carries only what the caller asked for.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from .binaries import BinariesUnavailable, BuildError, cache_root, ensure_binaries
from .server import ControlPlaneError, KubectlError, LocalControlPlane


def _log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    del message


class _Stop(Exception):
    """Raised from a signal handler so that context managers clean up on SIGINT/SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _on_terminal() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def cmd_prepare(args: argparse.Namespace) -> int:
    """Fetch/build every binary and print where each one is."""
    started = time.monotonic()
    binaries = ensure_binaries(_log)
    versions = binaries.versions()
    rows = [
        ("kube-apiserver", binaries.kube_apiserver),
        ("etcd", binaries.etcd),
        ("kubectl", binaries.kubectl),
        ("helm", binaries.helm),
    ]
    print(f"cache: {cache_root()}")
    for name, path in rows:
        if path is None:
            print(f"{name:15} unavailable")
            continue
        size = Path(path).stat().st_size / (1 << 20)
        print(f"{name:15} {versions.get(name, '?'):22} {size:6.1f} MiB  {path}  "
              f"[{binaries.sources.get(name, '?')}]")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Run a control plane in the foreground until SIGINT/SIGTERM."""
    binaries = ensure_binaries(_log)  # progress always shown: a first build takes minutes
    log = _quiet if args.quiet else _log
    with LocalControlPlane(binaries, keep=args.keep or None, log=log) as cp:
        if args.write_kubeconfig:
            shutil.copyfile(cp.kubeconfig, args.write_kubeconfig)
            Path(args.write_kubeconfig).chmod(0o600)
        kubeconfig = args.write_kubeconfig or cp.kubeconfig
        print(f"export KUBECONFIG={shlex.quote(str(kubeconfig))}")
        print(f"export PATH={shlex.quote(str(cp.bin_dir))}:\"$PATH\"")
        print(f"# server {cp.server}; logs in {cp.workdir / 'logs'}; Ctrl-C stops", flush=True)
        try:
            while True:
                dead = cp.dead_process()
                if dead is not None:
                    _log(f"{dead} stopped unexpectedly\n" + cp.log_tails())
                    return 1
                time.sleep(0.5)
        except _Stop as stop:
            _log(f"{stop}: stopping")
            return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Start a control plane, run COMMAND with KUBECONFIG set, stop, return its status."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _log("run: no COMMAND given (usage: run -- COMMAND [ARGS...])")
        return 2
    binaries = ensure_binaries(_log)
    log = _quiet if args.quiet else _log
    with LocalControlPlane(binaries, keep=args.keep or None, log=log) as cp:
        env = cp.env()
        if args.apply:
            for path in args.apply:
                cp.kubectl("apply", "--server-side", "-f", path)
            if cp.kubectl("get", "crd", "-o", "name").stdout.strip():
                cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as exc:
            _log(f"cannot run {command[0]}: {exc}")
            return 127
        while True:
            try:
                status = child.wait()
                break
            except _Stop as stop:
                # Forward, then keep waiting for it to exit. A Ctrl-C typed at a terminal has
                # already reached the child (same process group): do not deliver it twice.
                if not (stop.signum == signal.SIGINT and _on_terminal()):
                    child.send_signal(stop.signum)
    return status if status >= 0 else 128 - status


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 3 means the binaries cannot be obtained on this machine."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.controlplane",
        description="Local kube-apiserver + etcd on 127.0.0.1 for the cluster test tier.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="fetch/build and cache the binaries only")
    for name, helptext in (
        ("up", "run in the foreground; print export KUBECONFIG=...; stop on Ctrl-C/SIGTERM"),
        ("run", "start, run COMMAND with KUBECONFIG set, stop, exit with its status"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--keep", action="store_true",
                       help="keep the temp dir (logs, certificates, etcd data) after stopping")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="no start/stop messages (binary download/build progress still shows)")
        if name == "up":
            p.add_argument("--write-kubeconfig", metavar="PATH",
                           help="also copy the admin kubeconfig to PATH")
        else:
            p.add_argument("--apply", action="append", metavar="PATH",
                           help="kubectl apply --server-side -f PATH before COMMAND and wait "
                                "for CRDs to be Established (repeatable, e.g. --apply crds/)")
            p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    handlers = {"prepare": cmd_prepare, "up": cmd_up, "run": cmd_run}
    try:
        return handlers[args.cmd](args)
    except BinariesUnavailable as exc:
        _log(f"binaries unavailable on this machine: {exc}")
        return 3
    except (BuildError, ControlPlaneError, KubectlError) as exc:
        _log(f"error: {exc}")
        return 1
    except _Stop as stop:
        _log(f"interrupted by {stop}")
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
