"""Read existing LVS configurations written for ipvsadm: the output of `ipvsadm-save -n`
(what `ipvsadm -R` reads) and shell scripts of `ipvsadm` commands, into the plan's
IPVSService/Destination records, exactly as `render.ipvsadm_save` prints them back.

Pure: text in, records and problems out; no DNS, no /etc/services, no kernel.

Semantics follow ipvsadm 1.31 and the kernel it drives, as read in ipvsadm's own source
(github.com/cezarsa/ipvsadm, a mirror of git.kernel.org utils/kernel/ipvsadm, commit
e61c8cdd1dcadd7f881fe26934e57c5e208a79dd: `ipvsadm.c` parse_options(), process_options(),
parse_service(), parse_netmask(), parse_sched_flags(), generic_opt_check() with its
commands_v_options table, tunnel_opt_check(), print_service_entry(); `config_stream.c`
for the -R line format; `libipvs/libipvs.h` for IPVS_SVC_PERSISTENT_TIMEOUT; the man page
`ipvsadm.8`). The facts that matter here:

* The first option is the command (-A/-E/-D/-C/-a/-e/-d/-L/-Z/-S/-R/--set/...); options may
  be bundled (`-At`), long options take `--opt value` or `--opt=value`; each option once.
* -A/-E replace every service attribute: without -s the scheduler is wlc, without -p the
  service is not persistent; -p without a value is 360 s (IPVS_SVC_PERSISTENT_TIMEOUT, the
  man page's "300" is out of date); -M defaults to 255.255.255.255 (IPv6: 128) and is an
  IPv4 mask, or an IPv6 prefix length once the service is known to be IPv6 (`-M` before an
  IPv6 `-t` is overwritten by it); a port-0 service must be persistent; -o is UDP/fwmark
  only; -b flags are checked against the scheduler after all options are read.
* -a/-e replace every destination attribute: forwarding defaults to -g (direct routing),
  weight to 1; a real server without a port gets the virtual port; DR and TUN force the
  virtual port (fwmark services excepted); other address families only with -i; tunnel
  options only with -i, per tunnel type (gue needs --tun-port, gre takes no remcsum).
* The kernel refuses: an existing service (-A) or destination (-a), a missing one
  (-E/-D/-a/-e/-d), an unknown scheduler or persistence engine, a lower threshold above
  the upper one. Such a command changes nothing, exactly as on a real director.

Edits and deletes apply in order, so the result is the state the script leaves behind.
Every line that is not understood, or whose meaning the plan cannot hold, becomes a
`LineProblem`; nothing is dropped silently. Shell is read, not run: simple `NAME=value`
assignments are remembered and `$NAME`/`${NAME}` expanded; `sudo` and a path before
`ipvsadm` are accepted; control flow, command substitution and other commands are reported.
`iptables`/`ip6tables` mangle rules that set a firewall mark are returned as `MarkMatch`
records, so an importer can learn which VIP and ports a `-f` service stands for.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

from .plan import FORWARD_MASQ, FORWARD_ROUTE, FORWARD_TUNNEL, Destination, IPVSService, ServiceKey

__all__ = [
    "KERNEL_SCHEDULERS",
    "SERVICE_PORTS",
    "LineProblem",
    "MarkMatch",
    "ParsedRules",
    "parse_ipvsadm",
]

# Schedulers the kernel ships (net/netfilter/ipvs/ip_vs_*.c); twos arrived in Linux 6.3.
KERNEL_SCHEDULERS = frozenset(
    ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")
)
PERSISTENCE_ENGINES = frozenset(("sip",))
DEFAULT_SCHEDULER = "wlc"  # ipvsadm.c DEF_SCHED
DEFAULT_PERSISTENCE = 360  # libipvs.h IPVS_SVC_PERSISTENT_TIMEOUT (6*60)
MAX_TIMEOUT = 86400 * 31  # ipvsadm.c MAX_TIMEOUT
INT_MAX = 2**31 - 1

# getservbyname() on a stock /etc/services (netbase), for the names ipvsadm-save prints
# without -n and how-tos type. Looked up here instead of on this host so the parse is pure.
SERVICE_PORTS = {
    "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "gopher": 70, "http": 80,
    "www": 80, "www-http": 80, "kerberos": 88, "pop3": 110, "sunrpc": 111, "nntp": 119,
    "ntp": 123, "imap": 143, "imap2": 143, "snmp": 161, "ldap": 389, "https": 443,
    "submissions": 465, "ssmtp": 465, "smtps": 465, "syslog": 514, "rtsp": 554,
    "submission": 587, "ldaps": 636, "rsync": 873, "imaps": 993, "pop3s": 995,
    "openvpn": 1194, "ms-sql-s": 1433, "radius": 1812, "nfs": 2049, "mysql": 3306,
    "sip": 5060, "sip-tls": 5061, "postgresql": 5432, "http-alt": 8080, "webcache": 8080,
}

# IP_VS_SVC_F_SCHED1/2/3 and their names per scheduler (ipvsadm.c print_sched_flags).
_FLAG_BITS = {"flag-1": 1, "flag-2": 2, "flag-3": 3}
_NAMED_FLAGS = {
    "sh-fallback": ("sh", 1), "sh-port": ("sh", 2), "mh-fallback": ("mh", 1), "mh-port": ("mh", 2),
}
_TUN_CSUM = {0: "none", 1: "csum", 2: "remcsum"}  # IP_VS_TUNNEL_ENCAP_FLAG_*


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line (1-based number of its first physical line) that was not imported as written."""

    line_no: int
    line: str
    message: str

    def __str__(self) -> str:
        return f"{self.line_no}: {self.message}"


@dataclass(frozen=True, slots=True)
class MarkMatch:
    """An understood `iptables -t mangle -A PREROUTING ... -j MARK --set-mark N` rule:
    packets to `address` on `ports` ((protocol, port) pairs) from `source` (a CIDR, "" for
    any; `negated`: every source except it) get mark `mark`."""

    line_no: int
    line: str
    family: int
    mark: int
    address: str
    ports: tuple[tuple[str, int], ...]
    source: str = ""
    negated: bool = False


@dataclass(frozen=True, slots=True)
class ParsedRules:
    """The IPVS state the input leaves behind, in the order services were added.

    `service_lines` and `dest_lines` give the line that last set each service (by key) and
    destination (by key and (address, port)), so later stages can point at the source."""

    services: list[IPVSService]
    problems: list[LineProblem]
    marks: list[MarkMatch] = field(default_factory=list)
    service_lines: dict[ServiceKey, int] = field(default_factory=dict)
    dest_lines: dict[tuple[ServiceKey, str, int], int] = field(default_factory=dict)


class _Fail(Exception):
    """The command fails (as ipvsadm or the kernel would refuse it); nothing changes."""


# --------------------------------------------------------------------------- shell words


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


@dataclass
class _Command:
    words: list[str]
    piped: bool = False  # part of a pipeline
    stdin_file: bool = False  # `< FILE`


class _Shell:
    """Just enough of POSIX sh word splitting for configuration scripts: quotes, backslash,
    comments, `$NAME`/`${NAME}` from earlier assignments, `;`/`&&`/`||`/`&`/`|` and
    redirections. Anything it cannot evaluate raises ValueError with the reason."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}
        self.unknown: dict[str, str] = {}  # NAME -> why its value is not known

    def _expand(self, line: str, i: int) -> tuple[str, int]:
        """Expand the parameter at line[i] == '$'; returns (value, next index)."""
        nxt = line[i + 1 : i + 2]
        if nxt == "(":
            raise ValueError("uses command substitution $(...), which is not evaluated")
        if nxt == "{":
            end = line.find("}", i + 2)
            if end < 0:
                raise ValueError("has an unterminated ${")
            name, stop = line[i + 2 : end], end + 1
            if not _NAME.fullmatch(name):
                raise ValueError(f"uses ${{{name}}}, a parameter expansion that is not evaluated")
        else:
            m = _NAME.match(line, i + 1)
            if m is None:
                if nxt and (nxt.isdigit() or nxt in "@*#?$!-"):
                    raise ValueError(f"uses ${nxt}, a shell parameter that is not known here")
                return "$", i + 1
            name, stop = m.group(0), m.end()
        if name in self.env:
            return self.env[name], stop
        why = self.unknown.get(name, "is not set earlier in this file")
        raise ValueError(f"uses ${name}, which {why}")

    def split(self, line: str) -> list[_Command]:
        commands: list[_Command] = []
        words: list[str] = []
        cur: list[str] = []
        in_word = False
        piped = False
        stdin_file = False
        skip_next_word = False  # the target of a redirection
        i, n = 0, len(line)

        def end_word() -> None:
            nonlocal in_word, skip_next_word
            if in_word:
                word = "".join(cur)
                if skip_next_word:
                    skip_next_word = False
                else:
                    words.append(word)
            cur.clear()
            in_word = False

        def end_command(pipe: bool) -> None:
            nonlocal words, piped, stdin_file
            end_word()
            if words:
                commands.append(_Command(words, piped or pipe, stdin_file))
            words = []
            piped = pipe
            stdin_file = False

        while i < n:
            c = line[i]
            if c in " \t\r":
                end_word()
                i += 1
            elif c == "#" and not in_word:
                break
            elif c == "'":
                end = line.find("'", i + 1)
                if end < 0:
                    raise ValueError("has an unterminated ' quote")
                cur.append(line[i + 1 : end])
                in_word = True
                i = end + 1
            elif c == '"':
                i += 1
                in_word = True
                while True:
                    if i >= n:
                        raise ValueError('has an unterminated " quote')
                    d = line[i]
                    if d == '"':
                        i += 1
                        break
                    if d == "\\" and i + 1 < n and line[i + 1] in '$`"\\':
                        cur.append(line[i + 1])
                        i += 2
                    elif d == "$":
                        value, i = self._expand(line, i)
                        cur.append(value)
                    elif d == "`":
                        raise ValueError("uses command substitution `...`, which is not evaluated")
                    else:
                        cur.append(d)
                        i += 1
            elif c == "\\":
                if i + 1 < n:
                    cur.append(line[i + 1])
                    in_word = True
                i += 2
            elif c == "$":
                value, i = self._expand(line, i)
                parts = value.split()
                if value[:1].isspace():
                    end_word()
                for k, part in enumerate(parts):
                    if k:
                        end_word()
                    cur.append(part)
                    in_word = True
                if value[-1:].isspace():
                    end_word()
            elif c == "`":
                raise ValueError("uses command substitution `...`, which is not evaluated")
            elif c in "<>":
                # `[n]>`, `[n]>>`, `>&n`, `<`: drop the operator and its target word
                if in_word and "".join(cur).isdigit():
                    cur.clear()
                    in_word = False
                end_word()
                op = c
                i += 1
                while i < n and line[i] in "<>&|":
                    op += line[i]
                    i += 1
                if op.startswith("<<"):
                    raise ValueError("uses a here-document, which is not read")
                if op == "<":
                    stdin_file = True
                if op.endswith("&") and i < n and (line[i].isdigit() or line[i] == "-"):
                    i += 1  # `2>&1`, `>&-`
                else:
                    skip_next_word = True
            elif c == "&" and line[i + 1 : i + 2] == ">":
                end_word()
                i += 2
                if line[i : i + 1] == ">":
                    i += 1
                skip_next_word = True
            elif c in ";&|":
                two = line[i : i + 2]
                if two in ("&&", "||", ";;"):
                    end_command(False)
                    i += 2
                elif c == "|":
                    end_command(True)
                    i += 1
                else:
                    end_command(False)
                    i += 1
            elif c in "()":
                raise ValueError("uses a subshell or function syntax, which is not evaluated (the "
                                 "ipvsadm commands of this file are read once each, in file "
                                 "order)")
            else:
                cur.append(c)
                in_word = True
                i += 1
        end_command(False)
        return commands


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Physical lines joined at a trailing backslash; each with its first line number."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for no, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = no
        stripped = raw.lstrip()
        if raw.endswith("\\") and not stripped.startswith("#") and _odd_backslashes(raw):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        out.append((start, "".join(pending)))
        pending = []
    if pending:
        out.append((start, "".join(pending)))
    return out


def _odd_backslashes(line: str) -> bool:
    count = len(line) - len(line.rstrip("\\"))
    return count % 2 == 1


# --------------------------------------------------------------------------- ipvsadm options

_NONE, _REQ, _OPT = 0, 1, 2

# long name -> (short letter, argument kind, option bit name as ipvsadm's optnames calls it)
_OPTIONS: dict[str, tuple[str, int, str]] = {
    "add-service": ("A", _NONE, "cmd"), "edit-service": ("E", _NONE, "cmd"),
    "delete-service": ("D", _NONE, "cmd"), "clear": ("C", _NONE, "cmd"),
    "list": ("L", _NONE, "cmd"), "zero": ("Z", _NONE, "cmd"),
    "add-server": ("a", _NONE, "cmd"), "edit-server": ("e", _NONE, "cmd"),
    "delete-server": ("d", _NONE, "cmd"), "set": ("", _NONE, "cmd"),
    "help": ("h", _NONE, "cmd"), "version": ("v", _NONE, "cmd"),
    "restore": ("R", _NONE, "cmd"), "save": ("S", _NONE, "cmd"),
    "start-daemon": ("", _REQ, "cmd"), "stop-daemon": ("", _REQ, "cmd"),
    "tcp-service": ("t", _REQ, "service-address"), "udp-service": ("u", _REQ, "service-address"),
    "sctp-service": ("", _REQ, "service-address"),
    "fwmark-service": ("f", _REQ, "service-address"),
    "scheduler": ("s", _REQ, "scheduler"), "persistent": ("p", _OPT, "persistent"),
    "netmask": ("M", _REQ, "netmask"), "real-server": ("r", _REQ, "real-server"),
    "masquerading": ("m", _NONE, "forwarding-method"), "ipip": ("i", _NONE, "forwarding-method"),
    "gatewaying": ("g", _NONE, "forwarding-method"), "weight": ("w", _REQ, "weight"),
    "u-threshold": ("x", _REQ, "u-threshold"), "l-threshold": ("y", _REQ, "l-threshold"),
    "numeric": ("n", _NONE, "numeric"), "connection": ("c", _NONE, "connection"),
    "mcast-interface": ("", _REQ, "mcast-interface"), "syncid": ("", _REQ, "syncid"),
    "timeout": ("", _NONE, "timeout"), "daemon": ("", _NONE, "daemon"),
    "stats": ("", _NONE, "stats"), "rate": ("", _NONE, "rate"),
    "thresholds": ("", _NONE, "thresholds"), "persistent-conn": ("", _NONE, "persistent-conn"),
    "nosort": ("", _NONE, "nosort"), "sort": ("", _NONE, ""), "exact": ("X", _NONE, "exact"),
    "ipv6": ("6", _NONE, ""), "ops": ("o", _NONE, "ops"), "pe": ("", _REQ, "pe"),
    "sched-flags": ("b", _REQ, "sched-flags"), "mcast-group": ("", _REQ, "mcast-group"),
    "mcast-port": ("", _REQ, "mcast-port"), "mcast-ttl": ("", _REQ, "mcast-ttl"),
    "sync-maxlen": ("", _REQ, "sync-maxlen"), "tun-info": ("", _NONE, "tun-info"),
    "tun-type": ("", _REQ, "tun-type"), "tun-port": ("", _REQ, "tun-port"),
    "tun-nocsum": ("", _NONE, "tun-nocsum"), "tun-csum": ("", _NONE, "tun-csum"),
    "tun-remcsum": ("", _NONE, "tun-remcsum"),
}
_SHORT = {short: name for name, (short, _, _) in _OPTIONS.items() if short}
_SHORT["l"] = "list"

# command option -> ipvsadm's command name (cmdnames) and the options it allows/requires
# (commands_v_options: '+' required, ' ' allowed, everything else illegal).
_SVC_OPTS = {"scheduler", "persistent", "netmask", "ops", "pe", "sched-flags"}
_DEST_OPTS = {"forwarding-method", "weight", "u-threshold", "l-threshold", "tun-type",
              "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"}
_COMMANDS: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {
    "add-service": ("add-service", frozenset({"service-address"}), frozenset(_SVC_OPTS)),
    "edit-service": ("edit-service", frozenset({"service-address"}), frozenset(_SVC_OPTS)),
    "delete-service": ("delete-service", frozenset({"service-address"}), frozenset()),
    "clear": ("flush", frozenset(), frozenset()),
    "add-server": ("add-server", frozenset({"service-address", "real-server"}),
                   frozenset(_DEST_OPTS)),
    "edit-server": ("edit-server", frozenset({"service-address", "real-server"}),
                    frozenset(_DEST_OPTS)),
    "delete-server": ("delete-server", frozenset({"service-address", "real-server"}),
                      frozenset()),
}
_LISTING = {"list", "save", "help", "version"}


def _split_options(args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """popt's view of the arguments: [(long name, value)], positional arguments."""
    opts: list[tuple[str, str | None]] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in _OPTIONS:
                raise _Fail(f"invalid option `{arg}' (ipvsadm does not know it)")
            kind = _OPTIONS[name][1]
            if eq:
                if kind == _NONE:
                    raise _Fail(f"option --{name} takes no value")
                opts.append((name, value))
            elif kind == _REQ:
                if i >= len(args):
                    raise _Fail(f"option --{name} needs a value")
                opts.append((name, args[i]))
                i += 1
            elif kind == _OPT and i < len(args) and not args[i].startswith("-"):
                opts.append((name, args[i]))
                i += 1
            else:
                opts.append((name, None))
        elif arg.startswith("-") and len(arg) > 1:
            k = 1
            while k < len(arg):
                letter = arg[k]
                k += 1
                name = _SHORT.get(letter, "")
                if not name:
                    raise _Fail(f"invalid option `-{letter}' (ipvsadm does not know it)")
                kind = _OPTIONS[name][1]
                if kind == _NONE:
                    opts.append((name, None))
                    continue
                if k < len(arg):
                    opts.append((name, arg[k:]))
                elif kind == _REQ:
                    if i >= len(args):
                        raise _Fail(f"option -{letter} needs a value")
                    opts.append((name, args[i]))
                    i += 1
                elif i < len(args) and not args[i].startswith("-"):
                    opts.append((name, args[i]))
                    i += 1
                else:
                    opts.append((name, None))
                break
        else:
            rest.append(arg)
    return opts, rest


# --------------------------------------------------------------------------- values


def _number(text: str, low: int, high: int) -> int | None:
    """ipvsadm's string_to_number(): a decimal integer within [low, high], else None."""
    if not re.fullmatch(r"[+-]?\d+", text.strip(" \t")) or text != text.lstrip(" \t"):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _ipv4(text: str) -> str | None:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return None
    return text


def _ipv6(text: str) -> str | None:
    if "%" in text:
        return None
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


@dataclass
class _Addr:
    family: int
    address: str
    port: int | None  # None: no port given


def _parse_hostport(text: str, protocol: str, what: str) -> _Addr:
    """parse_service(): `addr[:port]` or `[v6addr]:port`; ports may be service names."""
    if text.isdigit():
        raise _Fail(f"illegal {what} address[:port] `{text}'")
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise _Fail(f"illegal {what} address[:port] `{text}': write IPv6 as [address]:port")
        host, port_text = text[1:end], text[end + 2 :]
    v6 = _ipv6(host)
    if v6 is not None:
        family, address = 6, v6
    else:
        if port_text is None and ":" in host:
            host, _, port_text = host.rpartition(":")
        v4 = _ipv4(host)
        if v4 is None:
            if text.startswith("["):
                raise _Fail(f"illegal {what} address `{host}'")
            raise _Fail(
                f"{what} `{host}' is not a numeric IPv4/IPv6 address; ipvsadm would resolve "
                "the name (or read inet_aton shorthand) at run time, which an import cannot "
                "repeat: write the address itself"
            )
        family, address = 4, v4
    port: int | None = None
    if port_text is not None:
        num = _number(port_text, 0, 65535)
        if num is None:
            num = SERVICE_PORTS.get(port_text) if protocol in ("tcp", "udp") else None
        if num is None:
            raise _Fail(f"illegal {what} port `{port_text}' (not a number or a well-known name)")
        port = num
    return _Addr(family, address, port)


def _mask_prefix(mask: str) -> int | None:
    """An IPv4 netmask in dotted-quad form as a prefix length (None if not contiguous)."""
    if _ipv4(mask) is None:
        return None
    value = int.from_bytes(socket.inet_pton(socket.AF_INET, mask), "big")
    inverted = (~value) & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None
    return 32 - inverted.bit_length()


# --------------------------------------------------------------------------- the state


@dataclass
class _Svc:
    key: ServiceKey
    scheduler: str
    flags: tuple[str, ...]
    timeout: int
    prefix: int
    engine: str
    one_packet: bool
    dests: dict[tuple[str, int], Destination] = field(default_factory=dict)

    def record(self) -> IPVSService:
        return IPVSService(
            key=self.key,
            scheduler=self.scheduler,
            flags=self.flags,
            persistence_timeout=self.timeout,
            persistence_prefix=self.prefix if self.timeout else 0,
            persistence_engine=self.engine,
            one_packet=self.one_packet,
            destinations=tuple(self.dests.values()),
        )


@dataclass
class _Entry:
    """One ipvsadm invocation after parse_options() and process_options()'s checks."""

    command: str
    key: ServiceKey | None = None
    svc_port: int = 0
    scheduler: str = ""
    flags: tuple[str, ...] = ()
    timeout: int = 0
    prefix: int = 0
    engine: str = ""
    one_packet: bool = False
    dest: Destination | None = None
    notes: list[str] = field(default_factory=list)  # problems that do not stop the command


def _service_key(opt: str, value: str) -> tuple[ServiceKey, int, _Addr | None]:
    if opt == "fwmark-service":
        mark = _number(value, 1, 2**32 - 1)
        if mark is None:
            raise _Fail(f"invalid fwmark value `{value}' specified")
        return ServiceKey(4, "", "", 0, mark), 0, None
    protocol = {"tcp-service": "tcp", "udp-service": "udp", "sctp-service": "sctp"}[opt]
    addr = _parse_hostport(value, protocol, "virtual server")
    port = addr.port or 0
    return ServiceKey(addr.family, protocol, addr.address, port, 0), port, addr


def _parse_entry(args: list[str]) -> _Entry | None:
    """ipvsadm's parse_options() + process_options() checks; None for commands that read or
    change nothing imported (list, save, help). Raises _Fail for refused commands."""
    opts, rest = _split_options(args)
    if not opts or _OPTIONS[opts[0][0]][2] != "cmd":
        raise _Fail(
            "ipvsadm takes the command first (-A, -E, -D, -C, -a, -e, -d, -L, -S, ...); "
            "it would print its usage and do nothing"
        )
    command, command_arg = opts[0]
    for name, _value in opts[1:]:
        if _OPTIONS[name][2] == "cmd":
            raise _Fail("multiple commands specified")
    if command in _LISTING:
        return None
    if command == "zero":
        raise _Fail("zeroes packet and byte counters: kernel statistics, not configuration; "
                    "nothing to import")
    if command == "set":
        raise _Fail("sets the kernel's global IPVS connection timeouts (tcp tcpfin udp), which "
                    "the VirtualService model does not hold; not imported")
    if command in ("start-daemon", "stop-daemon"):
        raise _Fail(f"--{command} {command_arg or ''} controls the connection sync daemon, a "
                    "director setting (spec.ha.connectionSync), not an IPVS service; not "
                    "imported".replace("  ", " "))
    if command == "restore":
        raise _Fail("reads more rules from standard input, which is not part of this file; "
                    "import that input itself")
    cmdname, required, allowed = _COMMANDS[command]
    if rest:
        raise _Fail(f"unexpected argument {rest[0]}")

    entry = _Entry(command)
    seen: set[str] = set()
    family = 4
    netmask_v4 = 0xFFFFFFFF
    netmask_v6: int | None = None
    netmask_set = False
    netmask_lost = False
    sched_flags_arg = ""
    forward = FORWARD_ROUTE  # ipvsadm's default forwarding method is direct routing
    weight, upper, lower = 1, 0, 0
    dest_text: str | None = None
    tun_type, tun_port, tun_flags = "ipip", 0, 0
    persistent = False
    protocol = ""

    for name, value in opts[1:]:
        bit = _OPTIONS[name][2]
        if bit:
            if bit in seen:
                raise _Fail(f"multiple '{bit}' options specified")
            seen.add(bit)
            if bit not in required and bit not in allowed:
                raise _Fail(f"Illegal '{bit}' option with the '{cmdname}' command")
        val = value or ""
        if name in ("tcp-service", "udp-service", "sctp-service", "fwmark-service"):
            skey, port, _addr = _service_key(name, val)
            entry.key, entry.svc_port, family = skey, port, skey.family
            protocol = skey.protocol or "tcp"  # -f sets TCP "to a sane value" (ipvsadm.c)
            if skey.family == 6:
                if netmask_set:
                    netmask_lost = True
                netmask_v6 = 128
        elif name == "ipv6":
            if entry.key is None or not entry.key.fwmark:
                raise _Fail("-6 used before -f")
            entry.key = entry.key._replace(family=6)
            family = 6
            if netmask_set:
                netmask_lost = True
            netmask_v6 = 128
        elif name == "scheduler":
            entry.scheduler = val[:15]
        elif name == "persistent":
            persistent = True
            if value is None:
                entry.timeout = DEFAULT_PERSISTENCE
            else:
                timeout = _number(val, 1, MAX_TIMEOUT)
                if timeout is None:
                    raise _Fail(f"invalid timeout value `{val}' specified")
                entry.timeout = timeout
        elif name == "netmask":
            netmask_set = True
            if family == 6:
                prefix = _number(val, 1, 128)
                if prefix is None:
                    raise _Fail("illegal ipv6 netmask specified")
                netmask_v6 = prefix
            else:
                if _ipv4(val) is None:
                    raise _Fail(f"illegal virtual server persistent mask `{val}' (write a "
                                "dotted-quad netmask such as 255.255.255.0)")
                netmask_v4 = int.from_bytes(socket.inet_pton(socket.AF_INET, val), "big")
        elif name == "real-server":
            dest_text = val
        elif name in ("masquerading", "gatewaying", "ipip"):
            forward = {"masquerading": FORWARD_MASQ, "gatewaying": FORWARD_ROUTE,
                       "ipip": FORWARD_TUNNEL}[name]
        elif name == "weight":
            w = _number(val, 0, 65535)
            if w is None:
                raise _Fail("illegal weight specified")
            weight = w
        elif name in ("u-threshold", "l-threshold"):
            t = _number(val, 0, INT_MAX)
            if t is None:
                raise _Fail(f"illegal {name.replace('-', '_')} specified")
            if name == "u-threshold":
                upper = t
            else:
                lower = t
        elif name == "ops":
            entry.one_packet = True
        elif name == "pe":
            entry.engine = val[:15]
        elif name == "sched-flags":
            sched_flags_arg = val
        elif name == "tun-type":
            if val not in ("ipip", "gue", "gre"):
                raise _Fail("illegal tunnel type specified")
            tun_type = val
        elif name == "tun-port":
            p = _number(val, 1, 65535)
            if p is None:
                raise _Fail("illegal tunnel port specified")
            tun_port = p
        elif name == "tun-csum":
            tun_flags |= 1
        elif name == "tun-remcsum":
            tun_flags |= 2
        # tun-nocsum sets no bit; numeric/sort are harmless

    missing = sorted(required - seen)
    if missing:
        raise _Fail(f"You need to supply the '{missing[0]}' option for the '{cmdname}' command")
    key = entry.key

    if command in ("add-service", "edit-service"):
        assert key is not None
        if not key.fwmark and not entry.svc_port and not persistent:
            raise _Fail("Zero port specified for non-persistent service")
        if entry.one_packet and not key.fwmark and key.protocol != "udp":
            raise _Fail("One-Packet Scheduling is only for UDP virtual services")
        if not entry.scheduler:
            entry.scheduler = DEFAULT_SCHEDULER
        entry.flags = _sched_flags(entry.scheduler, sched_flags_arg, entry)
        if netmask_lost:
            entry.notes.append(
                "-M came before ipvsadm knew the service is IPv6, and reading the IPv6 "
                "address reset the mask to 128 (put -M after the service); imported as 128"
            )
        if family == 6:
            entry.prefix = netmask_v6 if netmask_v6 is not None else 128
        else:
            prefix = _mask_prefix(socket.inet_ntop(socket.AF_INET, netmask_v4.to_bytes(4, "big")))
            if prefix is None:
                raise _Fail(
                    "persistence netmask is not contiguous; the kernel would take it, but a "
                    "VirtualService holds a prefix length (persistence.prefixLength)"
                )
            entry.prefix = prefix
        if netmask_set and not persistent:
            entry.notes.append(
                "-M without -p has no effect (the mask only groups clients of a persistent "
                "service, and ipvsadm-save does not print it); not imported"
            )
        return entry

    if command in ("add-server", "edit-server", "delete-server"):
        assert key is not None and dest_text is not None
        daddr = _parse_hostport(dest_text, protocol, "real server")
        dport = daddr.port if daddr.port is not None else entry.svc_port
        if command != "delete-server":
            if not key.fwmark and forward in (FORWARD_ROUTE, FORWARD_TUNNEL):
                dport = entry.svc_port  # DR/TUN cannot change the port
            if daddr.family != family and forward != FORWARD_TUNNEL:
                raise _Fail("Different address family is allowed only for tunneling servers")
            tun_opts = seen & {"tun-type", "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"}
            if tun_opts and forward != FORWARD_TUNNEL:
                raise _Fail("Tunnel options conflict with forward method")
            _tunnel_check(tun_type, seen)
            if lower > upper:
                raise _Fail(
                    f"lower threshold {lower} is above the upper threshold {upper} (0 = none); "
                    "the kernel refuses it (ERANGE)"
                )
        csum = _TUN_CSUM.get(tun_flags, "none") if tun_type in ("gue", "gre") else ""
        entry.dest = Destination(
            address=daddr.address,
            port=dport,
            forward=forward,
            weight=weight,
            upper_threshold=upper,
            lower_threshold=lower,
            tunnel_type=tun_type if forward == FORWARD_TUNNEL else "",
            tunnel_port=tun_port if forward == FORWARD_TUNNEL else 0,
            tunnel_checksum=csum if forward == FORWARD_TUNNEL else "",
        )
        return entry
    return entry  # delete-service, clear


def _tunnel_check(tun_type: str, seen: set[str]) -> None:
    """ipvsadm's tunnel_types_v_options table."""
    csum = [o for o in ("tun-nocsum", "tun-csum", "tun-remcsum") if o in seen]
    if tun_type == "ipip":
        for o in ("tun-port", *csum):
            if o in seen:
                raise _Fail(f"Illegal '{o}' option with the 'ipip' tunnel type")
    if tun_type == "gue" and "tun-port" not in seen:
        raise _Fail("You need to supply the 'tun-port' option for the 'gue' tunnel type")
    if tun_type == "gre":
        for o in ("tun-port", "tun-remcsum"):
            if o in seen:
                raise _Fail(f"Illegal '{o}' option with the 'gre' tunnel type")
    if len(csum) > 1:
        raise _Fail(f"The option '{csum[1]}' conflicts with the '{csum[0]}' option in the "
                    f"'{tun_type}' tunnel type")


def _sched_flags(scheduler: str, arg: str, entry: _Entry) -> tuple[str, ...]:
    """parse_sched_flags() then print_sched_flags(): the names ipvsadm-save prints, in the
    kernel's bit order."""
    if not arg:
        return ()
    bits: set[int] = set()
    for flag in arg.split(","):
        if not flag:
            continue
        if flag in _FLAG_BITS:
            bits.add(_FLAG_BITS[flag])
        elif flag in _NAMED_FLAGS:
            owner, bit = _NAMED_FLAGS[flag]
            if scheduler != owner:
                raise _Fail(f"incompatible scheduler flag `{flag}'")
            bits.add(bit)
        else:
            raise _Fail(f"invalid scheduler flag `{flag}'")
    if scheduler in ("sh", "mh"):
        if 3 in bits:
            entry.notes.append(
                f"flag-3 means nothing to the {scheduler} scheduler and ipvsadm-save does not "
                "print it; not imported"
            )
        names = {1: f"{scheduler}-fallback", 2: f"{scheduler}-port"}
        return tuple(names[b] for b in sorted(bits) if b in names)
    return tuple(f"flag-{b}" for b in sorted(bits))


# --------------------------------------------------------------------------- iptables marks


def _parse_mark_rule(words: list[str]) -> MarkMatch | str | None:
    """An iptables/ip6tables rule that sets a firewall mark: MarkMatch if every part is
    understood, a reason string if not, None if it sets no mark at all."""
    family = 6 if words[0].rsplit("/", 1)[-1] == "ip6tables" else 4
    args = words[1:]
    if not any(a in ("MARK", "--set-mark", "--set-xmark") for a in args):
        return None
    table, chain, proto = "filter", "", ""
    dst = src = ""
    negated = False
    mark: int | None = None
    ports: list[int] = []
    unsupported: list[str] = []
    negate_next = False
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        nxt = args[i] if i < len(args) else ""
        if a == "!":
            negate_next = True
            continue
        neg, negate_next = negate_next, False
        if a in ("-t", "--table"):
            table, i = nxt, i + 1
        elif a in ("-A", "--append", "-I", "--insert"):
            chain, i = nxt, i + 1
            if a in ("-I", "--insert") and i < len(args) and args[i].isdigit():
                i += 1
        elif a in ("-p", "--protocol"):
            if neg:
                unsupported.append("! -p")
            proto, i = nxt.lower(), i + 1
        elif a in ("-d", "--destination"):
            if neg:
                unsupported.append("! -d")
            dst, i = nxt, i + 1
        elif a in ("-s", "--source"):
            src, negated, i = nxt, neg, i + 1
        elif a in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            if neg:
                unsupported.append(f"! {a}")
            for part in nxt.split(","):
                p = _number(part, 1, 65535)
                if p is None:
                    unsupported.append(f"{a} {nxt} (port ranges)")
                    break
                ports.append(p)
            i += 1
        elif a in ("-m", "--match"):
            if nxt not in ("tcp", "udp", "sctp", "multiport", "comment"):
                unsupported.append(f"-m {nxt}")
            i += 1
        elif a == "--comment":
            i += 1
        elif a in ("-j", "--jump"):
            if nxt != "MARK":
                unsupported.append(f"-j {nxt}")
            i += 1
        elif a in ("--set-mark", "--set-xmark"):
            value, _, mask = nxt.partition("/")
            try:
                mark = int(value, 0)
            except ValueError:
                unsupported.append(f"{a} {nxt}")
            if mask and mask.lower() not in ("0xffffffff", "4294967295"):
                unsupported.append(f"{a} with mask {mask} (changes only some bits)")
            i += 1
        else:
            if a.startswith("-") and a not in unsupported:
                unsupported.append(a)
            while i < len(args) and not args[i].startswith("-") and args[i] != "!":
                i += 1
    if table != "mangle":
        unsupported.insert(0, f"table {table} (marks for IPVS are set in mangle)")
    if chain != "PREROUTING":
        unsupported.insert(0, f"chain {chain or '(none)'} (the agent marks in PREROUTING)")
    if mark is None or not 1 <= mark <= 2**32 - 1:
        unsupported.append("a mark value")
    host = dst
    if "/" in dst:
        host, _, plen = dst.partition("/")
        if plen != ("32" if family == 4 else "128"):
            unsupported.append(f"-d {dst} (more than one address; a VirtualService has one VIP)")
    canon = (_ipv4(host) if family == 4 else _ipv6(host)) if host else None
    if canon is None:
        unsupported.append(f"-d {dst or '(any)'} (a VirtualService needs one VIP)")
    if not ports:
        unsupported.append("destination ports (a VirtualService marks listed ports, not all)")
    if proto not in ("tcp", "udp", "sctp"):
        unsupported.append(f"protocol {proto or '(any)'}")
    if src:
        try:
            net = ipaddress.ip_network(src, strict=False)
        except ValueError:
            unsupported.append(f"-s {src}")
        else:
            if net.version != family:
                unsupported.append(f"-s {src}")
            src = str(net)
    if unsupported:
        return "the mark rule cannot be expressed: " + ", ".join(dict.fromkeys(unsupported))
    assert canon is not None and mark is not None
    return MarkMatch(0, "", family, mark, canon, tuple((proto, p) for p in ports), src, negated)


# --------------------------------------------------------------------------- the parser


def _apply(state: dict[ServiceKey, _Svc], entry: _Entry) -> None:
    """The kernel's answer to one command (ip_vs_ctl.c): change `state` or raise _Fail."""
    cmd, key = entry.command, entry.key
    if cmd == "clear":
        state.clear()
        return
    assert key is not None
    svc = state.get(key)
    if cmd in ("add-service", "edit-service"):
        if entry.scheduler not in KERNEL_SCHEDULERS:
            raise _Fail(f"unknown scheduler `{entry.scheduler}' (the kernel has no ip_vs_"
                        f"{entry.scheduler} module; it refuses: No such file or directory)")
        if entry.engine and entry.engine not in PERSISTENCE_ENGINES:
            raise _Fail(f"unknown persistence engine `{entry.engine}' (the kernel has sip only)")
        if cmd == "add-service" and svc is not None:
            raise _Fail(f"service {key} already exists (the kernel refuses: File exists)")
        if cmd == "edit-service" and svc is None:
            raise _Fail(f"no service {key} to edit (the kernel refuses: No such service)")
        new = _Svc(key, entry.scheduler, entry.flags, entry.timeout, entry.prefix, entry.engine,
                   entry.one_packet)
        if svc is not None:
            new.dests = svc.dests
        state[key] = new
        return
    if svc is None:
        raise _Fail(f"no service {key} (the kernel refuses: No such service)")
    if cmd == "delete-service":
        del state[key]
        return
    dest = entry.dest
    assert dest is not None
    dkey = (dest.address, dest.port)
    if cmd == "add-server":
        if dkey in svc.dests:
            raise _Fail(f"real server {_hostport(*dkey)} already exists in {key} (the kernel "
                        "refuses: Destination already exists)")
        svc.dests[dkey] = dest
    elif cmd == "edit-server":
        if dkey not in svc.dests:
            raise _Fail(f"no real server {_hostport(*dkey)} in {key} to edit (the kernel "
                        "refuses: No such destination)")
        svc.dests[dkey] = dest
    elif cmd == "delete-server":
        if dkey not in svc.dests:
            raise _Fail(f"no real server {_hostport(*dkey)} in {key} (the kernel refuses: "
                        "No such destination)")
        del svc.dests[dkey]


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


_SHELL_SYNTAX = frozenset((
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "function", "select", "{", "}", "[", "[[", "return", "exit", "break", "continue", "shift",
))


def _strip_sudo(words: list[str]) -> list[str]:
    while words and words[0].rsplit("/", 1)[-1] in ("sudo", "command", "exec", "nohup"):
        is_sudo = words[0].rsplit("/", 1)[-1] == "sudo"
        words = words[1:]
        while is_sudo and words and words[0].startswith("-"):
            flag = words[0]
            words = words[1:]
            if flag in ("-u", "-g", "-C", "-h", "-p", "-U", "-r", "-t", "-D") and words:
                words = words[1:]
    return words


def parse_ipvsadm(text: str) -> ParsedRules:
    """Parse `ipvsadm-save` output or a shell script of ipvsadm commands. See the module
    docstring for what is understood; everything else is a LineProblem."""
    shell = _Shell()
    state: dict[ServiceKey, _Svc] = {}
    problems: list[LineProblem] = []
    marks: list[MarkMatch] = []
    service_lines: dict[ServiceKey, int] = {}
    dest_lines: dict[tuple[ServiceKey, str, int], int] = {}

    for line_no, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue

        def report(message: str, _no: int = line_no, _line: str = stripped) -> None:
            problems.append(LineProblem(_no, _line, message))

        restore_form = stripped.startswith("-")
        try:
            commands = shell.split(line)
        except ValueError as exc:
            m = _ASSIGN.match(stripped)
            if m is not None:
                shell.unknown[m.group(1)] = f"is set on line {line_no} by something not evaluated"
                shell.env.pop(m.group(1), None)
            report(f"not imported: this line {exc}")
            continue
        for cmd in commands:
            words = cmd.words
            while words and _ASSIGN.match(words[0]) and not restore_form:
                m = _ASSIGN.match(words[0])
                assert m is not None
                shell.env[m.group(1)] = m.group(2)
                shell.unknown.pop(m.group(1), None)
                words = words[1:]
            if not words:
                continue
            if words[0] in ("export", "readonly", "local", "declare") and all(
                _ASSIGN.match(w) for w in words[1:]
            ):
                for w in words[1:]:
                    m = _ASSIGN.match(w)
                    assert m is not None
                    shell.env[m.group(1)] = m.group(2)
                continue
            words = _strip_sudo(words)
            if not words:
                continue
            prog = words[0].rsplit("/", 1)[-1]
            if restore_form:
                args = words[1:] if prog == "ipvsadm" else words
            elif prog == "ipvsadm":
                args = words[1:]
            elif prog in ("iptables", "ip6tables"):
                found = _parse_mark_rule(words)
                if isinstance(found, MarkMatch):
                    marks.append(found.__class__(
                        line_no, stripped, found.family, found.mark, found.address,
                        found.ports, found.source, found.negated,
                    ))
                elif found is not None:
                    report(found)
                else:
                    report(f"not an ipvsadm command ({prog}); not imported")
                continue
            elif prog == "ipvsadm-save":
                continue  # prints the table; changes nothing
            elif prog == "ipvsadm-restore":
                report("ipvsadm-restore reads rules from another input, which is not part of "
                       "this file; import that input itself")
                continue
            elif prog in _SHELL_SYNTAX:
                report(f"shell control flow (`{prog}`) is not evaluated: the ipvsadm commands "
                       "of this file are read once each, in file order")
                continue
            else:
                report(f"not an ipvsadm command ({prog}); not imported")
                continue
            if not args:
                continue  # bare `ipvsadm` lists the table
            if cmd.piped or cmd.stdin_file:
                try:
                    listing = _parse_entry(args) is None
                except _Fail:
                    listing = False
                if not listing:
                    report("ipvsadm reads its input from a pipe or file here, which is not part "
                           "of this file; import that input itself")
                    continue
            try:
                entry = _parse_entry(args)
                if entry is None:
                    continue
                _apply(state, entry)
            except _Fail as exc:
                report(f"{exc}; nothing imported from this line")
                continue
            for note in entry.notes:
                report(note)
            if entry.key is not None and entry.command in ("add-service", "edit-service"):
                service_lines[entry.key] = line_no
            if entry.key is not None and entry.dest is not None and entry.command != (
                "delete-server"
            ):
                dest_lines[(entry.key, entry.dest.address, entry.dest.port)] = line_no

    services = [svc.record() for svc in state.values()]
    return ParsedRules(services, problems, marks, service_lines, dest_lines)
