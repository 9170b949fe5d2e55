"""Command line: ``python -m tests.harness.vm {prepare,run} ...`` (see __init__.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import EXIT_HARNESS, VmSetupError, parse_forward, prepare, run_in_vm
from ._image import log


def _env_pair(spec: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env wants K=V, got {spec!r}")
    return key, value


def _forward(spec: str) -> tuple[int, int]:
    try:
        return parse_forward(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the guest command's exit status for `run`."""
    parser = argparse.ArgumentParser(prog="python -m tests.harness.vm",
                                     description="Run commands in a qemu VM with real IPVS.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="install packages, download the kernel, build the initramfs")
    r = sub.add_parser("run", help="boot a VM and run COMMAND in it (cwd = current directory)")
    r.add_argument("--memory", type=int, default=2048, metavar="MB")
    r.add_argument("--cpus", type=int, default=1, metavar="N",
                   help="vCPUs (default 1: under TCG a second one costs more than it gives)")
    r.add_argument("--timeout", type=float, default=900, metavar="SECONDS",
                   help="kill the VM after this long (exit status 124)")
    r.add_argument("--forward", type=_forward, action="extend", nargs="+", default=[],
                   metavar="GUESTPORT:HOSTPORT",
                   help="guest connections to 10.0.2.100:GUESTPORT reach host 127.0.0.1:HOSTPORT")
    r.add_argument("--env", type=_env_pair, action="append", default=[], metavar="K=V")
    r.add_argument("--outdir", metavar="DIR",
                   help="host directory shared read-write as $LVS_VM_OUTDIR in the guest")
    r.add_argument("-v", "--verbose", action="store_true", help="show the boot console")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)

    try:
        if args.action == "prepare":
            t0 = time.monotonic()
            image = prepare()
            log(f"ready: {image.kernel_version} in {time.monotonic() - t0:.1f} s "
                f"(cache {image.modules_root.parent})")
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command: run [OPTIONS] -- COMMAND [ARGS...]")
        return run_in_vm(command, env=dict(args.env), timeout=args.timeout,
                         memory_mb=args.memory, cpus=args.cpus, forwards=args.forward,
                         outdir=args.outdir, verbose=args.verbose)
    except (VmSetupError, ValueError) as e:
        log(f"error: {e}")
        return EXIT_HARNESS
    except KeyboardInterrupt:
        log("interrupted; the VM was stopped")
        return 130
    except BrokenPipeError:  # e.g. `... | head`: stop quietly, like any command would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
