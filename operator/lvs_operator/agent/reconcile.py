"""The agent's reconciler: read the live kernel, diff it against the node's plan, apply the
minimal ordered set of changes, and say what it did.

Level-triggered: every pass compares the complete plan with the complete live state, so a
missed event or a human running `ipvsadm -D` is repaired on the next pass. It touches only
what it can prove it owns: IPVS services it created (remembered in AgentState), ipsets and
chains with the project prefix, addresses carrying the project's IFA_PROTO. Draining is plan
data decided inside the same diff: a destination that left the plan goes to weight 0 and is
deleted once it has no connections or its deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from ..compiler.plan import Destination, IPVSService, NodePlan, ServiceKey, TunnelDevice
from ..compiler.render import MARK_CHAIN, SNAT_CHAIN, mark_rule_args, snat_rule_args
from ..kernel.announce import Announcer
from ..kernel.errors import AlreadyExists, KernelError, KernelUnavailable, NotFound
from ..kernel.ipvs import (
    IPVSOp,
    IPVSOpKind,
    IPVSTable,
    LiveService,
    SyncDaemon,
    dest_attributes,
    service_attributes,
)
from ..kernel.netstate import (
    Addresses,
    ChainSpec,
    IPSets,
    IPSetState,
    OwnedChains,
    Sysctls,
    Tunnels,
)
from .state import AgentState, DrainKey

__all__ = ["InSync", "Kernel", "ReconcileReport", "Step", "diff", "reconcile"]

IPSET_PREFIX = "lvs-"
_CHAINS = [(f, "mangle", MARK_CHAIN, "PREROUTING") for f in (4, 6)] + [
    (f, "nat", SNAT_CHAIN, "POSTROUTING") for f in (4, 6)
]


class NotHeld(Exception):
    """A take step found its HA group no longer held: skipped with a warning, not a
    failure (nothing is wrong with the kernel; the Lease moved on)."""


@dataclass(frozen=True)
class Kernel:
    """The adapters for one node (one network namespace)."""

    ipvs: IPVSTable
    ipsets: IPSets
    chains: OwnedChains
    addresses: Addresses
    sysctls: Sysctls
    tunnels: Tunnels
    announcer: Announcer | None = None  # gratuitous ARP / unsolicited NA after an HA VIP add
    # Lease-mode HA: the valid lifetime (whole seconds) a held group's VIP may be added with
    # now, None when it may not be (agent/ha.py LeaseDriver.lifetime). The kernel then
    # deletes the VIP by itself if this agent dies, before a standby can take the Lease.
    lease_lifetime: Callable[[str], int | None] | None = None


class Step(NamedTuple):
    """One change to the kernel, as data: printed by --dry-run, executed otherwise."""

    layer: str  # sysctl | tunnel | sync | address | ipset | chain | ipvs
    verb: str
    target: object
    detail: str = ""

    def __str__(self) -> str:
        if isinstance(self.target, IPVSOp):
            return f"ipvs {self.target}{' (' + self.detail + ')' if self.detail else ''}"
        return f"{self.layer} {self.verb} {self.detail}".rstrip()


@dataclass
class ReconcileReport:
    steps: list[Step] = field(default_factory=list)  # what was (or, dry-run, would be) done
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    waiting_drains: int = 0  # destinations at weight 0 still holding connections

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        return (
            f"{len(self.steps)} change(s), {len(self.failures)} failure(s), "
            f"{len(self.warnings)} warning(s), {self.waiting_drains} draining"
        )


# --------------------------------------------------------------------------- the diff


@dataclass
class _Live:
    ipvs: list[LiveService] | None  # None: IPVS not read (not needed, or unavailable)
    ipsets: dict[str, IPSetState]
    chains: dict[tuple[int, str, str], ChainSpec]
    addresses: set[tuple[str, str, int]]  # owned only
    foreign_addresses: set[tuple[str, str, int]]
    sysctls: dict[str, str | None]
    tunnels: dict[str, TunnelDevice]
    daemons: dict[str, SyncDaemon] | None  # None: not read (not needed, or unreadable)


def _read_live(plan: NodePlan, kernel: Kernel, state: AgentState, report: ReconcileReport) -> _Live:
    ipvs: list[LiveService] | None = None
    if plan.director.services or state.owned_services:
        try:
            kernel.ipvs.probe()
            ipvs = kernel.ipvs.dump()
        except KernelUnavailable as exc:
            report.failures.append(f"ipvs: {exc}")
    chains = {}
    for family, table, chain, _hook in _CHAINS:
        try:
            live = kernel.chains.read(family, table, chain)
        except KernelUnavailable as exc:
            # e.g. no ip6tables on an IPv4-only node: only an error if the plan needs it
            rules = plan.director.mark_rules if table == "mangle" else plan.director.snat_rules
            needed = any(r.family == family for r in rules)
            if needed:
                report.failures.append(f"{table}/{chain} (IPv{family}): {exc}")
            continue
        if live is not None:
            chains[(family, table, chain)] = live
    owned: set[tuple[str, str, int]] = set()
    foreign: set[tuple[str, str, int]] = set()
    for a in kernel.addresses.list():
        (owned if a.owned else foreign).add((a.device, a.address, a.prefix_length))
    daemons: dict[str, SyncDaemon] | None = None
    if state.sync_daemons or any(v.ha is not None and v.ha.sync for v in plan.director.vips):
        try:
            daemons = {d.state: d for d in kernel.ipvs.daemons()}
        except KernelError as exc:
            report.failures.append(f"ipvs sync daemons: {exc}")
    keys = {s.key for s in plan.director.sysctls} | {s.key for s in plan.backend.sysctls}
    keys |= set(state.sysctl_originals)
    return _Live(
        ipvs=ipvs,
        ipsets=dict(kernel.ipsets.list(IPSET_PREFIX)),
        chains=chains,
        addresses=owned,
        foreign_addresses=foreign,
        sysctls={k: kernel.sysctls.get(k) for k in sorted(keys)},
        tunnels={t.name: t for t in kernel.tunnels.list_up()},
        daemons=daemons,
    )


def _desired_chains(plan: NodePlan, chains: OwnedChains) -> dict[tuple[int, str, str], ChainSpec]:
    out = {}
    for family in (4, 6):
        marks = tuple(
            tuple(mark_rule_args(m)) for m in plan.director.mark_rules if m.family == family
        )
        if marks:
            out[(family, "mangle", MARK_CHAIN)] = chains.canonical(
                ChainSpec(family, "mangle", MARK_CHAIN, "PREROUTING", marks)
            )
        snats = tuple(
            tuple(snat_rule_args(r)) for r in plan.director.snat_rules if r.family == family
        )
        if snats:
            out[(family, "nat", SNAT_CHAIN)] = chains.canonical(
                ChainSpec(family, "nat", SNAT_CHAIN, "POSTROUTING", snats)
            )
    return out


def _desired_addresses(
    plan: NodePlan, kernel: Kernel, report: ReconcileReport, held: frozenset[str]
) -> set[tuple[str, str, int]]:
    out = set()
    for vip in plan.director.vips:
        # An HA VIP is on this director only while it holds the VIP's Lease; VRRP VIPs are
        # keepalived's to add and remove (they are foreign addresses to the agent).
        if vip.ha is not None and (vip.ha.mode != "Lease" or vip.ha.group not in held):
            continue
        device = vip.interface or kernel.addresses.route_device(vip.address)
        if not device:
            report.failures.append(
                f"VIP {vip.address}: no route toward it tells which device should hold it; set "
                "spec.directors.interface on its VirtualService"
            )
            continue
        out.add((device, vip.address, vip.prefix_length))
    for lo in plan.backend.vips:
        out.add((lo.device, lo.address, lo.prefix_length))
    return out


def _desired_daemons(
    plan: NodePlan, kernel: Kernel, report: ReconcileReport
) -> dict[str, SyncDaemon]:
    """Connection sync: a master AND a backup daemon on every director of a VIP with
    spec.ha.connectionSync, so connections flow to whichever director takes over (and back).
    The kernel runs one daemon per state, so the first such VIP decides."""
    chosen: tuple[str, int, str] | None = None
    for vip in plan.director.vips:
        ha = vip.ha
        if ha is None or not ha.sync:
            continue
        device = ha.sync_interface or vip.interface or kernel.addresses.route_device(vip.address)
        if not device:
            report.failures.append(
                f"VIP {vip.address}: no device for the IPVS sync daemon; set "
                "spec.ha.connectionSync.interface")
            continue
        if chosen is None:
            chosen = (device, ha.sync_id, vip.address)
        elif chosen[:2] != (device, ha.sync_id):
            report.warnings.append(
                f"VIP {vip.address} asks for connection sync on {device} syncID {ha.sync_id}, "
                f"but VIP {chosen[2]} already has it on {chosen[0]} syncID {chosen[1]} (the "
                "kernel runs one sync daemon per state); use the same connectionSync settings")
    if chosen is None:
        return {}
    return {st: SyncDaemon(st, chosen[0], chosen[1]) for st in ("master", "backup")}


def _daemon_steps(
    plan: NodePlan, kernel: Kernel, state: AgentState, live: _Live, report: ReconcileReport
) -> list[Step]:
    if live.daemons is None:
        return []
    steps: list[Step] = []
    wanted = _desired_daemons(plan, kernel, report)
    for st in ("master", "backup"):
        want, have = wanted.get(st), live.daemons.get(st)
        same = (want is not None and have is not None
                and (have.interface, have.sync_id) == (want.interface, want.sync_id))
        if have is not None and not same:
            if st not in state.sync_daemons:
                if want is not None:
                    report.warnings.append(
                        f"an IPVS sync daemon ({st} on {have.interface} syncid {have.sync_id}) "
                        "was not started by lvs-agent (keepalived?); it is left untouched")
                continue
            steps.append(Step("sync", "stop", st, f"{st} on {have.interface}"))
        if want is not None and not same:
            steps.append(Step("sync", "start", want,
                              f"{st} on {want.interface} syncid {want.sync_id}"))
    return steps


def diff(
    plan: NodePlan,
    kernel: Kernel,
    state: AgentState,
    now: float,
    report: ReconcileReport,
    in_sync: InSync | None = None,
    dead: frozenset[DrainKey] = frozenset(),
    held: frozenset[str] = frozenset(),
) -> list[Step]:
    """Every step that takes the live kernel to the plan, in a safe order. Destinations in
    `dead` (failed health checks) are deleted at once instead of drained; `held` names the
    HA groups whose VIPs this director holds now."""
    live = _read_live(plan, kernel, state, report)
    steps: list[Step] = []
    # Removals run after the IPVS batch, each layer after the ones that depend on it: rules
    # before the ipsets they match, addresses and tunnels before the sysctls set for them.
    remove_chains: list[Step] = []
    destroy_sets: list[Step] = []
    delete_addrs: list[Step] = []
    release_tunnels: list[Step] = []
    restore_sysctls: list[Step] = []

    # tunnel receive devices first: sysctls below may name them (conf.tunl0.rp_filter). One
    # that was already up (Calico's IPIP mode uses tunl0 too) is shared: the agent adjusts it
    # but never claims it, so it never sets it down later.
    wanted_tunnels = {t.name: t for t in plan.backend.tunnels}
    for name, dev in sorted(wanted_tunnels.items()):
        if live.tunnels.get(name) != dev:
            claim = name in state.tunnels or name not in live.tunnels
            port = f", gue port {dev.fou_port}" if dev.fou_port else ""
            shared = "" if claim else ", already up: shared, never set down"
            steps.append(
                Step("tunnel", "ensure", (dev, claim), f"{name} ({dev.kind}{port}{shared})")
            )
    for gone in sorted(state.tunnels - set(wanted_tunnels)):
        if gone in live.tunnels:
            release_tunnels.append(Step("tunnel", "release", live.tunnels[gone], gone))

    # sysctls: set what the plan wants; restore what we changed and it no longer wants
    wanted = {s.key: s.value for s in (*plan.director.sysctls, *plan.backend.sysctls)}
    appearing = tuple(f"net.ipv4.conf.{n}." for n in wanted_tunnels if n not in live.tunnels)
    for key, value in sorted(wanted.items()):
        current = live.sysctls.get(key)
        if current is None and appearing and key.startswith(appearing):
            # the device appears in this pass; nothing to restore later (it goes down instead)
            steps.append(Step("sysctl", "set", (key, value, None), f"{key}={value} (new device)"))
        elif current is None:
            report.warnings.append(f"sysctl {key} does not exist on this node")
        elif current != value:
            steps.append(
                Step("sysctl", "set", (key, value, current), f"{key}={value} (was {current})")
            )
    for key, original in sorted(state.sysctl_originals.items()):
        if key not in wanted and live.sysctls.get(key) not in (None, original):
            restore_sysctls.append(Step("sysctl", "restore", (key, original), f"{key}={original}"))

    steps.extend(_daemon_steps(plan, kernel, state, live, report))

    # addresses: VIPs on directors, VIPs on lo of DR/TUN real servers
    wanted_addrs = _desired_addresses(plan, kernel, report, held)
    ha_groups = {v.address: v.ha.group for v in plan.director.vips if v.ha is not None}
    for device, addr, plen in sorted(wanted_addrs - live.addresses - live.foreign_addresses):
        where = (device, addr, plen)
        if addr in ha_groups:  # take: add, then announce it (gratuitous ARP / unsolicited NA)
            steps.append(Step("address", "take", (*where, ha_groups[addr]),
                              f"{addr}/{plen} dev {device}"))
        else:
            steps.append(Step("address", "add", where, f"{addr}/{plen} dev {device}"))
    for device, addr, plen in sorted(live.addresses - wanted_addrs):
        delete_addrs.append(
            Step("address", "delete", (device, addr, plen), f"{addr}/{plen} dev {device}")
        )

    # ipsets before the rules that match them; destroyed after those rules are gone
    wanted_sets = {s.name: s for s in plan.director.ipsets}
    for name, st in sorted(wanted_sets.items()):
        have = live.ipsets.get(name)
        entries = frozenset(st.entries)
        if have is None:
            steps.append(
                Step(
                    "ipset",
                    "create",
                    (name, st.set_type, st.family),
                    f"{name} {st.set_type} family {st.family}",
                )
            )
            if entries:
                steps.append(Step("ipset", "add", (name, entries), f"{name} +{len(entries)}"))
            continue
        have_entries = have.entries
        if entries - have_entries:
            steps.append(
                Step(
                    "ipset",
                    "add",
                    (name, entries - have_entries),
                    f"{name} +{len(entries - have_entries)}",
                )
            )
        if have_entries - entries:
            steps.append(
                Step(
                    "ipset",
                    "delete",
                    (name, have_entries - entries),
                    f"{name} -{len(have_entries - entries)}",
                )
            )

    # owned chains
    wanted_chains = _desired_chains(plan, kernel.chains)
    for chain_key, spec in sorted(wanted_chains.items()):
        if live.chains.get(chain_key) != spec:
            steps.append(
                Step(
                    "chain",
                    "replace",
                    spec,
                    f"{spec.table}/{spec.chain} ({len(spec.rules)} rules, IPv{spec.family})",
                )
            )
    for family, table, chain, hook in _CHAINS:
        if (family, table, chain) in live.chains and (family, table, chain) not in wanted_chains:
            remove_chains.append(
                Step(
                    "chain",
                    "remove",
                    (family, table, chain, hook),
                    f"{table}/{chain} (IPv{family})",
                )
            )
    for name in sorted(set(live.ipsets) - set(wanted_sets)):
        destroy_sets.append(Step("ipset", "destroy", name, name))

    if live.ipvs is not None:
        # A cached view of the kernel (agent/cache.py) says when its connection counts are
        # not current; then no destination is judged idle in this pass.
        known_counts = bool(getattr(kernel.ipvs, "counts_current", True))
        steps.extend(
            _ipvs_steps(plan, live.ipvs, state, now, report, in_sync, known_counts, dead)
        )
    return [
        *steps,
        *remove_chains,
        *destroy_sets,
        *delete_addrs,
        *release_tunnels,
        *restore_sysctls,
    ]


InSync = dict[ServiceKey, tuple[IPVSService, LiveService]]


def _ipvs_steps(
    plan: NodePlan,
    live: list[LiveService],
    state: AgentState,
    now: float,
    report: ReconcileReport,
    in_sync: InSync | None,
    known_counts: bool,
    dead: frozenset[DrainKey] = frozenset(),
) -> list[Step]:
    wanted = {s.key: s for s in plan.director.services}
    have = {ls.service.key: ls for ls in live}
    add_svc: list[Step] = []
    edit_svc: list[Step] = []
    add_dest: list[Step] = []
    edit_dest: list[Step] = []
    del_dest: list[Step] = []
    del_svc: list[Step] = []

    def op(
        kind: IPVSOpKind, svc: IPVSService, dest: Destination | None = None, detail: str = ""
    ) -> Step:
        return Step("ipvs", kind.value, IPVSOp(kind, svc, dest), detail)

    for key, svc in wanted.items():
        current = have.get(key)
        if current is None:
            add_svc.append(op(IPVSOpKind.ADD_SERVICE, svc))
            add_dest.extend(op(IPVSOpKind.ADD_DEST, svc, d) for d in svc.destinations)
            continue
        if in_sync is not None:
            known = in_sync.get(key)
            # The same cached kernel object and an equal plan entry: nothing to look at.
            if known is not None and known[1] is current and known[0] == svc:
                continue
        if key not in state.owned_services:
            report.warnings.append(
                f"IPVS service {key} exists but was not created by lvs-agent (kube-proxy, "
                "keepalived or a manual ipvsadm?); it is left untouched"
            )
            continue
        before = len(add_dest) + len(edit_dest) + len(del_dest) + len(edit_svc)
        draining_before = report.waiting_drains
        if service_attributes(current.service) != service_attributes(svc):
            edit_svc.append(op(IPVSOpKind.EDIT_SERVICE, svc))
        live_dests = {ld.dest.key: ld for ld in current.destinations}
        planned = {d.key for d in svc.destinations}
        for d in svc.destinations:
            ld = live_dests.get(d.key)
            state.drains.pop((key, d.address, d.port), None)  # back in the plan: not draining
            if ld is None:
                add_dest.append(op(IPVSOpKind.ADD_DEST, svc, d))
            elif ld.dest != dest_attributes(d):
                edit_dest.append(op(IPVSOpKind.EDIT_DEST, svc, d))
        for dkey, ld in live_dests.items():
            if dkey in planned:
                continue
            drain_key: DrainKey = (key, dkey[0], dkey[1])
            if drain_key in dead:
                state.drains.pop(drain_key, None)
                del_dest.append(op(IPVSOpKind.DEL_DEST, svc, ld.dest, "out by health checks"))
                continue
            started = state.drains.setdefault(drain_key, now)
            conns = ld.active_conns + ld.inactive_conns
            if (known_counts and conns == 0) or now - started >= svc.drain_timeout:
                why = (
                    "idle"
                    if known_counts and conns == 0
                    else (f"drain deadline {svc.drain_timeout}s passed")
                )
                del_dest.append(op(IPVSOpKind.DEL_DEST, svc, ld.dest, why))
            else:
                report.waiting_drains += 1
                if ld.dest.weight != 0:
                    held = f"{conns} connection(s)" if known_counts else "connections unknown"
                    edit_dest.append(
                        op(
                            IPVSOpKind.EDIT_DEST,
                            svc,
                            ld.dest._replace(weight=0),
                            f"draining, {held}",
                        )
                    )
        unchanged = before == len(add_dest) + len(edit_dest) + len(del_dest) + len(edit_svc)
        if in_sync is not None and unchanged and report.waiting_drains == draining_before:
            in_sync[key] = (svc, current)
    for key, ls in have.items():
        if key not in wanted and key in state.owned_services:
            del_svc.append(op(IPVSOpKind.DEL_SERVICE, ls.service))
    return add_svc + edit_svc + add_dest + edit_dest + del_dest + del_svc


# --------------------------------------------------------------------------- execution


def _execute(step: Step, kernel: Kernel, state: AgentState) -> None:
    t = step.target
    if step.layer == "sysctl":
        key, value, *was = cast(tuple[str, ...], t)
        if step.verb == "restore":
            state.sysctl_originals.pop(key, None)
        elif was[0] is not None:  # None: a new device's key, nothing to restore later
            state.sysctl_originals.setdefault(key, was[0])
        kernel.sysctls.set(key, value)
    elif step.layer == "tunnel":
        if step.verb == "ensure":
            dev, claim = cast(tuple[TunnelDevice, bool], t)
            if claim:
                state.tunnels.add(dev.name)
            kernel.tunnels.ensure(dev)
        else:
            dev = cast(TunnelDevice, t)
            kernel.tunnels.release(dev)
            state.tunnels.discard(dev.name)
    elif step.layer == "sync":
        if step.verb == "start":
            daemon = cast(SyncDaemon, t)
            state.sync_daemons.add(daemon.state)
            kernel.ipvs.start_daemon(daemon)
        else:
            kernel.ipvs.stop_daemon(cast(str, t))
            state.sync_daemons.discard(cast(str, t))
    elif step.layer == "address":
        device, address, prefix = cast(tuple[str, str, int], t)[:3]
        if step.verb == "add":
            kernel.addresses.add(device, address, prefix)
        elif step.verb == "take":
            lifetime = None
            if kernel.lease_lifetime is not None:
                lifetime = kernel.lease_lifetime(cast(tuple[str, str, int, str], t)[3])
                if lifetime is None:
                    raise NotHeld(f"the Lease of {address} is no longer held (or was renewed "
                                  "too long ago to add it safely); the next renewal retries")
            kernel.addresses.add(device, address, prefix, lifetime)
            if kernel.announcer is not None:
                kernel.announcer.announce(device, address)
        else:
            kernel.addresses.delete(device, address, prefix)
    elif step.layer == "ipset":
        if step.verb == "create":
            kernel.ipsets.create(*cast(tuple[str, str, str], t))
        elif step.verb == "add":
            kernel.ipsets.add(*cast(tuple[str, frozenset[str]], t))
        elif step.verb == "delete":
            kernel.ipsets.delete(*cast(tuple[str, frozenset[str]], t))
        else:
            kernel.ipsets.destroy(cast(str, t))
    elif step.layer == "chain":
        if step.verb == "replace":
            kernel.chains.replace(cast(ChainSpec, t))
        else:
            kernel.chains.remove(*cast(tuple[int, str, str, str], t))


def _run_ipvs(
    steps: list[Step], kernel: Kernel, state: AgentState, report: ReconcileReport
) -> None:
    ops = [s.target for s in steps if isinstance(s.target, IPVSOp)]
    adds = {o.service.key for o in ops if o.kind is IPVSOpKind.ADD_SERVICE}
    state.owned_services |= adds  # write-ahead: a crash after the add still knows it is ours
    for failure in kernel.ipvs.apply(ops):
        o = failure.op
        report.failures.append(f"ipvs {o}: {failure.error}")
        if o.kind is IPVSOpKind.ADD_SERVICE and isinstance(failure.error, AlreadyExists):
            state.owned_services.discard(o.service.key)  # someone else's, after all
    for o in ops:
        if o.kind is IPVSOpKind.DEL_SERVICE:
            state.owned_services.discard(o.service.key)
            for k in [k for k in state.drains if k[0] == o.service.key]:
                del state.drains[k]
        elif o.kind is IPVSOpKind.DEL_DEST and o.dest is not None:
            state.drains.pop((o.service.key, o.dest.address, o.dest.port), None)


def reconcile(
    plan: NodePlan,
    kernel: Kernel,
    state: AgentState,
    *,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
    persist: Callable[[AgentState], None] | None = None,
    in_sync: InSync | None = None,
    dead: frozenset[DrainKey] = frozenset(),
    held: frozenset[str] = frozenset(),
) -> ReconcileReport:
    """One pass: diff, then apply (unless dry_run). Never raises for kernel errors: they are
    in the report, and the next pass retries.

    `in_sync` (kept by the caller across passes over a cached kernel view) remembers services
    found equal to the plan, so a pass after a one-service change looks at one service."""
    report = ReconcileReport()
    if in_sync is not None and len(in_sync) > 2 * len(plan.director.services) + 64:
        wanted = {s.key for s in plan.director.services}
        for key in [k for k in in_sync if k not in wanted]:
            del in_sync[key]
    try:
        steps = diff(plan, kernel, state, now(), report, in_sync, dead, held)
    except KernelError as exc:
        report.failures.append(f"reading the kernel failed: {exc}")
        return report
    report.steps = steps
    if dry_run:
        return report
    ipvs_steps = [s for s in steps if s.layer == "ipvs"]
    first_ipvs = steps.index(ipvs_steps[0]) if ipvs_steps else len(steps)
    for step in steps[:first_ipvs]:
        _guarded(step, kernel, state, report)
    if ipvs_steps:
        if persist is not None:
            persist(state)
        _run_ipvs(ipvs_steps, kernel, state, report)
    for step in steps[first_ipvs + len(ipvs_steps) :]:
        _guarded(step, kernel, state, report)
    if persist is not None:
        persist(state)
    return report


def _guarded(step: Step, kernel: Kernel, state: AgentState, report: ReconcileReport) -> None:
    try:
        _execute(step, kernel, state)
    except NotHeld as exc:
        report.warnings.append(f"{step}: {exc}")
    except NotFound as exc:
        if step.verb in ("delete", "destroy", "remove", "release", "stop"):
            return  # already gone: the goal is reached
        report.failures.append(f"{step}: {exc}")
    except KernelError as exc:
        report.failures.append(f"{step}: {exc}")
