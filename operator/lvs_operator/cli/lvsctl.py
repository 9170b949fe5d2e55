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
from ..compiler.plan import NodePlan, plan_to_dict
from ..compiler.render import ipvsadm_save, render_ipvsadm
from . import ops
from .importers import FwmarkTarget, import_ipvsadm, import_keepalived, parse_fwmark_target
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
    ops.add_subcommands(sub)  # list, connections, zero, save, apply: this host's IPVS table
    _add_import(sub)
    return parser


def _compile_plans(args: argparse.Namespace) -> tuple[list[NodePlan], int]:
    """The plans of `args.filename` for `args.node` (else every non-empty one, or all with
    `args.all_nodes`), problems printed to stderr; and the exit status they deserve."""
    try:
        docs = load_documents(args.filename)
    except ManifestError as exc:
        print(f"lvsctl: {exc}", file=sys.stderr)
        return [], EXIT_USAGE
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
            return [], EXIT_USAGE
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
    return plans, EXIT_INVALID if has_error else EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    plans, code = _compile_plans(args)
    if code == EXIT_USAGE:
        return code
    if args.format == "ipvsadm":
        sys.stdout.write(render_ipvsadm(plans))
    elif args.format == "json":
        print(json.dumps([plan_to_dict(p) for p in plans], indent=2, sort_keys=True))
    else:
        sys.stdout.write(yaml.safe_dump_all([plan_to_dict(p) for p in plans], sort_keys=True))
    return code


def _add_import(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser(
        "import",
        help="turn an ipvsadm-save file, ipvsadm script or keepalived.conf into manifests",
        description="Read an existing LVS configuration and print VirtualService and "
        "RealServer manifests (multi-document YAML) that compile to the same IPVS services. "
        "Everything that cannot be expressed is printed to stderr as FILE:LINE: message; the "
        "exit status is then 1 unless --allow-unsupported.",
    )
    imp.add_argument("source", choices=("ipvsadm", "keepalived"),
                     help="ipvsadm: `ipvsadm-save -n` output or a script of ipvsadm commands; "
                     "keepalived: a keepalived.conf")
    imp.add_argument("file", metavar="FILE", help="the file to read, or - for standard input")
    imp.add_argument("--namespace", default="default", help="namespace of the objects")
    imp.add_argument("--name-prefix", default="", help="prefix for every object name")
    imp.add_argument("--director-selector", default="lvs.dev/director=true", metavar="KEY=VALUE",
                     help="node label that selects the directors (default: %(default)s)")
    imp.add_argument("--fwmark", action="append", default=[], metavar="MARK=VIP,PROTO:PORT,...",
                     help="what a firewall mark stands for, when the input does not say "
                     "(e.g. 99=192.0.2.50,tcp:80,tcp:443); repeatable")
    imp.add_argument("--allow-unsupported", action="store_true",
                     help="exit 0 even when some lines could not be imported (they are still "
                     "printed)")


def _import(args: argparse.Namespace) -> int:
    try:
        fwmarks: dict[int, FwmarkTarget] = dict(parse_fwmark_target(t) for t in args.fwmark)
        if "=" not in args.director_selector:
            raise ValueError(f"--director-selector {args.director_selector!r}: expected KEY=VALUE")
    except ValueError as exc:
        print(f"lvsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    name = "<stdin>" if args.file == "-" else args.file
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
    except OSError as exc:
        print(f"lvsctl: {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    importer = import_ipvsadm if args.source == "ipvsadm" else import_keepalived
    result = importer(
        text,
        namespace=args.namespace,
        name_prefix=args.name_prefix,
        director_selector=args.director_selector,
        fwmarks=fwmarks,
    )
    if result.objects:
        sys.stdout.write(yaml.safe_dump_all(result.objects, sort_keys=False))
    for problem in result.problems:
        print(f"{name}:{problem.line_no}: {problem.message}", file=sys.stderr)
    if result.problems and not args.allow_unsupported:
        return EXIT_INVALID
    return EXIT_OK


def _save_desired(args: argparse.Namespace) -> int:
    """`lvsctl save -f PATH...`: what `ipvsadm-save -n` will print on each director once the
    agents applied these manifests (the IPVS half of `lvsctl plan --format ipvsadm`)."""
    args.all_nodes = False
    plans, code = _compile_plans(args)
    for plan in plans:
        if plan.director.services:
            print(f"# node {plan.node}")
            for line in ipvsadm_save(plan.director.services):
                print(line)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "import":
        return _import(args)
    if args.command == "save" and args.filename:
        return _save_desired(args)
    if args.command in ops.COMMANDS:
        return ops.run(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
