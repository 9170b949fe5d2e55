"""Entry point of `lvs-operator`: flags in, kopf running the handlers of controller/operator.py.

    lvs-operator [--kubeconfig FILE] [--agent-node-selector KEY=VALUE,...] [--legacy-endpoints]
                 [--leader-elect ...] [--health-address HOST:PORT]

With --leader-elect (the chart runs two replicas) a replica first stands by until it holds
the Lease (controller/leader.py), then runs kopf while renewing it. Losing the Lease cancels
kopf at once and exits with status 1: the pod restarts as a fresh candidate and rebuilds its
state from the API. SIGTERM stops kopf and releases the Lease, so a standby takes over within
a retry period. Without --leader-elect the process runs kopf straight away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..observability import (
    LOG_FORMATS,
    HealthServer,
    LoopWatch,
    OperatorMetrics,
    address_arg,
    configure_logging,
)

if TYPE_CHECKING:
    from .leader import LeaseElector
    from .operator import Operator

__all__ = ["main"]

log = logging.getLogger("lvs_operator")

EXIT_LOST = 1
# /healthz fails when the event loop has not run for this long (a full compile of 10,000
# VirtualServices blocks it for seconds, never for a minute).
LOOP_STALL_LIMIT = 60.0


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
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line with time, level, logger, "
        "message and the object concerned ({kind, namespace, name})",
    )
    le = p.add_argument_group("leader election (one active replica at a time)")
    le.add_argument(
        "--leader-elect",
        action="store_true",
        help="hold a coordination.k8s.io Lease before writing anything; replicas without it "
        "stand by (off by default, for a single process; the Helm chart turns it on)",
    )
    le.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or "lvs-system",
        help="namespace of the Lease (default: $POD_NAMESPACE, else lvs-system)",
    )
    le.add_argument("--leader-election-name", default="lvs-operator",
                    help="name of the Lease (default lvs-operator)")
    le.add_argument(
        "--leader-election-id",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's identity in the Lease (default: $POD_NAME, else HOSTNAME-PID)",
    )
    le.add_argument("--lease-duration", type=int, default=15,
                    help="seconds a standby waits after the last renewal it saw before taking "
                    "over (default 15)")
    le.add_argument("--renew-deadline", type=float, default=10.0,
                    help="seconds the leader may go without a successful renewal before it "
                    "stops writing and exits (default 10)")
    le.add_argument("--retry-period", type=float, default=2.0,
                    help="seconds between renewals, and between a standby's attempts "
                    "(default 2)")
    p.add_argument(
        "--health-address",
        metavar="HOST:PORT",
        type=address_arg,
        default=None,
        help="serve /healthz, /readyz and /metrics here, e.g. 0.0.0.0:8080 (default: none)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.leader_elect and not (
        0 < args.retry_period < args.renew_deadline < args.lease_duration
    ):
        parser.error("want 0 < --retry-period < --renew-deadline < --lease-duration")
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    import kopf  # noqa: F401 - fail here, before any work, if it is missing

    from ..api.types import LabelSelector
    from .kube import KubeAPI, load_client
    from .leader import KubeLeaseClient, LeaseElector
    from .operator import Operator, register_handlers
    from .state import ControllerState

    configure_logging(args.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    selector = (
        None
        if args.agent_node_selector is None
        else LabelSelector(match_labels=args.agent_node_selector)
    )
    elector: LeaseElector | None = None
    try:
        api = KubeAPI(load_client(args.kubeconfig))
        if args.leader_elect:
            # Its own connection pool, and requests that give up well inside the renew
            # deadline: the publisher's traffic must not delay a renewal.
            lease_api = KubeAPI(load_client(args.kubeconfig),
                                timeout=max(args.renew_deadline / 2, 1.0))
            elector = LeaseElector(
                KubeLeaseClient(lease_api, args.leader_election_namespace,
                                args.leader_election_name),
                args.leader_election_id,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
    except Exception as exc:  # config errors: say which and stop
        print(f"lvs-operator: cannot load the Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    metrics = OperatorMetrics()
    state = ControllerState(selector, stale_agent_after=args.stale_agent_after)
    operator = Operator(state, api, legacy_endpoints=args.legacy_endpoints, metrics=metrics,
                        fence=elector.is_leader if elector is not None else None)
    register_handlers(operator)
    if elector is None:
        metrics.leader.set(1)
    else:
        metrics.leader.set_function(lambda: float(elector.is_leader()))
    loop_watch = LoopWatch()
    server = None
    if args.health_address is not None:
        server = HealthServer(
            args.health_address,
            healthz=lambda: _liveness(operator, loop_watch),
            readyz=lambda: _readiness(operator, elector),
            registry=metrics.registry,
        )
        try:
            server.start()
        except OSError as exc:
            print(f"lvs-operator: cannot serve on {args.health_address[0]}:"
                  f"{args.health_address[1]}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    code = 0
    try:
        with contextlib.suppress(KeyboardInterrupt):
            code = asyncio.run(_serve(operator, elector, loop_watch))
    finally:
        if server is not None:
            server.stop()
    return code


async def _serve(operator: Operator, elector: LeaseElector | None, loop_watch: LoopWatch
                 ) -> int:
    import kopf

    loop_watch.start()
    try:
        if elector is None:
            await kopf.operator(clusterwide=True, standalone=True)
            return 0
        code = await _elected(elector)
    finally:
        loop_watch.stop()
    if code == EXIT_LOST:
        # Leadership is gone: leave now, from inside the loop. asyncio.run would first wait
        # for requests still in flight on worker threads (up to their timeout), and a replica
        # that may not write has no business staying around.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_LOST)
    return code


async def _elected(elector: LeaseElector) -> int:
    """Stand by until leader, then run kopf while renewing. 0 after SIGTERM/SIGINT (the Lease
    released), EXIT_LOST when the Lease was lost, 1 when kopf failed.

    Signals: ours until kopf starts, then kopf's own (it installs them and stops gracefully
    on them; it is given no stop flag, whose waiter task it would leave hanging for 5 s at
    exit). A signal caught by ours after kopf was started cancels kopf."""
    import kopf

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def catch_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    catch_signals()
    log.info("leader election: Lease %s, identity %s (lease %d s, renew deadline %g s, "
             "retry %g s)", elector.client.describe(), elector.identity,
             elector.lease_duration, elector.renew_deadline, elector.retry_period)
    # Every task is created before kopf starts: kopf takes the tasks created while it runs
    # for its own, and waits for them (then cancels them) when it stops.
    stopping = asyncio.ensure_future(stop.wait())
    acquiring = asyncio.ensure_future(elector.acquire())
    keeper: asyncio.Task[str] | None = None
    try:
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            acquiring.cancel()
            log.info("stopping%s", "" if elector.is_leader() else " while standing by")
            await elector.release_async()
            return 0
        keeper = asyncio.ensure_future(elector.hold())
        kopf_task = asyncio.ensure_future(kopf.operator(clusterwide=True, standalone=True))
        await asyncio.wait({keeper, kopf_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if keeper.done() or stopping.done():
            kopf_task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(kopf_task), timeout=3.0)
            if keeper.done():  # lost: no more writes (the fence already refuses API calls)
                return EXIT_LOST
        catch_signals()  # kopf's handlers point at its finished run
        failed = None
        if kopf_task.done() and not kopf_task.cancelled():
            failed = kopf_task.exception()
        if failed is not None:
            log.error("the operator stopped: %r", failed)
        keeper.cancel()
        await elector.release_async()  # hand over at once, whatever ended kopf
        return 1 if failed is not None else 0
    finally:
        for task in (stopping, acquiring, keeper):
            if task is not None:
                task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        elector.close()


def _liveness(operator: Operator, loop_watch: LoopWatch) -> tuple[bool, str]:
    ok, message = loop_watch.check(LOOP_STALL_LIMIT)
    if not ok:
        return ok, message
    task = operator.publisher
    if task is not None and task.done():
        why = "cancelled" if task.cancelled() else repr(task.exception())
        return False, f"the publisher has stopped ({why})"
    return True, "ok"


def _readiness(operator: Operator, elector: LeaseElector | None) -> tuple[bool, str]:
    synced = operator.state.synced
    if elector is None:
        return (True, "leader (leader election off), initial sync done") if synced else (
            False, "initial sync in progress")
    if elector.is_leader():
        return (True, "leader") if synced else (False, "leader: initial sync in progress")
    if elector.lost:
        return False, f"not leader any more ({elector.lost_reason}); exiting"
    if elector.last_error is not None:
        return False, f"standby: {elector.last_error}"
    if elector.observed is None:
        return False, "standby: the Lease has not been read yet"
    holder = elector.holder
    return True, f"standby: lease held by {holder}" if holder else "standby"


if __name__ == "__main__":
    sys.exit(main())
