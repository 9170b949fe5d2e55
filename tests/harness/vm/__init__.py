"""The `vm` test tier's harness: real IPVS in Debian's kernel under qemu.

The host kernel has no IPVS, so tests that need it run inside a VM that boots Debian's stock
6.1 kernel with the host's / shared read-only over 9p: the same Python, venv and checkout.

    python -m tests.harness.vm prepare            # download/build/cache only
    python -m tests.harness.vm run -- CMD ARGS    # boot, run CMD as root, exit with its status

From Python: ``run_in_vm(["python", "-m", "pytest", "tests/vm"]) -> int``. Inside the guest
LVS_IN_VM=1, LVS_VM_OUTDIR (a writable share) and LVS_VM_MODULES_DIR are set.

To drive a VM that stays up from host-side code (commands, background processes, files):
``with GuestVM(forwards=[(6443, port)]) as vm: vm.run([...])`` (see guest.py).
"""

from ._image import VmImage, VmSetupError, cache_root, prepare
from ._run import (
    EXIT_HARNESS,
    EXIT_TIMEOUT,
    GUEST_MODULES_DIR,
    GUEST_OUTDIR,
    VmRun,
    parse_forward,
    run,
    run_in_vm,
)
from .guest import CTL_GUEST_PORT, GuestError, GuestVM

__all__ = [
    "CTL_GUEST_PORT",
    "EXIT_HARNESS",
    "EXIT_TIMEOUT",
    "GUEST_MODULES_DIR",
    "GUEST_OUTDIR",
    "GuestError",
    "GuestVM",
    "VmImage",
    "VmRun",
    "VmSetupError",
    "cache_root",
    "parse_forward",
    "prepare",
    "run",
    "run_in_vm",
]
