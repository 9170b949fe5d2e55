"""Entry point of `lvs-operator`: flags in, kopf running the handlers of controller/operator.py.

    lvs-operator [--kubeconfig FILE] [--agent-node-selector KEY=VALUE,...] [--legacy-endpoints]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _selector(text: str) -> dict[str, str]:
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"want KEY=VALUE[,KEY=VALUE], got {text!r}")
        labels[key] = value
    return labels


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvs-operator",
        description="Cluster-wide controller: compiles VirtualServices, RealServers, Services "
        "and EndpointSlices into one NodePlan per node, and reports status back.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    p.add_argument(
        "--agent-node-selector",
        type=_selector,
        default=None,
        help="only Nodes with these labels run an agent (default: every Node); VIPs and "
        "real-server setup are never planned for other nodes",
    )
    p.add_argument(
        "--legacy-endpoints",
        action="store_true",
        help="also watch v1 Endpoints (for clusters without EndpointSlices)",
    )
    p.add_argument(
        "--stale-agent-after",
        type=float,
        default=120.0,
        help="seconds without an agent report after which a deletion does not wait for that "
        "node (default 120)",
    )
    p.add_argument("--verbose", action="store_true", help="log every event kopf sees")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    import kopf

    from ..api.types import LabelSelector
    from .kube import KubeAPI, load_client
    from .operator import Operator, register_handlers
    from .state import ControllerState

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    selector = (
        None
        if args.agent_node_selector is None
        else LabelSelector(match_labels=args.agent_node_selector)
    )
    try:
        api = KubeAPI(load_client(args.kubeconfig))
    except Exception as exc:  # config errors: say which and stop
        print(f"lvs-operator: cannot load the Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    state = ControllerState(selector, stale_agent_after=args.stale_agent_after)
    operator = Operator(state, api, legacy_endpoints=args.legacy_endpoints)
    register_handlers(operator)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(kopf.operator(clusterwide=True, standalone=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
