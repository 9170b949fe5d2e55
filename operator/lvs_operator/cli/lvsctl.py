"""lvsctl: the command-line face of lvs-operator.

`lvsctl plan -f PATH...` compiles manifests offline, exactly as the operator would, and
prints each node's plan (yaml, json, or the `ipvsadm -S -n` lines plus shell commands).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from ..api.objects import parse_manifests
from ..compiler.engine import compile_cluster
from ..compiler.plan import plan_to_dict
from ..compiler.render import render_ipvsadm
from .manifests import ManifestError, load_documents

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 1  # invalid manifests or objects with errors
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsctl",
        description="Linux Virtual Server (IPVS) managed the Kubernetes way.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser(
        "plan",
        help="compile manifests into per-node plans, offline",
        description="Compile VirtualService/RealServer manifests (with the Nodes, Services and "
        "EndpointSlices they refer to) into the kernel state of each node, as the operator "
        "would. Problems are printed to stderr; the exit status is 1 if any object is "
        "invalid or has an error.",
    )
    plan.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="manifest file or directory (repeatable; directories are read recursively)",
    )
    plan.add_argument(
        "--node",
        action="append",
        metavar="NAME",
        help="only print the plan of this node (repeatable)",
    )
    plan.add_argument(
        "--format",
        choices=("yaml", "json", "ipvsadm"),
        default="yaml",
        help="yaml/json: the plan objects agents apply; ipvsadm: what "
        "`ipvsadm -S -n` would print on each director, then shell commands for "
        "the rest (default: yaml)",
    )
    plan.add_argument("--all-nodes", action="store_true", help="include nodes whose plan is empty")
    return parser


def _plan(args: argparse.Namespace) -> int:
    try:
        docs = load_documents(args.filename)
    except ManifestError as exc:
        print(f"lvsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    objects, spec_errors = parse_manifests(docs)
    for err in spec_errors:
        print(f"error: {err}", file=sys.stderr)
    result = compile_cluster(objects)
    plans = [result.plans[n] for n in sorted(result.plans)]
    if args.node:
        unknown = sorted(set(args.node) - set(result.plans))
        if unknown:
            known = ", ".join(sorted(result.plans)) or "none (add Node manifests with -f)"
            print(
                f"lvsctl: unknown node(s) {', '.join(unknown)}; known nodes: {known}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        plans = [p for p in plans if p.node in args.node]
    elif not args.all_nodes:
        plans = [p for p in plans if not p.empty]
    if not result.plans and any(getattr(o.ref, "kind", "") == "VirtualService" for o in objects):
        print(
            "warning: no Node manifests given, so no node can be a director; add the nodes "
            "(e.g. -f examples/nodes.yaml)",
            file=sys.stderr,
        )
    has_error = bool(spec_errors)
    for issue in result.all_issues():
        print(
            f"{issue.severity.lower()}: {issue.ref}: {issue.field + ': ' if issue.field else ''}"
            f"{issue.message} ({issue.reason})",
            file=sys.stderr,
        )
        has_error |= issue.severity == "Error" and not issue.transient
    if args.format == "ipvsadm":
        sys.stdout.write(render_ipvsadm(plans))
    elif args.format == "json":
        print(json.dumps([plan_to_dict(p) for p in plans], indent=2, sort_keys=True))
    else:
        sys.stdout.write(yaml.safe_dump_all([plan_to_dict(p) for p in plans], sort_keys=True))
    return EXIT_INVALID if has_error else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
