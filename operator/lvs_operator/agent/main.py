"""Entry point of `lvs-agent`.

Standalone mode (like keepalived with a config file): `lvs-agent --node NAME --plan FILE`
applies that node's plan once; `--watch` keeps applying it, re-reading the file when it
changes and repairing drift every `--interval` seconds; `--dry-run` prints the changes
without making them.

Cluster mode (no `--plan`): the agent follows the node's NodePlan in the API, applies each new
generation as it is published, repairs drift every `--interval` seconds and reports on the
NodePlan's status (agent/cluster.py). It reaches the API through `--kubeconfig`, else the
pod's service account, else $KUBECONFIG or ~/.kube/config.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from ..compiler.plan import NodePlan, plan_from_dict
from ..observability import (
    LOG_FORMATS,
    AgentMetrics,
    Check,
    HealthServer,
    PassWatch,
    address_arg,
    configure_logging,
)
from .cache import CachingKernel
from .cluster import (
    ClusterAgent,
    PlanSourceError,
    drift_kinds,
    kubernetes_plan_source,
    step_kinds,
)
from .ha import LeaseDriver, VIPKeeper
from .health_monitor import HealthMonitor, apply_health
from .kubeapi import KubeAPI, KubeAPIError
from .reconcile import InSync, Kernel, ReconcileReport, reconcile
from .state import AgentState, load_state, save_state
from .vip_lease import KubernetesLeaseClient, VIPElection, lease_api_client, lease_identity
from .vrrp import KeepalivedSupervisor, VRRPDriver

__all__ = ["load_plan", "main", "real_kernel", "vrrp_password_reader"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("lvs_operator.agent")


class PlanFileError(ValueError):
    """The plan file is unreadable or holds no plan for this node."""


def load_plan(path: Path, node: str) -> NodePlan:
    """The node's plan from a file written by `lvsctl plan --format json|yaml` (one plan, or
    a list of plans of which the one for `node` is taken)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        docs: list[Any] = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise PlanFileError(f"{path}: not YAML or JSON: {exc}") from exc
    plans: list[Any] = []
    for doc in docs:
        plans.extend(doc if isinstance(doc, list) else [doc])
    candidates = [p for p in plans if isinstance(p, dict) and p.get("node") == node]
    if not candidates:
        names = ", ".join(sorted(str(p.get("node")) for p in plans if isinstance(p, dict)))
        raise PlanFileError(f"{path}: no plan for node {node!r} (plans for: {names or 'none'})")
    try:
        return plan_from_dict(candidates[0])
    except (ValueError, TypeError, KeyError) as exc:
        raise PlanFileError(f"{path}: plan for {node} is malformed: {exc}") from exc


def real_kernel(
    netns: str | None, iptables: str = "auto", proc_sys: Path = Path("/proc/sys")
) -> Kernel:
    """The real adapters, optionally inside a named network namespace. `iptables` names the
    host's flavour (nft or legacy); "auto" detects it from the host's rules the way
    Kubernetes' iptables-wrapper does (real_chains.detect_host_flavour), not from the image's
    `iptables -V`. `proc_sys` is where the host's /proc/sys is mounted (/host/proc/sys when
    /proc/sys/net is a hostPath in a container that is not privileged)."""
    from ..kernel.real_announce import PacketAnnouncer
    from ..kernel.real_chains import IptablesChains
    from ..kernel.real_ipset import NetlinkIPSets
    from ..kernel.real_ipvs import NetlinkIPVS
    from ..kernel.real_net import NetlinkAddresses, NetlinkTunnels, ProcSysctls

    return Kernel(
        ipvs=NetlinkIPVS(netns),
        ipsets=NetlinkIPSets(netns),
        chains=IptablesChains(netns, flavour=None if iptables == "auto" else iptables),
        addresses=NetlinkAddresses(netns),
        sysctls=ProcSysctls(netns, root=proc_sys),
        tunnels=NetlinkTunnels(netns),
        announcer=PacketAnnouncer(netns),
    )


def _print_report(report: ReconcileReport, dry_run: bool, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "dryRun": dry_run,
                    "changes": [str(s) for s in report.steps],
                    "failures": report.failures,
                    "warnings": report.warnings,
                    "draining": report.waiting_drains,
                },
                indent=1,
            )
        )
        return
    verb = "would apply" if dry_run else "applied"
    for step in report.steps:
        print(f"{verb}: {step}")
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for f in report.failures:
        print(f"error: {f}", file=sys.stderr)
    print(f"lvs-agent: {report.summary()}", file=sys.stderr)


def _log_report(report: ReconcileReport, dry_run: bool, node: str) -> None:
    """The report as log records (--log-format json: no stray text lines among them)."""
    verb = "would apply" if dry_run else "applied"
    for step in report.steps:
        log.info("%s: %s", verb, step, extra={"node": node, "change": str(step)})
    for w in report.warnings:
        log.warning("%s", w, extra={"node": node})
    for f in report.failures:
        log.error("%s", f, extra={"node": node})


def _metrics_table(netns: str | None) -> Any:
    """An IPVS table of its own for /metrics (agent loop's adapter stays the loop's)."""
    from ..kernel.real_ipvs import NetlinkIPVS

    return NetlinkIPVS(netns)


def _watch_health(metrics: AgentMetrics, health: HealthMonitor) -> None:
    """lvs_health_* on /metrics: the monitor's verdicts at scrape time."""
    from ..observability.ipvs_metrics import key_labels

    def servers() -> list[tuple[tuple[str, ...], bool, int]]:
        return [((*key_labels(r.owner, r.service), r.address, str(r.port)), r.up,
                 r.consecutive_failures) for r in health.report()]

    def services() -> list[tuple[tuple[str, ...], bool, bool]]:
        owners = {r.service: r.owner for r in health.report()}
        return [(key_labels(owners.get(key, ""), key), ok, sorry)
                for key, (ok, sorry) in health.quorum().items()]

    metrics.watch_health(servers, services)


def _start_health(address: tuple[str, int], healthz: Check, readyz: Check,
                  metrics: AgentMetrics) -> HealthServer | None:
    server = HealthServer(address, healthz=healthz, readyz=readyz, registry=metrics.registry)
    try:
        server.start()
    except OSError as exc:
        print(f"lvs-agent: cannot serve on {address[0]}:{address[1]}: {exc.strerror or exc}",
              file=sys.stderr)
        return None
    return server


def _bool_arg(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
        text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"want true or false, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvs-agent",
        description="Per-node agent: makes this node's IPVS table, VIPs, ipsets, mark rules, "
        "sysctls and tunnel devices match its plan, and keeps them so.",
    )
    p.add_argument("--node", required=True, help="this node's name, as in the plan")
    p.add_argument(
        "--plan",
        type=Path,
        help="standalone mode: plan file from `lvsctl plan --format json` (or yaml); without "
        "it the agent runs in cluster mode and follows this node's NodePlan in the API",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        help="cluster mode: kubeconfig for the API (default: the pod's service account when "
        "KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG or ~/.kube/config)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="with --plan, keep running: re-apply when the file changes and every --interval "
        "(cluster mode always keeps running)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="seconds between drift-repair passes with --watch or in cluster mode (default 10)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the changes, change nothing")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/lvs-agent"),
        help="where ownership and drain state survive restarts (default /var/lib/lvs-agent)",
    )
    p.add_argument("--netns", help="operate inside this named network namespace (testing)")
    p.add_argument(
        "--iptables",
        choices=("auto", "nft", "legacy"),
        default="auto",
        help="the host's iptables flavour for the owned chains; auto detects it from the "
        "host's rules like Kubernetes' iptables-wrapper (kubelet's KUBE-IPTABLES-HINT / "
        "KUBE-KUBELET-CANARY chains, else the backend with more rules, else `iptables -V`) "
        "and logs which and why",
    )
    p.add_argument(
        "--proc-sys",
        type=Path,
        default=Path("/proc/sys"),
        metavar="PATH",
        help="where the host's /proc/sys is mounted, e.g. /host/proc/sys when /proc/sys/net "
        "is a hostPath in a container (default /proc/sys)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--health-address",
        metavar="HOST:PORT",
        type=address_arg,
        default=None,
        help="serve /healthz, /readyz and /metrics here, e.g. 0.0.0.0:9474, in cluster mode "
        "and with --plan FILE --watch (default: none)",
    )
    p.add_argument(
        "--metrics-backends",
        type=_bool_arg,
        nargs="?",
        const=True,
        default=True,
        metavar="true|false",
        help="export the lvs_backend_* series, 11 per real server (default true); "
        "--metrics-backends=false keeps only the per-service ones, for nodes with very many "
        "real servers (docs/metrics.md)",
    )
    p.add_argument(
        "--ha-namespace",
        default=os.environ.get("POD_NAMESPACE") or "lvs-system",
        metavar="NAMESPACE",
        help="namespace of the Leases that decide which director holds an HA VIP "
        "(spec.ha.mode Lease), the operator's; default $POD_NAMESPACE, else lvs-system",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line with time, level, logger, "
        "message, node and the object concerned",
    )
    return p


def _cluster_main(args: argparse.Namespace) -> int:
    state_path = args.state_dir / f"{args.node}.json"
    try:
        state = load_state(state_path)
    except ValueError as exc:
        print(f"lvs-agent: {state_path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        source = kubernetes_plan_source(args.kubeconfig)
    except PlanSourceError as exc:
        print(
            f"lvs-agent: {exc}\nlvs-agent: give --kubeconfig PATH (cluster mode) or --plan FILE "
            "(standalone mode)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    def persist(s: AgentState) -> None:
        save_state(state_path, s)

    def report(r: ReconcileReport) -> None:
        if args.log_format == "json":
            _log_report(r, args.dry_run, args.node)
            return
        _print_report(r, args.dry_run, args.json)
        sys.stdout.flush()

    metrics = AgentMetrics()
    health = HealthMonitor(netns=args.netns, on_change=lambda: _wake(agent))
    ha = _lease_driver(args, source, lambda: _wake(agent))
    agent = ClusterAgent(
        args.node,
        source,
        dataclasses.replace(real_kernel(args.netns, args.iptables, args.proc_sys),
                            lease_lifetime=ha.lifetime),
        state,
        interval=args.interval,
        dry_run=args.dry_run,
        persist=persist,
        on_report=report,
        metrics=metrics,
        health=health,
        ha=ha,
        vrrp=_vrrp_driver(args, source),
    )

    def stop(_sig: int, _frame: FrameType | None) -> None:
        agent.stop()

    server = None
    if args.health_address is not None:
        _watch_health(metrics, health)
        metrics.watch_ipvs(_metrics_table(args.netns).dump, lambda: agent.plan,
                           owns=lambda key: key in state.owned_services,
                           backends=args.metrics_backends)
        server = _start_health(args.health_address, agent.liveness, agent.readiness, metrics)
        if server is None:
            return EXIT_USAGE

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: agent.interrupt())
    health.start()
    ha.start()
    try:
        agent.run()
    finally:
        health.stop()
        ha.stop()  # release held Leases: a standby takes over within one retry period
        if agent.vrrp is not None:
            agent.vrrp.stop()  # keepalived releases its VIPs (priority 0 advert)
        if server is not None:
            server.stop()
    return EXIT_OK


_MAIN_THREAD = threading.main_thread()


def _lease_driver(args: argparse.Namespace, source: Any,
                  on_change: Callable[[], None]) -> LeaseDriver:
    """HA in Lease mode: this node's candidacies, over the agent's own API credentials, and
    a keeper for the VIPs on a netlink socket of its own (it runs on the driver's thread)."""
    from ..kernel.real_net import NetlinkAddresses

    api = lease_api_client(source.api)
    election = VIPElection(
        lease_identity(args.node),
        # a request may take up to the renew deadline (cut at the deadline while holding), as
        # client-go bounds its renew loop; a slower one could not have renewed in time anyway
        lambda group: KubernetesLeaseClient(api, group.lease_namespace, group.lease_name,
                                            timeout=group.renew_deadline),
    )
    return LeaseDriver(election, args.ha_namespace, on_change=on_change,
                       keeper=VIPKeeper(NetlinkAddresses(args.netns)))


def _vrrp_driver(args: argparse.Namespace, source: Any) -> VRRPDriver:
    """HA in VRRP mode: one keepalived for this node's netns, its files under the state
    directory (adopted again by a restarted agent), the auth password from a Secret."""
    from ..kernel.real_net import NetlinkAddresses

    run_dir = args.state_dir / "keepalived" / args.node
    return VRRPDriver(KeepalivedSupervisor(run_dir, netns=args.netns), router_id=args.node,
                      addresses=NetlinkAddresses(args.netns),
                      password_for=vrrp_password_reader(source.api))


def vrrp_password_reader(api: KubeAPI) -> Callable[[str], str | None]:
    """spec.ha.vrrp.authSecretRef ("namespace/name") -> its key `password`; None when the
    Secret or the key does not exist; ValueError (a pass failure) when it cannot be read."""

    def read(ref: str) -> str | None:
        namespace, name = ref.split("/", 1)
        doing = f"cannot read Secret {ref} (spec.ha.vrrp.authSecretRef)"
        try:
            secret = api.call("GET", KubeAPI.path("api", "v1", "namespaces", namespace,
                                                  "secrets", name), doing=doing, timeout=5.0)
        except KubeAPIError as exc:
            if exc.status == 404:
                return None
            grant = ""
            if exc.status in (401, 403):
                grant = (f"; grant the agent's ServiceAccount `get` on it with a Role in "
                         f"namespace {namespace} (Helm: --set agent.vrrpAuthSecrets."
                         f"{namespace}={{{name}}})")
            raise ValueError(f"{exc}{grant}") from None
        data = (secret.get("data") or {}).get("password") if isinstance(secret, dict) else None
        return base64.b64decode(data).decode() if data else None

    return read


def _wake(agent: ClusterAgent) -> None:
    """From the health monitor's thread: a pass now, cutting a blocking watch short."""
    agent.wake()
    if _MAIN_THREAD.ident is not None:
        signal.pthread_kill(_MAIN_THREAD.ident, signal.SIGUSR1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    configure_logging(args.log_format, text_format="lvs-agent: %(message)s",
                      fields={"node": args.node})
    if args.plan is None:
        return _cluster_main(args)
    if args.kubeconfig is not None:
        parser.error("--kubeconfig is for cluster mode; standalone mode (--plan) reads no API")
    state_path = args.state_dir / f"{args.node}.json"
    try:
        plan = load_plan(args.plan, args.node)
        state = load_state(state_path)
    except (PlanFileError, ValueError) as exc:
        print(f"lvs-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kernel = real_kernel(args.netns, args.iptables, args.proc_sys)

    def persist(s: AgentState) -> None:
        save_state(state_path, s)

    if not args.watch:
        report = reconcile(
            plan, kernel, state, dry_run=args.dry_run, persist=None if args.dry_run else persist
        )
        _print_report(report, args.dry_run, args.json)
        return EXIT_OK if report.ok else EXIT_FAILED

    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mtime = args.plan.stat().st_mtime
    metrics = AgentMetrics()
    watch = PassWatch(args.interval)
    metrics_plan = [plan]  # what /metrics reports on (read from the health server's threads)
    verdicts = threading.Event()  # a health check changed its verdict: pass now
    health = HealthMonitor(netns=args.netns, on_change=verdicts.set)
    server = None
    if args.health_address is not None:
        _watch_health(metrics, health)
        metrics.watch_ipvs(_metrics_table(args.netns).dump, lambda: metrics_plan[0],
                           owns=lambda key: key in state.owned_services,
                           backends=args.metrics_backends)
        server = _start_health(args.health_address, watch.liveness, watch.readiness, metrics)
        if server is None:
            return EXIT_USAGE
    last: ReconcileReport | None = None
    # Passes caused by a new plan diff against a cached view of the kernel (a full read costs
    # seconds at 10,000 services; the change is one message); the timer's passes read the
    # kernel itself, which is what repairs drift and decides drains.
    caching = CachingKernel(kernel)
    in_sync: InSync = {}
    full_read = True
    # The checks follow a plan once a pass has applied it: a DR/TUN probe needs its
    # health-path service in the kernel, or a new server would fail its first probes.
    health_behind = True
    health.start()
    while not stopping:
        began = time.monotonic()
        # a timer pass of the plan the last clean pass applied: its changes repair drift
        drift_check = full_read and last is not None and not last.failures and not args.dry_run
        draining = set(state.drains) if drift_check else set()
        if full_read:
            caching.refresh()
            in_sync.clear()
        verdicts.clear()
        effective, dead = apply_health(plan, health.overlay())
        report = reconcile(
            effective,
            caching.view,
            state,
            dry_run=args.dry_run,
            persist=None if args.dry_run else persist,
            in_sync=in_sync,
            dead=dead,
        )
        metrics.observe_pass(full=full_read, seconds=time.monotonic() - began,
                             failed=bool(report.failures), generation=None,
                             operations=() if args.dry_run else step_kinds(report),
                             errors=len(report.failures),
                             drift=drift_kinds(report, draining) if drift_check else ())
        last = report
        if health_behind:
            health.update(plan)
            health_behind = False
        watch.passed(f"plan applied: {report.summary()}")
        if report.failures:  # read again next time rather than trust what we think we wrote
            caching.refresh()
            in_sync.clear()
        if report.steps or report.failures:
            if args.log_format == "json":
                _log_report(report, args.dry_run, args.node)
                log.log(logging.WARNING if report.failures else logging.INFO,
                        "%s pass: %s", "full" if full_read else "cached", report.summary(),
                        extra={"changes": len(report.steps), "failures": len(report.failures),
                               "warnings": len(report.warnings),
                               "draining": report.waiting_drains})
            else:
                _print_report(report, args.dry_run, args.json)
        sys.stdout.flush()
        deadline = time.monotonic() + args.interval
        full_read = True
        while not stopping and time.monotonic() < deadline:
            watch.beat()
            if verdicts.is_set():
                full_read = False
                break
            time.sleep(min(0.2, args.interval))
            try:
                current = args.plan.stat().st_mtime
            except FileNotFoundError:
                continue  # keep the last plan (fail static) until a new file appears
            if current != mtime:
                mtime = current
                try:
                    plan = load_plan(args.plan, args.node)
                except PlanFileError as exc:
                    log.warning("keeping the last good plan: %s", exc)
                    continue
                metrics_plan[0] = plan
                health_behind = True
                full_read = False
                break
    health.stop()
    if server is not None:
        server.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
