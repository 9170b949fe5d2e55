"""Entry point of `lvs-agent`. The kernel reconciler arrives with the kernel work; until then
this says so plainly instead of pretending to run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lvs-agent",
        description="Per-node agent: programs IPVS, addresses, ipsets and sysctls from a plan.",
    )
    parser.add_argument("--node", help="this node's name")
    parser.add_argument("--plan", help="a plan file (from `lvsctl plan --node NAME -f ...`)")
    parser.parse_args(argv)
    print(
        "lvs-agent: the kernel reconciler is not built yet; `lvsctl plan --format ipvsadm` "
        "prints the commands it will apply",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
