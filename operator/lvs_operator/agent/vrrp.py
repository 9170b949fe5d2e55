"""Director HA in VRRP mode: keepalived runs VRRP only, with a configuration the agent writes.

In this mode the directors of a VIP elect its holder among themselves over VRRP (no API
server in the path), so the agent hands that one job to keepalived, the program LVS users
already trust for it: :func:`keepalived_config` renders one ``vrrp_instance`` per HA group
from the node's plan (pure), and :class:`KeepalivedSupervisor` keeps one ``keepalived
--vrrp`` process running with that configuration (start, reload on change, restart when it
died, stop when no VRRP VIP is left). keepalived adds and removes the VIP addresses itself;
the agent treats them as foreign (reconcile.py) and runs the IPVS sync daemons itself, so
the configuration has no ``lvs_sync_daemon`` and no ``virtual_server``.

What keepalived does when it is killed, measured with Debian bookworm's 2.2.7 in network
namespaces (tests/vm/test_vrrp.py checks all but the third):

- SIGTERM to the parent: it sends a priority 0 advert and removes its VIPs; a backup takes
  over at once (within its skew time).
- SIGKILL to the parent only: the VRRP child gets SIGTERM (parent-death signal) and does the
  same clean release.
- SIGKILL to the VRRP child only: the parent respawns it at once; the new child removes the
  VIPs at start and enters BACKUP.
- SIGKILL to both (the process group, the OOM killer's worst case, a container's PID
  namespace going away): the VIP STAYS on the dead node while a backup takes it over, so two
  nodes answer ARP for it. keepalived removes leftover VIPs of its configuration when it
  starts, and the supervisor, on finding keepalived dead, deletes the VIPs of the last
  configuration at once (``ip addr del``), then restarts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from ..compiler.plan import HighAvailabilityPlan, NodePlan, VIPAddress
from ..kernel.errors import KernelError
from ..kernel.netstate import Addresses

__all__ = [
    "AUTH_PASS_LENGTH",
    "KeepalivedError",
    "KeepalivedSupervisor",
    "VRRPDriver",
    "instance_name",
    "keepalived_config",
]

log = logging.getLogger("lvs_operator.agent.vrrp")

AUTH_PASS_LENGTH = 8  # VRRPv2 simple text auth: keepalived keeps the first 8 characters
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
# Characters keepalived's config parser takes literally inside one token (no '#'/'!'
# comments, '{' '}' blocks, '$' definitions, '@' config ids, quotes or escapes).
_PASSWORD_OK = re.compile(r"[A-Za-z0-9_.:+=%,/-]+")
PASSWORD_CHARACTERS = "letters, digits and - _ . : + = % , /"

# Sent on becoming MASTER: a first burst of gratuitous ARPs / unsolicited NAs at once, a
# second one a second later (the keepalived default waits 5 s), the same when a lower
# priority master shows up (two masters after a partition heals), and a refresh every
# minute so switches and neighbours keep the holder's MAC.
_GLOBAL_TUNING = (
    "vrrp_garp_master_delay 1",
    "vrrp_garp_master_repeat 3",
    "vrrp_garp_lower_prio_delay 1",
    "vrrp_garp_lower_prio_repeat 3",
    "vrrp_garp_master_refresh 60",
    # Two masters (after a partition): the one giving up sends one more advert first, so
    # the winner re-sends its gratuitous ARPs and neighbours end up pointing at the winner.
    "vrrp_higher_prio_send_advert true",
)


def instance_name(group: str) -> str:
    """The vrrp_instance name of an HA group: the group itself when it is already a safe
    token (`lvs-ha-192.0.2.10`), else a sanitised form plus a hash so two groups never meet."""
    safe = _SAFE_NAME.sub("_", group)
    if safe == group and safe:
        return safe
    return f"{safe[:40]}-{hashlib.sha256(group.encode()).hexdigest()[:8]}"


def _who(vip: VIPAddress) -> str:
    return f"VirtualService {vip.owners[0]}" if vip.owners else f"VIP {vip.address}"


class _Instance:
    """One vrrp_instance being assembled: the group's settings and its VIPs."""

    def __init__(self, name: str, ha: HighAvailabilityPlan, device: str, family: int,
                 first: VIPAddress) -> None:
        self.name = name
        self.ha = ha
        self.device = device
        self.family = family
        self.first = first
        self.vips: list[tuple[VIPAddress, str]] = []


def _settings(ha: HighAvailabilityPlan) -> tuple[Any, ...]:
    return (ha.virtual_router_id, ha.priority, ha.advert_interval, ha.auth_secret_ref,
            ha.unicast_peers)


def _check_numbers(vip: VIPAddress, ha: HighAvailabilityPlan) -> None:
    who = _who(vip)
    if not 1 <= ha.virtual_router_id <= 255:
        raise ValueError(f"{who}: spec.ha.vrrp.virtualRouterID {ha.virtual_router_id} is out "
                         "of range; VRRP needs 1-255, the same on every director of the VIP")
    if not 1 <= ha.priority <= 254:
        raise ValueError(f"{who}: spec.ha.vrrp.priority {ha.priority} is out of range 1-254 "
                         "(255 is reserved for the address owner)")
    if not 1 <= ha.advert_interval <= 255:
        raise ValueError(f"{who}: spec.ha.vrrp.advertIntervalSeconds {ha.advert_interval} is "
                         "out of range 1-255")


def _password(vip: VIPAddress, ref: str, password_for: Callable[[str], str | None]) -> str:
    who = _who(vip)
    namespace, _, name = ref.rpartition("/")
    secret = f"Secret {name} in namespace {namespace}" if namespace else f"Secret {name}"
    password = password_for(ref)
    if password is None:
        raise ValueError(
            f"{who}: spec.ha.vrrp.authSecretRef {name!r}: {secret} (key `password`) is missing "
            f"or unreadable; create it (kubectl -n {namespace or '<namespace>'} create secret "
            f"generic {name} --from-literal=password=...) or remove authSecretRef"
        )
    used = password[:AUTH_PASS_LENGTH]
    if not used or not _PASSWORD_OK.fullmatch(used):
        raise ValueError(
            f"{who}: spec.ha.vrrp.authSecretRef {name!r}: the `password` in {secret} must "
            f"start with 1-{AUTH_PASS_LENGTH} characters from {PASSWORD_CHARACTERS} "
            f"(keepalived uses only the first {AUTH_PASS_LENGTH})"
        )
    return used


def keepalived_config(
    plan: NodePlan,
    *,
    router_id: str,
    device_for: Callable[[VIPAddress], str | None],
    password_for: Callable[[str], str | None],
    own_addresses: Collection[str] = (),
) -> str | None:
    """keepalived.conf for the VRRP-mode VIPs of `plan`, or None when it has none.

    `device_for` names the device of a VIP (its interface, else the route's device; None:
    unknown), `password_for` reads the `password` key of a Secret given as namespace/name
    (None: missing). `own_addresses` are this node's addresses, left out of unicast_peer:
    the VirtualService lists every director, and keepalived warns on every advert it gets
    back from itself. Raises ValueError, naming the object and field, for what keepalived
    would refuse or run wrongly (a virtual_router_id twice on one device, a missing Secret).
    """
    instances: dict[str, _Instance] = {}
    for vip in sorted(plan.director.vips, key=lambda v: (v.ha.group if v.ha else "", v.address)):
        ha = vip.ha
        if ha is None or ha.mode != "VRRP":
            continue
        _check_numbers(vip, ha)
        device = device_for(vip)
        if not device:
            raise ValueError(f"{_who(vip)}: VIP {vip.address}: no route toward it tells which "
                             "device should hold it; set spec.directors.interface")
        family = ipaddress.ip_address(vip.address).version
        name = instance_name(ha.group)
        inst = instances.get(name)
        if inst is None:
            inst = instances[name] = _Instance(name, ha, device, family, vip)
        elif _settings(inst.ha) != _settings(ha) or inst.family != family:
            raise ValueError(
                f"{_who(vip)}: VIP {vip.address} is in VRRP group {ha.group} with VIP "
                f"{inst.first.address} of {_who(inst.first)}, but spec.ha.vrrp differs (or the "
                "address family does); VIPs of one group must share their VRRP settings"
            )
        inst.vips.append((vip, device))

    if not instances:
        return None

    seen: dict[tuple[str, int, int], _Instance] = {}
    for inst in instances.values():
        key = (inst.device, inst.family, inst.ha.virtual_router_id)
        other = seen.get(key)
        if other is not None:
            raise ValueError(
                f"{_who(inst.first)}: spec.ha.vrrp.virtualRouterID {inst.ha.virtual_router_id} "
                f"on device {inst.device} is already used by {_who(other.first)} (VIP "
                f"{other.first.address}); each VRRP VIP on a device needs its own "
                "virtualRouterID (1-255)"
            )
        seen[key] = inst

    rid = _SAFE_NAME.sub("_", router_id) or "lvs-agent"
    lines = [
        f"# keepalived for lvs-agent on {rid}: VRRP only. Generated; every change is rewritten.",
        "# IPVS, health checks and the connection sync daemons are the agent's, not keepalived's.",
        # Names pid/.data files and the syslog ident: several keepalived (one per netns) on a
        # host never share them. It cannot change on reload, hence the stable router_id.
        f"instance {rid}",
        "global_defs {",
        f"    router_id {rid}",
        "    data_use_instance",
        # A device that is missing (yet) puts its instance in FAULT instead of failing the
        # whole configuration.
        "    dynamic_interfaces",
        *(f"    {t}" for t in _GLOBAL_TUNING),
        "}",
    ]
    mine = {str(ipaddress.ip_address(a)) for a in own_addresses}
    for name in sorted(instances):
        lines += ["", *_render_instance(instances[name], password_for, mine)]
    return "\n".join(lines) + "\n"


def _render_instance(inst: _Instance, password_for: Callable[[str], str | None],
                     mine: set[str]) -> list[str]:
    ha, who = inst.ha, _who(inst.first)
    owners = sorted({o for vip, _ in inst.vips for o in vip.owners})
    out = [f"vrrp_instance {inst.name} {{"]
    if owners:
        out.append(f"    # {', '.join(owners)}")
    out += [
        # Every director starts as BACKUP; the highest priority wins (and takes the VIP back).
        "    state BACKUP",
        f"    interface {inst.device}",
        f"    virtual_router_id {ha.virtual_router_id}",
        f"    priority {ha.priority}",
        f"    advert_int {ha.advert_interval}",
    ]
    if inst.family == 6:
        out.append("    native_ipv6")  # VRRPv3 over IPv6 (RFC 5798)
    if ha.auth_secret_ref:
        if inst.family == 6:
            raise ValueError(
                f"{who}: spec.ha.vrrp.authSecretRef: VRRP for IPv6 is version 3, which has no "
                "authentication (RFC 5798); remove authSecretRef"
            )
        password = _password(inst.first, ha.auth_secret_ref, password_for)
        out += ["    authentication {", "        auth_type PASS",
                f"        auth_pass {password}", "    }"]
    peers = []
    for peer in ha.unicast_peers:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            raise ValueError(f"{who}: spec.ha.vrrp.unicastPeers: {peer!r} is not an IP "
                             "address") from None
        if address.version != inst.family:
            raise ValueError(f"{who}: spec.ha.vrrp.unicastPeers: {peer} is IPv{address.version}"
                             f" but the VIP is IPv{inst.family}; list peers of the VIP's family")
        if str(address) not in mine:
            peers.append(str(address))
    if peers:
        out += ["    unicast_peer {", *(f"        {p}" for p in sorted(peers)), "    }",
                "    check_unicast_src"]  # adverts only from the listed peers
    out.append("    virtual_ipaddress {")
    for vip, device in inst.vips:
        out.append(f"        {vip.address}/{vip.prefix_length} dev {device}")
    out += ["    }", "}"]
    return out


# --------------------------------------------------------------------------- the process


class KeepalivedError(RuntimeError):
    """keepalived could not be started (not installed, run dir unusable); says what to do."""


class _Process(Protocol):
    """What the supervisor needs of subprocess.Popen (tests pass a fake)."""

    pid: int

    def poll(self) -> int | None: ...


_TRANSITION = re.compile(r"\((?P<name>[^()\s]+)\) Entering (?P<state>MASTER|BACKUP|FAULT) STATE")
_STARTING = b"Starting Keepalived v"
_STOPPED = "Stopped Keepalived"
_VIP_LINE = re.compile(r"^\s+(?P<cidr>[0-9A-Fa-f:.]+/\d+) dev (?P<dev>\S+)\s*$", re.MULTILINE)
_INSTANCE_LINE = re.compile(r"^vrrp_instance (\S+) \{$", re.MULTILINE)
QUICK_EXIT = 10.0  # seconds: dying sooner after a start delays the next start (backoff)
MAX_BACKOFF = 30.0
CHILD_GRACE = 3.0  # seconds an orphaned VRRP child may take to stop by itself
_LOG_READ = 1 << 20  # bytes of keepalived's log read per scan, at most


def _quiet_run(argv: Sequence[str]) -> int:
    try:
        return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=10, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1


def _describe(status: int | None) -> str:
    if status is None:
        return "exited"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with status {status}"


class KeepalivedSupervisor:
    """Keeps one ``keepalived --vrrp`` running in `netns` (None: the agent's own) with the
    configuration last given to :meth:`apply`.

    Files live in `run_dir` (made 0700: the configuration holds the VRRP password):
    keepalived.conf, keepalived.pid (the parent), vrrp.pid (the VRRP child) and
    keepalived.log (keepalived's console output, not syslog: a pod has none). keepalived
    runs in the foreground in a session of its own, so a signal to the agent's process
    group does not reach it and an agent that restarts finds it by its pid file and
    adopts it instead of starting a second one. Call from one thread.
    """

    CONFIG = "keepalived.conf"
    PID = "keepalived.pid"
    VRRP_PID = "vrrp.pid"
    LOG = "keepalived.log"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        netns: str | None = None,
        binary: str = "keepalived",
        stop_timeout: float = 10.0,
        log_limit: int = 4 << 20,
        popen: Callable[..., _Process] = subprocess.Popen,
        kill: Callable[[int, int], None] = os.kill,
        run: Callable[[Sequence[str]], int] = _quiet_run,
        proc_root: str | os.PathLike[str] = "/proc",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.netns = netns
        self.binary = binary
        self.stop_timeout = stop_timeout
        self.log_limit = log_limit
        self._popen = popen
        self._kill = kill
        self._run = run
        self._proc_root = Path(proc_root)
        self._clock = clock
        self._sleep = sleep
        self._proc: _Process | None = None  # ours, when we started it in this life
        self._pid: int | None = None  # ours or adopted
        self._applied: str | None = None  # what keepalived read (or reads as it starts)
        self._reload_pending = False
        self._looked_for_orphan = False
        self._started_at = 0.0
        self._backoff = 0.0
        self._not_before = 0.0
        self._log_start = 0  # where the running keepalived's output begins in its log
        self._log_pos = 0  # how far _scan_log has read
        self._log_partial = ""
        self._states: dict[str, str] = {}
        self._transitions: list[str] = []

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.run_dir / self.CONFIG

    @property
    def log_path(self) -> Path:
        return self.run_dir / self.LOG

    @property
    def pid_path(self) -> Path:
        return self.run_dir / self.PID

    @property
    def vrrp_pid_path(self) -> Path:
        return self.run_dir / self.VRRP_PID

    @property
    def pid(self) -> int | None:
        """The keepalived parent's pid while it runs (ours or adopted)."""
        return self._pid if self.running() else None

    def argv(self) -> list[str]:
        """The command line: VRRP only, foreground, console log, no syslog/SNMP/DBus, our own
        pid files; keepalived's --namespace enters the netns itself (and gives itself a
        private /run/keepalived there)."""
        out = [
            self.binary, "--vrrp", "--dont-fork", "--log-console", "--no-syslog",
            f"--use-file={self.config_path}", f"--pid={self.pid_path}",
            f"--vrrp_pid={self.vrrp_pid_path}",
        ]
        if self.netns is not None:
            out.append(f"--namespace={self.netns}")
        return out

    # ------------------------------------------------------------------ public

    def apply(self, config: str | None) -> list[str]:
        """Make keepalived run `config` (None: not run at all). Returns what it did, for the
        agent's log: started, adopted, reloaded, restarted, stopped, VRRP state changes."""
        events: list[str] = []
        self._adopt(events)
        if config is None:
            self._stop(events)
        else:
            self._ensure(config, events)
        self._scan_log()
        events += self._transitions
        self._transitions = []
        return events

    def stop(self) -> list[str]:
        """Stop keepalived (SIGTERM: it releases its VIPs and tells the backups with a
        priority 0 advert; SIGKILL after `stop_timeout`). For the agent's orderly shutdown."""
        events: list[str] = []
        self._adopt(events)
        self._stop(events)
        return events

    def running(self) -> bool:
        if self._pid is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        return self._is_keepalived(self._pid)

    def state(self) -> dict[str, str]:
        """vrrp_instance -> MASTER | BACKUP | FAULT, as keepalived last logged it, for the
        instances of the current configuration (empty while keepalived is not running)."""
        self._scan_log()
        if not self.running() or self._applied is None:
            return {}
        names = set(_INSTANCE_LINE.findall(self._applied))
        return {k: v for k, v in self._states.items() if k in names}

    # ------------------------------------------------------------------ internals

    def _ensure(self, config: str, events: list[str]) -> None:
        if self._pid is not None and not self.running():
            self._died(events)
        if self._pid is None:
            now = self._clock()
            if now < self._not_before:
                return  # backing off; _died said until when
            self._write(config)
            self._start(events)
            self._applied = config
            return
        if config != self._applied:
            self._write(config)
            self._applied = config
            self._reload_pending = True
        # Not before keepalived has its SIGHUP handler (it kills a keepalived still
        # starting): then the next pass reloads.
        if self._reload_pending and self._ready():
            self._signal(signal.SIGHUP)
            self._reload_pending = False
            events.append(f"keepalived (pid {self._pid}): reloaded its configuration")

    def _start(self, events: list[str]) -> None:
        self._remove(self.pid_path, self.vrrp_pid_path)
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > self.log_limit:
                os.replace(self.log_path, self.log_path.with_name(self.LOG + ".1"))
        try:
            log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        except OSError as exc:
            raise KeepalivedError(f"cannot open {self.log_path}: {exc}") from exc
        with log:
            self._log_start = self._log_pos = log.tell()
            try:
                proc = self._popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   close_fds=True)
            except FileNotFoundError as exc:
                raise KeepalivedError(
                    f"{self.binary} not found: VRRP mode runs keepalived, install it in the "
                    "agent's image (Debian: apt-get install keepalived)"
                ) from exc
            except OSError as exc:
                raise KeepalivedError(f"cannot start {self.binary}: {exc}") from exc
        self._proc, self._pid = proc, proc.pid
        self._started_at = self._clock()
        self._reload_pending = False
        self._log_partial = ""
        self._states = {}
        where = f" in netns {self.netns}" if self.netns else ""
        events.append(f"keepalived: started pid {proc.pid}{where}")

    def _died(self, events: list[str], *, restart: bool = True) -> None:
        """keepalived is gone without being asked: whatever killed it may have left its VIPs
        (SIGKILL to the whole group does), so delete them now, and back off if it keeps dying."""
        pid, status = self._pid, self._proc.poll() if self._proc is not None else None
        lived = self._clock() - self._started_at if self._proc is not None else QUICK_EXIT
        tail = self._log_tail()
        msg = f"keepalived (pid {pid}) {_describe(status)}"
        if tail:
            msg += f"; its last log lines: {' | '.join(tail)}"
        events.append(msg)
        self._end_vrrp_child(events)
        events += self._release_vips(self._applied)
        self._forget()
        if restart and lived < QUICK_EXIT:
            self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
            self._not_before = self._clock() + self._backoff
            events.append(f"keepalived: it ran {lived:.1f} s; starting it again in "
                          f"{self._backoff:.0f} s")
        else:
            self._backoff = 0.0

    def _stop(self, events: list[str]) -> None:
        if self._pid is None:
            self._remove(self.config_path, self.pid_path, self.vrrp_pid_path)
            self._applied = None
            return
        if not self.running():
            self._died(events, restart=False)
            self._not_before = self._backoff = 0.0
            self._remove(self.config_path)
            return
        pid = self._pid
        self._signal(signal.SIGTERM)
        if self._wait_gone(self.stop_timeout):
            events.append(f"keepalived (pid {pid}): stopped")
        else:
            self._signal(signal.SIGKILL, group=True)
            self._wait_gone(1.0)
            events.append(f"keepalived (pid {pid}): did not stop within {self.stop_timeout:g} "
                          "s of SIGTERM; killed")
            events += self._release_vips(self._applied)
        self._forget()
        self._not_before = 0.0
        self._backoff = 0.0
        self._remove(self.config_path)

    def _forget(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.poll()  # reap
        self._proc = None
        self._pid = None
        self._applied = None
        self._reload_pending = False
        self._states = {}
        self._remove(self.pid_path, self.vrrp_pid_path)

    def _adopt(self, events: list[str]) -> None:
        """Once per life: a keepalived of this run dir left by a previous agent is ours."""
        if self._looked_for_orphan:
            return
        self._looked_for_orphan = True
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            applied: str | None = self.config_path.read_text()
        except OSError:
            applied = None
        self._pid, self._applied = pid, applied
        if not self._is_keepalived(pid):
            # A keepalived from before died (or the host rebooted); its VIPs may be left.
            events.append(f"keepalived: pid file {self.pid_path} names pid {pid}, which is "
                          "not our keepalived (any more)")
            self._end_vrrp_child(events)
            events += self._release_vips(applied)
            self._forget()
            return
        self._log_start = self._log_pos = self._last_start_offset()
        self._reload_pending = applied is None
        events.append(f"keepalived: adopted pid {pid}, left running by a previous agent")

    def _end_vrrp_child(self, events: list[str]) -> None:
        """The VRRP child of a parent that died gets SIGTERM from the kernel (parent-death
        signal) and stops cleanly, releasing its VIPs: give it CHILD_GRACE seconds, then kill
        it, so it never runs beside the keepalived started next."""
        try:
            child = int(self.vrrp_pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if child == self._pid or not self._is_keepalived(child):
            return
        deadline = self._clock() + CHILD_GRACE
        for _ in range(10_000):
            if not self._is_keepalived(child):
                return
            if self._clock() >= deadline:
                break
            self._sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            self._kill(child, signal.SIGKILL)
        events.append(f"keepalived: killed its VRRP child (pid {child}), still running "
                      f"{CHILD_GRACE:g} s after its parent died")

    def _is_keepalived(self, pid: int) -> bool:
        """pid is a live keepalived reading our configuration file (not a reused pid)."""
        base = self._proc_root / str(pid)
        try:
            cmdline = (base / "cmdline").read_bytes()
            stat = (base / "stat").read_text()
        except OSError:
            return False
        fields = stat.rpartition(")")[2].split()
        if not fields or fields[0] in ("Z", "X", "x"):
            return False
        args = cmdline.split(b"\0")
        return (os.path.basename(args[0]).startswith(b"keepalived")
                and f"--use-file={self.config_path}".encode() in args)

    def _pgrp(self, pid: int) -> int | None:
        try:
            fields = (self._proc_root / str(pid) / "stat").read_text().rpartition(")")[2].split()
            return int(fields[2])
        except (OSError, ValueError, IndexError):
            return None

    def _ready(self) -> bool:
        """keepalived has set up its signal handlers (it has started the VRRP child)."""
        try:
            return self.vrrp_pid_path.read_text().strip().isdigit()
        except OSError:
            return False

    def _signal(self, sig: int, *, group: bool = False) -> None:
        pid = self._pid
        if pid is None:
            return
        targets = [pid]
        if group:
            # Ours runs in its own session (pgid = pid): the group is the parent and the
            # VRRP child. An adopted one started elsewhere: both pids from the pid files.
            if self._proc is not None or self._pgrp(pid) == pid:
                targets = [-pid]
            else:
                with contextlib.suppress(OSError, ValueError):
                    targets.append(int(self.vrrp_pid_path.read_text().strip()))
        for target in targets:
            with contextlib.suppress(ProcessLookupError):
                self._kill(target, sig)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = self._clock() + timeout
        for _ in range(100_000):  # bounded even with a clock that does not move
            if not self.running():
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(0.05)
        return not self.running()

    def _release_vips(self, config: str | None) -> list[str]:
        """Delete the VIPs of `config` that a killed keepalived left on the devices."""
        if not config:
            return []
        out = []
        prefix = ["ip", "-n", self.netns] if self.netns else ["ip"]
        for m in _VIP_LINE.finditer(config):
            cidr, dev = m.group("cidr"), m.group("dev")
            if self._run([*prefix, "addr", "del", cidr, "dev", dev]) == 0:
                out.append(f"keepalived: removed VIP {cidr} from {dev}, left behind by a "
                           "keepalived that did not stop cleanly")
        return out

    def _write(self, config: str) -> None:
        """Atomically (rename), 0600: keepalived may re-read it at any moment, and it holds
        the VRRP password."""
        try:
            self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                if self.config_path.read_text() == config:
                    return
            tmp = self.run_dir / f".{self.CONFIG}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(config)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.config_path)
        except OSError as exc:
            raise KeepalivedError(f"cannot write {self.config_path}: {exc}") from exc

    @staticmethod
    def _remove(*paths: Path) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # ------------------------------------------------------------------ the log

    def _last_start_offset(self) -> int:
        """Where the running keepalived's output begins in the log (an adopted one)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return 0
        at = data.rfind(_STARTING)
        if at < 0:
            return 0
        return data.rfind(b"\n", 0, at) + 1

    def _scan_log(self) -> None:
        """Read what keepalived logged since the last scan; note its state changes."""
        try:
            f = open(self.log_path, "rb")  # noqa: SIM115
        except OSError:
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < self._log_pos:  # rotated or truncated under us
                self._log_start = self._log_pos = 0
                self._log_partial = ""
            f.seek(self._log_pos)
            data = f.read(min(size - self._log_pos, _LOG_READ))
        self._log_pos += len(data)
        lines = (self._log_partial + data.decode("utf-8", "replace")).split("\n")
        self._log_partial = lines.pop()
        for line in lines:
            m = _TRANSITION.search(line)
            if m:
                name, new = m.group("name"), m.group("state")
                if self._states.get(name) != new:
                    self._transitions.append(f"keepalived: vrrp_instance {name} is {new}")
                self._states[name] = new
            elif _STOPPED in line:
                self._states = {}

    def _log_tail(self, lines: int = 5) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(min(max(self._log_start, size - 4096), size))
                data = f.read(4096)
        except OSError:
            return []
        return [s.strip() for s in data.decode("utf-8", "replace").splitlines() if s.strip()][
            -lines:
        ]


class VRRPDriver:
    """What the agent loop calls on every pass: the node's keepalived configuration from its
    plan (VRRP-mode VIPs only), applied through one supervisor. Cheap when nothing changed;
    restarts a keepalived that died. Errors come back as pass failures, never raise."""

    def __init__(
        self,
        supervisor: KeepalivedSupervisor,
        *,
        router_id: str,
        addresses: Addresses,
        password_for: Callable[[str], str | None] = lambda ref: None,
    ) -> None:
        self._supervisor = supervisor
        self._router_id = router_id
        self._addresses = addresses
        self._password_for = password_for

    def apply(self, plan: NodePlan) -> list[str]:
        """Failures of this pass (an empty list when keepalived runs what the plan says)."""
        try:
            config = None
            if any(v.ha is not None and v.ha.mode == "VRRP" for v in plan.director.vips):
                config = keepalived_config(
                    plan, router_id=self._router_id, device_for=self._device,
                    password_for=self._password_for, own_addresses=self._own())
            events = self._supervisor.apply(config)
        except (ValueError, KeepalivedError, KernelError) as exc:
            return [f"VRRP: {exc}"]
        for event in events:
            log.info("keepalived: %s", event, extra={"vrrp": event})
        return []

    def stop(self) -> None:
        """Orderly shutdown: keepalived releases its VIPs (priority 0 advert)."""
        for event in self._supervisor.stop():
            log.info("keepalived: %s", event)

    def _device(self, vip: VIPAddress) -> str | None:
        return vip.interface or self._addresses.route_device(vip.address)

    def _own(self) -> list[str]:
        return [a.address for a in self._addresses.list()]
