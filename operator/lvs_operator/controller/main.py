"""Entry point of `lvs-operator`. The kopf handlers arrive with the cluster work; until then
this says so plainly instead of pretending to run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lvs-operator",
        description="Cluster-wide controller: compiles VirtualServices into per-node plans.",
    )
    parser.parse_args(argv)
    print(
        "lvs-operator: the Kubernetes controller is not built yet; use `lvsctl plan -f "
        "MANIFESTS` to compile manifests into node plans offline",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
