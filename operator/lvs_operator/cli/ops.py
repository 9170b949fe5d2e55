"""lvsctl's operations on this host's IPVS table (or a named network namespace's), with the
faces LVS people know: `list` is `ipvsadm -L -n`, `connections` is `ipvsadm -L -n -c`, `zero`
is `ipvsadm -Z`, `save` is `ipvsadm-save -n`, and `apply -f FILE` is `ipvsadm-restore` done
as a diff (only what differs is added, edited or deleted, so connections on untouched
services and destinations never notice).

Layouts follow ipvsadm 1.31 byte for byte (ipvsadm.c: list_all, print_title,
print_service_entry, print_largenum, list_conn, print_conn), in its sort order (libipvs'
ipvs_cmp_services/ipvs_cmp_dests, as compiler/render.py implements them). `-n` is always on:
nothing is ever looked up in DNS or /etc/services. Two deliberate differences: counters are
the kernel's 64-bit values everywhere (ipvsadm 1.31 reads a destination's packet and
connection counters from IPVS_DEST_ATTR_STATS64 with nla_get_u32, so past 2**32 it shows
them modulo 2**32), and `save` prints `-x`/`-y` thresholds when set (ipvsadm-save drops
them; see compiler/render.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import cmp_to_key
from pathlib import Path
from typing import NamedTuple, Protocol

from ..agent.reconcile import Kernel, reconcile
from ..agent.state import AgentState
from ..compiler.ipvsadm_parse import parse_ipvsadm
from ..compiler.plan import (
    FORWARD_ROUTE,
    Destination,
    DirectorPlan,
    IPVSService,
    NodePlan,
    ServiceKey,
)
from ..compiler.render import compare_dests, compare_services, ipvsadm_save
from ..kernel.errors import KernelError, NotFound
from ..kernel.fake import FakeAddresses, FakeChains, FakeIPSets, FakeSysctls, FakeTunnels
from ..kernel.ipvs import (
    IPVSOp,
    IPVSOpKind,
    IPVSStats,
    IPVSTable,
    LiveConnection,
    LiveDestination,
    LiveService,
    OpFailure,
    SyncDaemon,
)

__all__ = [
    "COMMANDS",
    "VIEWS",
    "ApplyResult",
    "InfoTable",
    "add_subcommands",
    "apply_rules",
    "format_connections",
    "format_list",
    "format_save",
    "largenum",
    "list_table",
    "op_line",
    "open_table",
    "parse_service",
    "run",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

VIEWS = ("plain", "stats", "rate", "thresholds", "persistent-conn", "tun-info")


class InfoTable(IPVSTable, Protocol):
    """An IPVS table that also answers IPVS_CMD_GET_INFO (the real adapter and the fake)."""

    def info(self) -> tuple[str, int]:
        """(version "X.Y.Z", connection table size), for `ipvsadm -L`'s first line."""
        ...


@contextlib.contextmanager
def open_table(netns: str | None) -> Iterator[InfoTable]:
    """The IPVS table the commands work on (tests put a fake here). pyroute2 is imported
    only here, so `lvsctl plan` does not pay for it."""
    from ..kernel.real_ipvs import NetlinkIPVS

    with NetlinkIPVS(netns) as table:
        yield table


# --------------------------------------------------------------------------- numbers


def largenum(value: int, exact: bool = False) -> str:
    """print_largenum: 9 columns, scaled to K/M/G/T (truncating) from 100 million on;
    --exact prints every digit, one space before, at least 9 columns."""
    if exact:
        digits = str(value)
        return digits.rjust(9 if len(digits) <= 8 else len(digits) + 1)
    if value < 100_000_000:
        return f"{value:9d}"
    if value < 1_000_000_000:
        return f"{value // 1_000:8d}K"
    if value < 100_000_000_000:
        return f"{value // 1_000_000:8d}M"
    if value < 100_000_000_000_000:
        return f"{value // 1_000_000_000:8d}G"
    return f"{value // 1_000_000_000_000:8d}T"


def _ntop(address: str) -> str:
    """The address as glibc's inet_ntop writes it (what ipvsadm prints)."""
    af = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_ntop(af, socket.inet_pton(af, address))


def _addrport(address: str, port: int) -> str:
    """addrport_to_anyname with FMT_NUMERIC: a.b.c.d:port or [v6]:port."""
    if ":" in address:
        return f"[{_ntop(address)}]:{port}"
    return f"{_ntop(address)}:{port}"


# --------------------------------------------------------------------------- list

_PROTO_NAME = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}
_FWD_NAME = {"masq": "Masq", "local": "Local", "tunnel": "Tunnel", "route": "Route"}
_TUN_FLAGS = {"none": "-c", "csum": "+c", "remcsum": "r+c", "": "-c"}
_SCHED_FLAG_NAMES = {"sh": ("sh-fallback", "sh-port"), "mh": ("mh-fallback", "mh-port")}
_STATS_HEAD = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
_RATE_HEAD = ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
_PROT = "Prot LocalAddress:Port"
_REMOTE = "  -> RemoteAddress:Port"


def _title(view: str) -> str:
    """print_title."""
    if view in ("stats", "rate"):
        head = _STATS_HEAD if view == "stats" else _RATE_HEAD
        return f"{_PROT:<33}" + "".join(f" {h:>8}" for h in head) + f"\n{_REMOTE}"
    if view == "thresholds":
        return (
            f"{_PROT:<33} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} "
            f"{'InActConn':<10}\n{_REMOTE}"
        )
    if view == "persistent-conn":
        return (
            f"{_PROT:<33} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} "
            f"{'InActConn':<10}\n{_REMOTE}"
        )
    if view == "tun-info":
        return (
            f"{_PROT} Scheduler Flags\n{_REMOTE}           Forward TunnelInfo    Weight "
            "ActiveConn InActConn"
        )
    return f"{_PROT} Scheduler Flags\n{_REMOTE}           Forward Weight ActiveConn InActConn"


def _service_name(s: IPVSService) -> str:
    key = s.key
    if key.fwmark:
        return f"FWM  {key.fwmark}" + (" IPv6" if key.family == 6 else "")
    name = f"{_PROTO_NAME.get(key.protocol, '?'):<4} {_addrport(key.address, key.port)}"
    return name if key.family == 6 else name[:33]


def _sched_flags(s: IPVSService) -> str | None:
    """print_sched_flags: sh and mh name their two flags (and print no third), every other
    scheduler says flag-N; None when no scheduler flag bit is set."""
    if not s.flags:
        return None
    named = _SCHED_FLAG_NAMES.get(s.scheduler)
    return ",".join(f for f in s.flags if named is None or f in named)


def _counters(stats: IPVSStats, view: str, exact: bool) -> str:
    values = stats[:5] if view == "stats" else stats[5:]
    return "".join(largenum(v, exact) for v in values)


def _service_line(ls: LiveService, view: str, exact: bool) -> str:
    s = ls.service
    name = _service_name(s)
    if view in ("stats", "rate"):
        return f"{name:<33}" + _counters(ls.stats, view, exact)
    line = f"{name} {s.scheduler}"
    flags = _sched_flags(s)
    if flags is not None:
        line += f" ({flags})"
    if s.persistence_timeout:
        line += f" persistent {s.persistence_timeout}"
        if s.key.family == 4 and s.persistence_prefix != 32:
            line += f" mask {ipaddress.IPv4Network(f'0.0.0.0/{s.persistence_prefix}').netmask}"
        if s.key.family == 6 and s.persistence_prefix != 128:
            line += f" mask {s.persistence_prefix}"
        if s.persistence_engine:
            line += f" pe {s.persistence_engine}"
    if s.one_packet:
        line += " ops"
    return line


def _tun_info(d: Destination) -> str:
    """fwd_tun_info (at most 15 characters, like its snprintf into 16 bytes)."""
    if d.forward != "tunnel":
        return "n/a"
    if d.tunnel_type == "gue":
        info = f"gue:{d.tunnel_port}:{_TUN_FLAGS.get(d.tunnel_checksum, '-c')}"
    elif d.tunnel_type == "gre":
        info = f"gre:{_TUN_FLAGS.get(d.tunnel_checksum, '-c')}"
    elif d.tunnel_type in ("", "ipip"):
        info = "ipip"
    else:
        return "n/a"
    return info[:15]


def _dest_line(ld: LiveDestination, view: str, exact: bool) -> str:
    d = ld.dest
    name = _addrport(d.address, d.port)
    if ":" not in d.address:
        name = name[:28]
    head = f"  -> {name:<28}"
    fwd = _FWD_NAME.get(d.forward, "(null)")
    if view == "stats":
        return head + _counters(ld.stats, view, exact)
    if view == "rate":
        st = ld.stats  # ipvsadm prints the three packet/connection rates unscaled
        return (
            f"{head} {st.cps:8d} {st.inpps:8d} {st.outpps:8d}"
            + largenum(st.inbps, exact)
            + largenum(st.outbps, exact)
        )
    if view == "thresholds":
        return (
            f"{head} {d.upper_threshold:<10} {d.lower_threshold:<10} "
            f"{ld.active_conns:<10} {ld.inactive_conns:<10}"
        )
    if view == "persistent-conn":
        return (
            f"{head} {d.weight:<9} {ld.persistent_conns:<11} {ld.active_conns:<10} "
            f"{ld.inactive_conns:<10}"
        )
    if view == "tun-info":
        return (
            f"{head} {fwd:<7} {_tun_info(d):<13} {d.weight:<6} {ld.active_conns:<10} "
            f"{ld.inactive_conns:<10}"
        )
    return f"{head} {fwd:<7} {d.weight:<6} {ld.active_conns:<10} {ld.inactive_conns:<10}"


def _sorted(services: Sequence[LiveService]) -> list[LiveService]:
    def by_service(a: LiveService, b: LiveService) -> int:
        return compare_services(a.service, b.service)

    def by_dest(a: LiveDestination, b: LiveDestination) -> int:
        return compare_dests(a.dest, b.dest)

    return [
        ls._replace(destinations=tuple(sorted(ls.destinations, key=cmp_to_key(by_dest))))
        for ls in sorted(services, key=cmp_to_key(by_service))
    ]


def format_list(
    services: Sequence[LiveService],
    view: str = "plain",
    *,
    exact: bool = False,
    header: tuple[str, int] | None = None,
) -> str:
    """What `ipvsadm -L -n [--stats|--rate|...] [--exact]` prints for these services: the
    version line (list_all; none when one service is listed), the title, then each service
    and its destinations in ipvsadm's order."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
    lines = []
    if header is not None:
        lines.append(f"IP Virtual Server version {header[0]} (size={header[1]})")
    lines.append(_title(view))
    for ls in _sorted(services):
        lines.append(_service_line(ls, view, exact))
        lines.extend(_dest_line(ld, view, exact) for ld in ls.destinations)
    return "\n".join(lines) + "\n"


def list_table(
    table: InfoTable,
    view: str = "plain",
    *,
    exact: bool = False,
    service: ServiceKey | None = None,
) -> str:
    """`lvsctl list`: the whole table with the version line, or one service (NotFound, as
    ipvsadm's "No such service", when it is not there)."""
    live = table.dump()
    if service is None:
        return format_list(live, view, exact=exact, header=table.info())
    chosen = [ls for ls in live if ls.service.key == service]
    if not chosen:
        raise NotFound(f"No such service: {_describe(service)}")
    return format_list(chosen, view, exact=exact)


# --------------------------------------------------------------------------- connections


def format_connections(connections: Sequence[LiveConnection]) -> str:
    """list_conn/print_conn: `ipvsadm -L -n -c`, entries in the kernel's order."""
    lines = [
        "IPVS connection entries",
        f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination",
    ]
    for c in connections:
        seconds = max(int(c.expires), 0)
        expire = f"{seconds // 60:02d}:{seconds % 60:02d}"
        client = _addrport(c.client, c.client_port)
        virtual = _addrport(c.virtual, c.virtual_port)
        dest = _addrport(c.destination, c.destination_port)
        lines.append(f"{c.protocol:<3} {expire:<6} {c.state:<11} {client:<18} {virtual:<18} {dest}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- save


def _as_added(d: Destination) -> Destination:
    """The kernel turns -g to a local address into forwarding "local" (LOCALNODE); ipvsadm
    saves it as -g, and a restore adds it as -g again."""
    return d._replace(forward=FORWARD_ROUTE) if d.forward == "local" else d


def _configured(ls: LiveService) -> IPVSService:
    return ls.service._replace(destinations=tuple(_as_added(ld.dest) for ld in ls.destinations))


def format_save(services: Sequence[LiveService]) -> str:
    """`ipvsadm-save -n` (ipvsadm -S -n) of a live table, through the same renderer as
    `lvsctl plan --format ipvsadm`, so live and desired state print alike."""
    return "".join(f"{line}\n" for line in ipvsadm_save(_configured(ls) for ls in services))


# --------------------------------------------------------------------------- apply


class ApplyResult(NamedTuple):
    changes: list[str]  # ipvsadm lines of every operation attempted (dry run: planned), in order
    failures: list[str]  # what the kernel refused
    problems: list[str]  # what is wrong with the file; when any, nothing was done


class _Snapshot:
    """The table read once (forwarding "local" read back as the -g it was added as), so the
    diff sees what a restore would write; writes go through."""

    def __init__(self, table: IPVSTable) -> None:
        self._table = table
        self._live: list[LiveService] | None = None

    def probe(self) -> None:
        self._table.probe()

    def dump(self) -> list[LiveService]:
        if self._live is None:
            self._live = [
                ls._replace(
                    destinations=tuple(
                        ld._replace(dest=_as_added(ld.dest)) for ld in ls.destinations
                    )
                )
                for ls in self._table.dump()
            ]
        return list(self._live)

    def apply(self, ops: Sequence[IPVSOp]) -> list[OpFailure]:
        self._live = None
        return self._table.apply(ops)

    def zero(self, service: ServiceKey | None = None) -> None:
        self._table.zero(service)

    def connections(self) -> list[LiveConnection]:
        return self._table.connections()

    def daemons(self) -> list[SyncDaemon]:
        return self._table.daemons()

    def start_daemon(self, d: SyncDaemon) -> None:
        self._table.start_daemon(d)

    def stop_daemon(self, state: str) -> None:
        self._table.stop_daemon(state)


def op_line(op: IPVSOp) -> str:
    """One IPVS operation as the ipvsadm-restore line that does it (-A/-E/-D, -a/-e/-d)."""
    dests = () if op.dest is None else (_as_added(op.dest),)
    lines = ipvsadm_save([op.service._replace(destinations=dests)])
    head = lines[0]  # -A <service> -s <scheduler> ...
    service = head[3 : head.index(" -s ")]
    kind = op.kind
    if kind is IPVSOpKind.ADD_SERVICE:
        return head
    if kind is IPVSOpKind.EDIT_SERVICE:
        return "-E" + head[2:]
    if kind is IPVSOpKind.DEL_SERVICE:
        return f"-D {service}"
    dest = lines[1]  # -a <service> -r <server> <method> -w <weight> ...
    if kind is IPVSOpKind.ADD_DEST:
        return dest
    if kind is IPVSOpKind.EDIT_DEST:
        return "-e" + dest[2:]
    server = dest.split(" -r ", 1)[1].split(" ", 1)[0]
    return f"-d {service} -r {server}"


def apply_rules(
    table: IPVSTable,
    text: str,
    *,
    source: str = "-",
    prune: bool = False,
    dry_run: bool = False,
) -> ApplyResult:
    """Make the live table hold what an ipvsadm-save file describes, minimally: the agent's
    own diff (agent/reconcile.py) with the file as the plan. Services the file does not name
    are left alone unless `prune`; a destination the file drops is deleted at once (no
    drain: `ipvsadm -d` semantics)."""
    parsed = parse_ipvsadm(text)
    problems = [f"{source}:{p.line_no}: {p.message}: {p.line.strip()}" for p in parsed.problems]
    problems += [
        f"{source}:{m.line_no}: not an IPVS rule (lvsctl apply changes the IPVS table only): "
        f"{m.line.strip()}"
        for m in parsed.marks
    ]
    if problems:
        return ApplyResult([], [], problems)
    wanted = tuple(s._replace(drain_timeout=0, owner="") for s in parsed.services)
    snapshot = _Snapshot(table)
    live_keys = {ls.service.key for ls in snapshot.dump()}
    # The reconciler touches only services it owns: here every live service the file names
    # (to edit it), and with --prune every live service (to delete what the file lacks).
    owned = live_keys if prune else live_keys & {s.key for s in wanted}
    ipsets = FakeIPSets()  # no other kernel state is in an ipvsadm file: empty stand-ins
    kernel = Kernel(
        snapshot, ipsets, FakeChains(ipsets), FakeAddresses(), FakeSysctls(), FakeTunnels()
    )
    plan = NodePlan(node="lvsctl", director=DirectorPlan(services=wanted))
    report = reconcile(plan, kernel, AgentState(owned_services=set(owned)), dry_run=dry_run)
    changes = [op_line(s.target) for s in report.steps if isinstance(s.target, IPVSOp)]
    return ApplyResult(changes, [*report.failures, *report.warnings], [])


# --------------------------------------------------------------------------- command line


def _describe(key: ServiceKey) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family == 6 else "")
    option = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[key.protocol]
    return f"{option} {_addrport(key.address, key.port)}"


def parse_service(protocol: str, text: str, ipv6: bool = False) -> ServiceKey:
    """An ipvsadm service argument: `-t|-u|--sctp-service HOST[:PORT]` (IPv6 in brackets;
    numbers only, no names) or `-f MARK [-6]`."""
    if protocol == "fwmark":
        try:
            mark = int(text, 0)
        except ValueError:
            raise ValueError(f"firewall mark {text!r} is not a number") from None
        if not 0 < mark <= 0xFFFFFFFF:
            raise ValueError(f"firewall mark {text} is not in 1..4294967295")
        return ServiceKey(6 if ipv6 else 4, "", "", 0, mark)
    host, port_text = text, "0"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not [IPv6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (names are not looked up)") from None
    if not port_text.isdigit() or int(port_text) > 0xFFFF:
        raise ValueError(f"port {port_text!r} is not in 0..65535")
    return ServiceKey(address.version, protocol, str(address), int(port_text), 0)


def _service_type(protocol: str) -> Callable[[str], ServiceKey]:
    def parse(text: str) -> ServiceKey:
        try:
            return parse_service(protocol, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f"{protocol} service"
    return parse


def _service_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    for flags, protocol, what in (
        (("-t", "--tcp-service"), "tcp", "HOST:PORT"),
        (("-u", "--udp-service"), "udp", "HOST:PORT"),
        (("--sctp-service",), "sctp", "HOST:PORT"),
        (("-f", "--fwmark-service"), "fwmark", "MARK"),
    ):
        group.add_argument(
            *flags,
            dest="service",
            metavar=what,
            type=_service_type(protocol),
            help=f"only this {protocol} service" + (" (-6: IPv6)" if what == "MARK" else ""),
        )
    parser.add_argument("-6", "--ipv6", action="store_true", help="an IPv6 firewall-mark service")


def _netns_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--netns",
        metavar="NAME",
        help="work on the IPVS table of this network namespace (default: this host's)",
    )


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add list, connections, zero, save and apply to lvsctl's subcommands."""
    lst = sub.add_parser(
        "list",
        help="the live IPVS table, as `ipvsadm -L -n` prints it",
        description="Print the IPVS table exactly as `ipvsadm -L -n` does (ipvsadm 1.31's "
        "layout and order). Addresses are always numeric.",
    )
    lst.add_argument("-n", "--numeric", action="store_true", help="accepted; always on")
    views = lst.add_mutually_exclusive_group()
    views.add_argument("--stats", dest="view", action="store_const", const="stats",
                       help="counters: Conns InPkts OutPkts InBytes OutBytes")  # fmt: skip
    views.add_argument("--rate", dest="view", action="store_const", const="rate",
                       help="rates: CPS InPPS OutPPS InBPS OutBPS")  # fmt: skip
    views.add_argument("--thresholds", dest="view", action="store_const", const="thresholds",
                       help="upper/lower connection thresholds")  # fmt: skip
    views.add_argument("--persistent-conn", dest="view", action="store_const",
                       const="persistent-conn", help="persistent connection counts")  # fmt: skip
    views.add_argument("--tun-info", dest="view", action="store_const", const="tun-info",
                       help="tunnel type, port and checksum of tunnel destinations")  # fmt: skip
    lst.add_argument("--exact", action="store_true", help="counters unscaled (no K/M/G)")
    _service_options(lst)
    _netns_option(lst)
    conns = sub.add_parser(
        "connections",
        help="the IPVS connection table, as `ipvsadm -L -n -c` prints it",
        description="Print the IPVS connection table (/proc/net/ip_vs_conn) as "
        "`ipvsadm -L -n -c` does.",
    )
    _netns_option(conns)
    zero = sub.add_parser(
        "zero",
        help="reset IPVS counters and rates (`ipvsadm -Z`)",
        description="Reset the counters and rates of one service and its destinations, or "
        "of every service (`ipvsadm -Z [-t|-u|-f SERVICE]`). Connections are kept.",
    )
    _service_options(zero)
    _netns_option(zero)
    save = sub.add_parser(
        "save",
        help="the live IPVS table as `ipvsadm-save -n` prints it",
        description="Print the live IPVS table as `ipvsadm-save -n` does, through the same "
        "renderer as `lvsctl plan --format ipvsadm` (thresholds -x/-y are printed when set).",
    )
    save.add_argument("-n", "--numeric", action="store_true", help="accepted; always on")
    save.add_argument(
        "-f", "--filename", action="append", metavar="PATH",
        help="the DESIRED table instead of the live one: compile these manifests (as "
        "`lvsctl plan -f`) and print each director's IPVS services as ipvsadm-save would "
        "(repeatable; with --node, only those nodes)",
    )
    save.add_argument("--node", action="append", metavar="NAME",
                      help="with -f: only this director (repeatable)")
    _netns_option(save)
    apply = sub.add_parser(
        "apply",
        help="make the IPVS table what an ipvsadm-save file says, minimally",
        description="Make the live IPVS table equal to an ipvsadm-save (-S -n) file by adding, "
        "editing and deleting only what differs, like a diffing ipvsadm-restore. Services "
        "the file does not name are left alone unless --prune. The changes are printed as "
        "ipvsadm-restore lines.",
    )
    apply.add_argument("-f", "--filename", required=True, metavar="FILE",
                       help="the rules (`-` for stdin)")  # fmt: skip
    apply.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    apply.add_argument(
        "--prune", action="store_true", help="also delete IPVS services the file does not name"
    )
    _netns_option(apply)


def _service_key(args: argparse.Namespace) -> ServiceKey | None:
    key: ServiceKey | None = args.service
    if key is not None and key.fwmark and args.ipv6:
        key = key._replace(family=6)
    return key


def _cmd_list(table: InfoTable, args: argparse.Namespace) -> int:
    sys.stdout.write(
        list_table(table, args.view or "plain", exact=args.exact, service=_service_key(args))
    )
    return EXIT_OK


def _cmd_connections(table: InfoTable, args: argparse.Namespace) -> int:
    sys.stdout.write(format_connections(table.connections()))
    return EXIT_OK


def _cmd_zero(table: InfoTable, args: argparse.Namespace) -> int:
    table.zero(_service_key(args))
    return EXIT_OK


def _cmd_save(table: InfoTable, args: argparse.Namespace) -> int:
    sys.stdout.write(format_save(table.dump()))
    return EXIT_OK


def _cmd_apply(table: InfoTable, args: argparse.Namespace) -> int:
    name = args.filename
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        print(f"lvsctl: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    result = apply_rules(table, text, source=name, prune=args.prune, dry_run=args.dry_run)
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    if result.problems:
        print("lvsctl: nothing applied", file=sys.stderr)
        return EXIT_FAILED
    for line in result.changes:
        print(line)
    for failure in result.failures:
        print(f"error: {failure}", file=sys.stderr)
    what = "would change" if args.dry_run else "changed"
    print(f"# {len(result.changes)} operation(s) {what}", file=sys.stderr)
    return EXIT_FAILED if result.failures else EXIT_OK


COMMANDS: dict[str, Callable[[InfoTable, argparse.Namespace], int]] = {
    "list": _cmd_list,
    "connections": _cmd_connections,
    "zero": _cmd_zero,
    "save": _cmd_save,
    "apply": _cmd_apply,
}


def run(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; kernel errors become a message and exit status 1."""
    try:
        with open_table(args.netns) as table:
            return COMMANDS[args.command](table, args)
    except KernelError as exc:
        print(f"lvsctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
