"""The real owned-chains adapter: `iptables-save` to read, `iptables-restore --noflush` to write.

What it owns, and so what it may change: the chain it is asked about (LVS-MARK, LVS-SNAT) and
every rule whose target is that chain (the jump). Nothing else in the table is read for
writing, so kube-proxy's, a CNI's or a human's rules and chains survive every call.

- `replace` is one restore transaction per table: `:CHAIN - [0:0]` creates the chain or flushes
  only it, the rules are appended, and the jump is made exactly one `-I HOOK 1 -m comment
  --comment lvs-operator -j CHAIN`. A jump that is already exactly that is left where it is
  (someone may have put a rule before it on purpose; re-inserting would also open a window).
- `read` reports the hook only when that single commented jump is the only way into the chain;
  any other arrangement reads back with `hook=""`, which differs from every plan and makes the
  agent repair it with `replace`.
- The flavour (nft or legacy) is the one the host's rules say is in use
  (`detect_host_flavour`, the way Kubernetes' iptables-wrapper decides it), not the one the
  `iptables` binary on PATH was built for: in the agent's container that is the image's.
  The flavour-specific binaries (`iptables-nft-restore`, ...) are then used so that a later
  alternatives switch cannot split our state across two backends.
- `canonical` is a deterministic rewrite into what `iptables-save` prints (see
  `canonical_rule`), verified against the kernel by the contract suite. As a safety net,
  `replace` reads the chain back and remembers any rule the rewrite got wrong
  (`rewrite_misses`, logged), so an unforeseen iptables version costs one extra replace,
  not a replace on every resync.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..compiler.render import JUMP_COMMENT
from .errors import (
    InvalidArgument,
    KernelError,
    KernelUnavailable,
    NotFound,
    PermissionDenied,
)
from .netstate import ChainSpec

__all__ = [
    "JUMP_COMMENT",
    "FlavourChoice",
    "IptablesChains",
    "canonical_rule",
    "choose_flavour",
    "count_rules",
    "detect_flavour",
    "detect_host_flavour",
    "hint_chains",
    "parse_save",
    "restore_line",
    "split_rule",
]

log = logging.getLogger(__name__)

# JUMP_COMMENT comes from the renderer, so `lvsctl plan --format ipvsadm` writes the same
# jump rule as the agent.
FLAVOURS = ("nft", "legacy")
BUILTIN_CHAINS = frozenset(["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"])
_PACKAGE = "iptables"  # the Debian package that ships every binary used here


# ---------------------------------------------------------------------------------------
# iptables-save / iptables-restore text


def split_rule(text: str) -> tuple[str, ...]:
    """Split one rule's text into arguments the way iptables-restore does
    (`add_param_to_argv`): only double quotes group, and inside them a backslash escapes the
    next character (iptables-save writes `\\"`, `\\\\` and `\\'` there). Outside quotes a
    backslash and a single quote are ordinary characters, unlike in a shell."""
    args: list[str] = []
    buf: list[str] = []
    in_quotes = escaped = started = False
    for ch in text:
        if in_quotes:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
            else:
                buf.append(ch)
        elif ch == '"':
            in_quotes = started = True
        elif ch in " \t\n":
            if started:
                args.append("".join(buf))
                buf, started = [], False
        else:
            buf.append(ch)
            started = True
    if in_quotes:
        raise InvalidArgument(f"unterminated quote in rule: {text!r}")
    if started:
        args.append("".join(buf))
    return tuple(args)


_PLAIN = re.compile(r"[A-Za-z0-9_.,:/!=+@%-]+")


def _quote(arg: str) -> str:
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def restore_line(args: Sequence[str]) -> str:
    """Arguments as one iptables-restore line (the inverse of `split_rule`)."""
    return " ".join(_quote(a) for a in args)


class SavedTable(NamedTuple):
    chains: frozenset[str]  # every chain declared in the table
    rules: tuple[tuple[str, tuple[str, ...]], ...]  # (chain, args) in save order


def parse_save(text: str, table: str) -> SavedTable:
    """The `*table` section of iptables-save output."""
    chains: set[str] = set()
    rules: list[tuple[str, tuple[str, ...]]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = line[1:]
        elif current != table or line == "COMMIT":
            continue
        elif line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            args = split_rule(line)
            rules.append((args[1], args[2:]))
    return SavedTable(frozenset(chains), tuple(rules))


def _target(args: Sequence[str]) -> str:
    """The jump/goto target of a rule, or ""."""
    for i, a in enumerate(args[:-1]):
        if a in ("-j", "--jump", "-g", "--goto"):
            return args[i + 1]
    return ""


def jump_args(chain: str) -> tuple[str, ...]:
    """The one jump this adapter writes, in iptables-save form."""
    return ("-m", "comment", "--comment", JUMP_COMMENT, "-j", chain)


# ---------------------------------------------------------------------------------------
# canonical form: what iptables-save prints for a rule we wrote

# Options iptables handles itself (not a match); iptables-save prints them first, this order.
_GENERIC = (
    ("-s", ("-s", "--source", "--src")),
    ("-d", ("-d", "--destination", "--dst")),
    ("-i", ("-i", "--in-interface")),
    ("-o", ("-o", "--out-interface")),
    ("-p", ("-p", "--protocol")),
)
_GENERIC_ALIAS = {alias: short for short, aliases in _GENERIC for alias in aliases}
_PROTO_BY_NUMBER = {"6": "tcp", "17": "udp", "132": "sctp", "136": "udplite", "1": "icmp"}
_PORT_PROTOS = frozenset(["tcp", "udp", "sctp", "udplite"])
_PORT_OPTS = {
    "--sport": "--sport",
    "--source-port": "--sport",
    "--dport": "--dport",
    "--destination-port": "--dport",
}
_IP_PROTO_NUMBERS = {"tcp": "6", "udp": "17", "sctp": "132", "udplite": "136", "icmp": "1"}
_IPVS_ORDER = ("--ipvs", "--vproto", "--vaddr", "--vport", "--vdir", "--vmethod", "--vportctl")
_MASK32 = 0xFFFFFFFF


def _address(value: str, family: int) -> str:
    """iptables-save prints addresses with a prefix length and the host bits cleared."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return value  # a hostname or a dotted mask: left as given
    if net.version != family:
        return value
    return f"{net.network_address}/{net.prefixlen}"


def _hex_mark(value: str) -> tuple[int, int | None]:
    text, _, mask = value.partition("/")
    return int(text, 0), (int(mask, 0) if mask else None)


def _group(tokens: list[str]) -> list[list[str]]:
    """Split into `-m NAME ...` / `-j TARGET ...` groups; a leading `!` belongs to the option
    after it, so it stays inside its group."""
    groups: list[list[str]] = []
    for tok in tokens:
        if tok in ("-m", "--match", "-j", "--jump", "-g", "--goto") or not groups:
            groups.append([])
        groups[-1].append({"--match": "-m", "--jump": "-j", "--goto": "-g"}.get(tok, tok))
    return groups


def _options(tokens: list[str]) -> list[list[str]]:
    """`--opt values...` runs (a match's tokens after `-m NAME`), each with its leading `!`."""
    out: list[list[str]] = []
    pending_not = False
    for tok in tokens:
        if tok == "!":
            pending_not = True
            continue
        if tok.startswith("--") or not out:
            out.append(["!"] if pending_not else [])
            pending_not = False
        elif pending_not:  # `--opt ! value` (old placement): keep it where it was
            out[-1].append("!")
            pending_not = False
        out[-1].append(tok)
    return out


def _option_name(opt: list[str]) -> str:
    return opt[1] if opt and opt[0] == "!" else (opt[0] if opt else "")


def _canonical_match(name: str, opts: list[list[str]], family: int) -> list[str]:
    if name == "mark":
        for opt in opts:
            i = 1 if opt[0] == "!" else 0
            if opt[i] == "--mark" and len(opt) > i + 1:
                value, mask = _hex_mark(opt[i + 1])
                opt[i + 1] = f"{value:#x}" if mask in (None, _MASK32) else f"{value:#x}/{mask:#x}"
    elif name == "set":
        for opt in opts:
            i = 1 if opt[0] == "!" else 0
            if opt[i] == "--set":
                opt[i] = "--match-set"
    elif name == "ipvs":
        for opt in opts:
            i = 1 if opt[0] == "!" else 0
            if opt[i] == "--vproto" and len(opt) > i + 1:
                opt[i + 1] = _IP_PROTO_NUMBERS.get(opt[i + 1].lower(), opt[i + 1])
            elif opt[i] == "--vaddr" and len(opt) > i + 1:
                # libxt_ipvs prints the mask with xtables_ipmask_to_numeric: "" for a host
                opt[i + 1] = _address(opt[i + 1], family).removesuffix(
                    "/32" if family == 4 else "/128"
                )
        rank = {o: n for n, o in enumerate(_IPVS_ORDER)}
        if len(opts) > 1:  # `--ipvs` is printed only when it is the only option
            opts = [o for o in opts if _option_name(o) != "--ipvs"]
        opts.sort(key=lambda o: rank.get(_option_name(o), len(rank)))
    elif name in _PORT_PROTOS:
        for opt in opts:
            i = 1 if opt[0] == "!" else 0
            opt[i] = _PORT_OPTS.get(opt[i], opt[i])
        order = {"--sport": 0, "--dport": 1}
        opts.sort(key=lambda o: order.get(_option_name(o), 2))
    return ["-m", name, *(t for opt in opts for t in opt)]


def _canonical_target(group: list[str]) -> list[str]:
    out = list(group[:2])
    rest = group[2:]
    if len(group) > 1 and group[1] == "MARK":
        i = 0
        while i < len(rest):
            tok = rest[i]
            if tok in ("--set-mark", "--set-xmark") and i + 1 < len(rest):
                value, mask = _hex_mark(rest[i + 1])
                if mask is None:
                    mask = _MASK32
                elif tok == "--set-mark":  # libxt_MARK: (mark & ~m) | v == xmark v/(m|v)
                    mask |= value
                out += ["--set-xmark", f"{value:#x}/{mask:#x}"]
                i += 2
                continue
            out.append(tok)
            i += 1
        return out
    return out + rest


def canonical_rule(args: Sequence[str], family: int) -> tuple[str, ...]:
    """`args` as iptables-save (nft and legacy, 1.8.x) prints them back.

    Rules found on this host (iptables 1.8.9, both flavours) and covered by the contract:
    generic options move first in the order -s -d -i -o -p with `!` before the option;
    addresses gain a prefix length and lose host bits (198.51.100.7 -> 198.51.100.7/32,
    2001:DB8::1 -> 2001:db8::1/128); `-p 6` -> `-p tcp`; a port option without its match gains
    `-m tcp` (or udp/sctp) where the first port option was, with --sport before --dport;
    `-j MARK --set-mark V[/M]` -> `--set-xmark V/(M|V)` in hex (no mask: /0xffffffff);
    `-m mark --mark V` -> hex; `-m set --set` -> `--match-set`; the quoting of comments
    disappears because rules are compared as argument lists. From libxt_ipvs's save
    function, confirmed in the VM tier (needs IPVS): `-m ipvs` prints --vproto as a number,
    its options in the order vproto vaddr vport vdir vmethod vportctl, `--ipvs` only when
    alone, and --vaddr without the prefix length of a host (192.0.2.40/32 -> 192.0.2.40,
    but 192.0.2.0/24 stays).
    Anything else passes through unchanged, and so does a rule with a malformed mark (the
    kernel rejects it at `replace`, which is where that error belongs).
    """
    try:
        return _rewrite(list(args), family)
    except ValueError:
        return tuple(args)


def _rewrite(tokens: list[str], family: int) -> tuple[str, ...]:
    generic: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        neg = tokens[i] == "!" and i + 1 < len(tokens) and tokens[i + 1] in _GENERIC_ALIAS
        j = i + 1 if neg else i
        short = _GENERIC_ALIAS.get(tokens[j]) if j < len(tokens) else None
        if short is not None and j + 1 < len(tokens):
            value = tokens[j + 1]
            if short in ("-s", "-d"):
                value = _address(value, family)
            elif short == "-p":
                value = _PROTO_BY_NUMBER.get(value, value.lower())
            generic[short] = (["!"] if neg else []) + [short, value]
            i = j + 2
            continue
        rest.append(tokens[i])
        i += 1

    proto = generic.get("-p", [""])[-1]
    out: list[str] = [t for short, _ in _GENERIC if short in generic for t in generic[short]]
    parts: list[list[str]] = []
    proto_opts: list[list[str]] = []  # the protocol match's options, wherever they were written
    proto_slot: int | None = None  # where that match goes: where iptables loaded it
    for group in _group(rest):
        if group[0] in ("-j", "-g"):
            parts.append(_canonical_target(group))
            continue
        named = group[0] == "-m" and len(group) > 1
        name = group[1] if named else ""
        opts = _options(group[2:] if named else group)
        ports = [o for o in opts if _option_name(o) in _PORT_OPTS]
        if proto in _PORT_PROTOS and (name == proto or ports):
            # `-m tcp` written out, or a port option iptables could only give to the
            # protocol's match, which it then loaded implicitly after the current one
            mine = opts if name == proto else ports
            opts = [] if name == proto else [o for o in opts if o not in ports]
            if named and name != proto:
                parts.append(_canonical_match(name, opts, family))
            elif not named:
                parts.append([t for o in opts for t in o])
            if proto_slot is None:
                proto_slot = len(parts)
                parts.append([])
            proto_opts += mine
            continue
        parts.append(_canonical_match(name, opts, family) if named else group)
    if proto_slot is not None:
        parts[proto_slot] = _canonical_match(proto, proto_opts, family)
    out += [t for part in parts for t in part]
    return tuple(out)


# ---------------------------------------------------------------------------------------
# running the binaries


def _run(
    cmd: Sequence[str],
    timeout: float,
    stdin: str | None = None,
    what: str = "",
    warnings: list[str] | None = None,
) -> str:
    """Run one command; every failure becomes a KernelError naming the command and stderr.
    On success, stderr lines go to `warnings` when given."""
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(
            list(cmd),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise KernelUnavailable(
            f"{cmd[0]} is not installed (Debian package {_PACKAGE if 'tables' in cmd[0] else 'iproute2'})"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelError(f"{shown} timed out after {timeout:g} s{what}") from exc
    except OSError as exc:
        raise KernelError(f"{shown}: {exc}") from exc
    if proc.returncode != 0:
        raise _translate(shown, proc.returncode, proc.stderr, stdin, what)
    if warnings is not None:
        warnings += [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return proc.stdout


def _translate(shown: str, rc: int, stderr: str, stdin: str | None, what: str) -> KernelError:
    err = " ".join(
        line.strip() for line in stderr.splitlines() if line.strip() and "Try `" not in line
    )
    msg = f"{shown} failed (exit {rc}){what}: {err}"
    line_no = re.search(r"line:? (\d+)", stderr)
    if stdin is not None and line_no:
        lines = stdin.splitlines()
        n = int(line_no.group(1))
        if 0 < n <= len(lines):
            msg += f" [input line {n}: {lines[n - 1]}]"
    low = stderr.lower()
    if "permission denied" in low or "must be root" in low or "operation not permitted" in low:
        return PermissionDenied(msg)
    if re.search(r"set \S+ doesn't exist", low) or "cannot open network namespace" in low:
        return NotFound(msg)
    if (
        "missing kernel module" in low
        or "do you need to insmod" in low
        or "unable to initialize table" in low
        or "couldn't load" in low
        or "table does not exist" in low
        or "protocol not supported" in low
    ):
        return KernelUnavailable(msg)
    if (
        "not applicable" in low
        or "bad argument" in low
        or "unknown option" in low
        or "invalid" in low
    ):
        return InvalidArgument(msg)
    return KernelError(msg)


# ---------------------------------------------------------------------------------------
# which backend the host uses


def _version_flavour(text: str) -> str:
    """ "nft", "legacy" or "" from `iptables -V` output ("iptables v1.8.9 (nf_tables)")."""
    if "(nf_tables)" in text:
        return "nft"
    if "(legacy)" in text:
        return "legacy"
    return ""


def detect_flavour(binary: str = "iptables", timeout: float = 10.0) -> str:
    """ "nft" or "legacy": what `iptables -V` says *this binary* uses. In a container that is
    the image's default, which says nothing about the host; see `detect_host_flavour`."""
    out = _run([binary, "-V"], timeout).strip()
    flavour = _version_flavour(out)
    if not flavour:
        raise KernelUnavailable(f"cannot tell the iptables flavour from {binary} -V: {out!r}")
    return flavour


# Chains kubelet (1.17 and later) creates in the mangle table of the backend the host uses:
# KUBE-IPTABLES-HINT exists only to be found by tools like this one, KUBE-KUBELET-CANARY is
# how kubelet notices its rules being flushed (it is in nat and filter too).
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


class FlavourChoice(NamedTuple):
    flavour: str  # "nft" or "legacy"
    reason: str  # why, for the log: "KUBE-IPTABLES-HINT in nft mangle"


def hint_chains(saves: Iterable[str]) -> list[str]:
    """The kubelet hint chains declared in the mangle table of these iptables-save outputs
    (several outputs, or several tables in one, may be given), in the order found."""
    found: list[str] = []
    for text in saves:
        table = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("*"):
                table = line[1:]
            elif table == "mangle" and line.startswith(":"):
                name = line[1:].split(maxsplit=1)[0] if len(line) > 1 else ""
                if name in KUBELET_HINT_CHAINS and name not in found:
                    found.append(name)
    return found


def count_rules(saves: Iterable[str]) -> int:
    """Rule lines (`-A ...`; upstream counts every line starting with '-') in all tables of
    these iptables-save outputs."""
    return sum(1 for text in saves for line in text.splitlines() if line.startswith("-"))


def choose_flavour(
    nft_mangle: Sequence[str],
    legacy: Sequence[str] = (),
    nft: Sequence[str] = (),
    version: str = "",
) -> FlavourChoice:
    """The backend the host uses, from what its rules show (pure; `detect_host_flavour` runs
    the binaries). Each argument holds the outputs of the IPv4 and the IPv6 tool:

    - `nft_mangle`: `iptables-nft-save -t mangle`, `ip6tables-nft-save -t mangle`
    - `legacy`: `iptables-legacy-save`, `ip6tables-legacy-save` (every existing table)
    - `nft`: `iptables-nft-save`, `ip6tables-nft-save` (every table)
    - `version`: `iptables -V`

    The rules are those of Kubernetes' iptables wrapper, the script that
    kubernetes-sigs/iptables-wrappers' `iptables-wrapper-installer.sh` installs, as of commit
    70d7897da19aad7749b4f7ae46cb51e3c07c95b9 ("Try to resolve nft/legacy based on
    KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY first", 2022; kept when it became Go in
    680003b3, where pkg/xtables/detect.go has the hint steps today):
    https://github.com/kubernetes-sigs/iptables-wrappers/blob/70d7897da19aad7749b4f7ae46cb51e3c07c95b9/iptables-wrapper-installer.sh
    1. a kubelet hint chain (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) in nft's mangle table
       (IPv4 or IPv6): nft;
    2. else one in legacy's mangle table: legacy (the wrapper greps the whole legacy save;
       kubelet creates both chains in mangle, so looking there is enough);
    3. else the backend with more rules (lines starting with '-', IPv4 and IPv6 counted
       together) wins: "some non-containerized process (possibly kubelet) will have created
       _some_ iptables rules";
    4. on a tie (an empty host, a fresh namespace) the wrapper says nft; here the flavour
       `iptables -V` reports decides, as before this detection existed, and nft only when
       that says nothing either.
    """
    hints = hint_chains(nft_mangle)
    if hints:
        return FlavourChoice("nft", f"{', '.join(hints)} in nft mangle")
    hints = hint_chains(legacy)
    if hints:
        return FlavourChoice("legacy", f"{', '.join(hints)} in legacy mangle")
    n_legacy, n_nft = count_rules(legacy), count_rules(nft)
    counts = f"legacy {n_legacy}, nft {n_nft} rules, IPv4 and IPv6"
    if n_legacy != n_nft:
        winner = "legacy" if n_legacy > n_nft else "nft"
        return FlavourChoice(winner, f"no kubelet hint chains; {winner} has more rules ({counts})")
    said = _version_flavour(version)
    if said:
        return FlavourChoice(
            said,
            f"no kubelet hint chains, as many rules in both ({counts}); `iptables -V` "
            f"says {version.strip()}",
        )
    return FlavourChoice(
        "nft",
        f"no kubelet hint chains, as many rules in both ({counts}), `iptables -V` "
        f"unreadable ({version.strip()!r}); nft, as iptables-wrappers defaults",
    )


def detect_host_flavour(netns: str | None = None, timeout: float = 30.0) -> FlavourChoice:
    """`choose_flavour` over what the iptables binaries show in `netns` (None: the agent's
    own, which with hostNetwork is the host's). Best effort like the wrapper: a save that
    fails counts as empty and is named in the reason; only a missing namespace or missing
    privileges raise (every later call would fail the same way)."""
    unread: list[str] = []

    def save(flavour: str, *args: str) -> list[str]:
        outs: list[str] = []
        for base in ("iptables", "ip6tables"):
            argv = [f"{base}-{flavour}-save", *args]
            cmd = ["ip", "netns", "exec", netns, *argv] if netns else argv
            try:
                outs.append(_run(cmd, timeout))
            except (NotFound, PermissionDenied):
                raise
            except KernelError as exc:
                unread.append(str(exc))
        return outs

    # nft first and only its mangle table: cheap, and on a Kubernetes node with nft (the
    # common case) the answer.
    nft_mangle = save("nft", "-t", "mangle")
    if hint_chains(nft_mangle):
        choice = choose_flavour(nft_mangle)
    else:
        # Legacy is read whole, never with `-t mangle`: iptables-legacy-save -t TABLE asks the
        # kernel for that table by name, which autoloads iptable_mangle and instantiates the
        # table in the namespace if it did not exist (we would create legacy state while
        # trying to find out whether there is any; seen on this project's hosts: a fresh
        # namespace lists "mangle" in /proc/net/ip_tables_names afterwards, and
        # iptables-nft-save starts warning "iptables-legacy tables present"). Without -t it
        # dumps only the tables listed in /proc/net/ip_tables_names, i.e. those that exist.
        # The wrapper says the same: "We can't pass "-t mangle" to iptables-legacy-save
        # because it would cause the kernel to create that table".
        legacy = save("legacy")
        nft = save("nft")  # nft-save never creates tables, with or without -t
        try:
            version = _run(["iptables", "-V"], timeout)
        except KernelError as exc:
            version = ""
            unread.append(str(exc))
        choice = choose_flavour(nft_mangle, legacy, nft, version)
    if unread:
        choice = choice._replace(reason=f"{choice.reason} (unreadable: {'; '.join(unread)})")
    return choice


class IptablesChains:
    """`OwnedChains` through iptables-save/iptables-restore, optionally in a named netns."""

    def __init__(
        self, netns: str | None = None, flavour: str | None = None, timeout: float = 60.0
    ) -> None:
        if flavour is not None and flavour not in FLAVOURS:
            raise InvalidArgument(f"iptables flavour {flavour!r} is not one of {FLAVOURS}")
        self.netns = netns
        self.timeout = timeout
        self._flavour = flavour
        self.flavour_reason = "given" if flavour is not None else ""  # why, once known
        self._plain_checked: set[int] = set()  # families whose unpinned binaries match
        # rules whose read-back differed from canonical_rule(): {(family, rule): as saved}
        self.rewrite_misses: dict[tuple[int, tuple[str, ...]], tuple[str, ...]] = {}
        self.other_backend_in_use = False  # nft flavour, and iptables-legacy has rules too

    # OwnedChains ----------------------------------------------------------------------
    def read(self, family: int, table: str, chain: str) -> ChainSpec | None:
        saved = self._save(family, table)
        if chain not in saved.chains:
            return None
        rules = tuple(args for c, args in saved.rules if c == chain)
        jumps = [(c, args) for c, args in saved.rules if _target(args) == chain]
        hook = ""
        if len(jumps) == 1 and jumps[0][0] in BUILTIN_CHAINS and jumps[0][1] == jump_args(chain):
            hook = jumps[0][0]
        return ChainSpec(family, table, chain, hook, rules)

    def replace(self, spec: ChainSpec) -> None:
        if spec.hook not in BUILTIN_CHAINS:
            raise InvalidArgument(f"{spec.chain}: hook {spec.hook!r} is not a built-in chain")
        saved = self._save(spec.family, spec.table)
        jumps = [(c, args) for c, args in saved.rules if _target(args) == spec.chain]
        lines = [f"*{spec.table}", f":{spec.chain} - [0:0]"]
        lines += [f"-A {spec.chain} {restore_line(rule)}" for rule in spec.rules]
        keep = jumps == [(spec.hook, jump_args(spec.chain))]
        if not keep:
            lines += [f"-D {c} {restore_line(args)}" for c, args in jumps]
            lines.append(f"-I {spec.hook} 1 {restore_line(jump_args(spec.chain))}")
        lines.append("COMMIT")
        self._restore(spec.family, lines, f" replacing {spec.table}/{spec.chain}")
        self._learn(spec)

    def remove(self, family: int, table: str, chain: str, hook: str) -> None:
        saved = self._save(family, table)
        jumps = [(c, args) for c, args in saved.rules if _target(args) == chain]
        if chain not in saved.chains and not jumps:
            return
        lines = [f"*{table}"]
        lines += [f"-D {c} {restore_line(args)}" for c, args in jumps]
        if chain in saved.chains:
            lines += [f"-F {chain}", f"-X {chain}"]
        lines.append("COMMIT")
        self._restore(family, lines, f" removing {table}/{chain}")

    def canonical(self, spec: ChainSpec) -> ChainSpec:
        return spec._replace(
            rules=tuple(
                self.rewrite_misses.get((spec.family, tuple(r)), canonical_rule(r, spec.family))
                for r in spec.rules
            )
        )

    # flavour and binaries -------------------------------------------------------------
    def flavour(self, family: int = 4) -> str:
        """The backend in use, the one given or else detected once from the host's rules
        (`detect_host_flavour`; one answer for IPv4 and IPv6, as kubelet and the wrapper
        use one backend for both) and logged with the reason."""
        _base(family)  # a family that is neither 4 nor 6 is an error either way
        if self._flavour is None:
            choice = detect_host_flavour(self.netns, self.timeout)
            where = f" (network namespace {self.netns})" if self.netns else ""
            log.info("iptables flavour %s%s: %s", choice.flavour, where, choice.reason)
            self._flavour, self.flavour_reason = choice
        return self._flavour

    def binary(self, family: int, verb: str) -> str:
        """iptables-nft-restore and friends; the plain name where the pinned one is absent,
        provided `iptables -V` says that one is the same flavour (else KernelUnavailable:
        the other backend's binary would read and write the wrong tables)."""
        flavour = self.flavour(family)
        pinned = f"{_base(family)}-{flavour}-{verb}"
        if shutil.which(pinned):
            return pinned
        if family not in self._plain_checked:
            plain = detect_flavour(_base(family), self.timeout)
            if plain != flavour:
                raise KernelUnavailable(
                    f"the host's iptables is {flavour} but {pinned} is not installed and "
                    f"{_base(family)} is {plain} (Debian package {_PACKAGE})"
                )
            self._plain_checked.add(family)
        return f"{_base(family)}-{verb}"

    # internals ------------------------------------------------------------------------
    def _cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _save(self, family: int, table: str) -> SavedTable:
        warnings: list[str] = []
        out = _run(
            self._cmd([self.binary(family, "save"), "-t", table]),
            self.timeout,
            what=f" reading {table}",
            warnings=warnings,
        )
        # iptables-nft-save notices rules in the legacy backend (kube-proxy or a CNI on
        # iptables-legacy while the host's iptables is nft). Both run in the kernel, so our
        # marks still apply, but an operator debugging with one tool sees half the rules.
        if not self.other_backend_in_use and any("legacy tables present" in w for w in warnings):
            self.other_backend_in_use = True
            log.warning(
                "%s: the host's iptables is %s but legacy tables hold rules too (%s)",
                self.netns or "host",
                self.flavour(family),
                warnings[0],
            )
        return parse_save(out, table)

    def _restore(self, family: int, lines: list[str], what: str) -> None:
        cmd = self._cmd([self.binary(family, "restore"), "--noflush", "-w", str(int(self.timeout))])
        _run(cmd, self.timeout + 5, stdin="\n".join(lines) + "\n", what=what)

    def _learn(self, spec: ChainSpec) -> None:
        """Compare what the kernel kept with canonical_rule(); remember and log misses."""
        live = self.read(spec.family, spec.table, spec.chain)
        if live is None or len(live.rules) != len(spec.rules):
            return  # changed under us; the next resync sorts it out
        for wrote, got in zip(spec.rules, live.rules, strict=True):
            key = (spec.family, tuple(wrote))
            if key not in self.rewrite_misses and canonical_rule(wrote, spec.family) != got:
                log.warning(
                    "canonical_rule() does not match iptables-save for %s; using the saved "
                    "form from now on: %s -> %s",
                    spec.chain,
                    restore_line(wrote),
                    restore_line(got),
                )
                self.rewrite_misses[key] = got


def _base(family: int) -> str:
    if family == 4:
        return "iptables"
    if family == 6:
        return "ip6tables"
    raise InvalidArgument(f"family {family} is not 4 or 6")
