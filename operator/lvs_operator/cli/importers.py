"""Import existing LVS configurations as VirtualService and RealServer manifests.

`import_ipvsadm` reads `ipvsadm-save -n` output or a script of ipvsadm commands (through
`compiler.ipvsadm_parse`); `import_keepalived` reads a keepalived.conf. Both return the
manifests and a `LineProblem` for every line whose meaning the model cannot hold, so that
nothing is dropped silently. What the model can hold is imported so that compiling the
objects gives back exactly the IPVS services and destinations the input describes (the
round trips in tests/unit/test_import.py and test_lvs_corpus.py prove it).

Shape of the output: IPVS services that share a VIP, scheduler, persistence, forwarding and
the same real servers (address, weight, thresholds) become one VirtualService with several
ports (the 80 + 443 pair, TCP + UDP 53); the real servers become RealServers labelled
`lvs.dev/pool: <VirtualService name>` and selected by that label. A service whose real
servers listen on different ports keeps one VirtualService with the port on each RealServer.

keepalived semantics are keepalived 2.x's, read in its source (github.com/acassen/keepalived
at 9cbce3e2117fd7dfbddf3cd4c45dad6283189176: keepalived/check/check_parser.c for the
keywords, check_data.c alloc_vs()/alloc_rs()/validate_check_config() for the defaults and
corrections, check_http.c/check_tcp.c/check_api.c for the checkers, ipvswrapper.c for the
ports programmed for groups, lib/parser.c decomment()/alloc_strvec_r() for the syntax,
doc/man/man5/keepalived.conf.5.in): forwarding NAT, scheduler wlc, weight 1, quorum 1,
delay_loop 60 s, connect_timeout 5 s, retry 1, delay_before_retry 1 s (HTTP_GET/SSL_GET 3 s),
HTTP status 200-299, persistence_timeout without a value 360 s, no protocol = UDP. The IPVS
table compared against is the one keepalived holds once every checker has passed.

What neither ipvsadm nor keepalived say is not guessed: which VIP and ports a firewall mark
stands for comes from understood mangle MARK rules in the same script or from the caller
(`fwmarks`, lvsctl's --fwmark); FULLNAT's source NAT lives in iptables, so such a service
reads as NAT.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api.objects import API_VERSION, parse_manifest
from ..api.schema import SpecError
from ..api.types import SchedulerFlag, SchedulerName, is_unicast_ip
from ..compiler.ipvsadm_parse import (
    DEFAULT_PERSISTENCE,
    LineProblem,
    MarkMatch,
    ParsedRules,
    parse_ipvsadm,
)
from ..compiler.plan import (
    FORWARD_MASQ,
    FORWARD_ROUTE,
    FORWARD_TUNNEL,
    HEALTH_PATH_MARK_COUNT,
    HEALTH_PATH_MARK_FIRST,
    IPVSService,
    ServiceKey,
    is_health_path,
)

__all__ = [
    "POOL_LABEL",
    "FwmarkTarget",
    "ImportResult",
    "LineProblem",
    "import_ipvsadm",
    "import_keepalived",
    "parse_fwmark_target",
]

POOL_LABEL = "lvs.dev/pool"
DEFAULT_SELECTOR = ("lvs.dev/director", "true")
_MODEL_SCHEDULERS = {s.value for s in SchedulerName}
_MODEL_FLAGS = {f.value for f in SchedulerFlag}
_METHOD = {FORWARD_MASQ: "NAT", FORWARD_ROUTE: "DR", FORWARD_TUNNEL: "TUN"}
_PROTO = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}
# Registered HTTP status codes (IANA registry), for keepalived ranges wider than the 16 codes
# a HealthCheck lists.
_REGISTERED_STATUS = (
    *range(100, 104), *range(200, 209), 226, *range(300, 309), *range(400, 419),
    *range(421, 427), 428, 429, 431, 451, *range(500, 509), 510, 511,
)
MAX_STATUS_CODES = 16
MAX_PEERS = 16
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


@dataclass(frozen=True, slots=True)
class FwmarkTarget:
    """What a firewall mark stands for, which ipvsadm and keepalived do not say: the VIP and
    the (protocol, port) pairs whose packets carry the mark, optionally by client range."""

    address: str
    ports: tuple[tuple[str, int], ...]
    source_ranges: tuple[str, ...] = ()
    except_ranges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImportResult:
    objects: list[dict[str, Any]]
    problems: list[LineProblem]


def parse_fwmark_target(text: str) -> tuple[int, FwmarkTarget]:
    """`MARK=ADDRESS,PROTO:PORT[,PROTO:PORT...]` (the ipset entry syntax), e.g.
    `99=192.0.2.50,tcp:80,tcp:443`; raises ValueError with the reason."""
    mark_text, eq, rest = text.partition("=")
    parts = rest.split(",")
    if not eq or not mark_text.isdigit() or len(parts) < 2:
        raise ValueError(f"{text!r}: expected MARK=ADDRESS,PROTO:PORT[,PROTO:PORT...]")
    address = parts[0].strip("[]")
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {address!r} is not an IP address") from exc
    ports = []
    for part in parts[1:]:
        proto, colon, port = part.partition(":")
        if not colon or proto.lower() not in _PROTO or not port.isdigit():
            raise ValueError(f"{text!r}: {part!r} is not PROTO:PORT (tcp:80, udp:53, sctp:...)")
        ports.append((proto.lower(), int(port)))
    return int(mark_text), FwmarkTarget(address, tuple(ports))


# --------------------------------------------------------------------------- shared builder


@dataclass
class _Dest:
    address: str
    port: int
    weight: int
    upper: int = 0
    lower: int = 0


@dataclass
class _Want:
    """One IPVS service as a VirtualService will express it."""

    key: ServiceKey
    line_no: int
    scheduler: str
    flags: tuple[str, ...] = ()
    persistence: dict[str, Any] | None = None
    one_packet: bool = False
    forwarding: dict[str, Any] = field(default_factory=lambda: {"method": "NAT"})
    dests: list[_Dest] = field(default_factory=list)
    fwmark: FwmarkTarget | None = None
    health_check: dict[str, Any] | None = None
    ha: dict[str, Any] | None = None
    interface: str | None = None


class _Problems:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.items: list[LineProblem] = []

    def add(self, line_no: int, message: str) -> None:
        line = self.lines[line_no - 1].strip() if 0 < line_no <= len(self.lines) else ""
        self.items.append(LineProblem(line_no, line, message))

    def sorted(self) -> list[LineProblem]:
        seen: set[tuple[int, str]] = set()
        out = []
        for p in sorted(self.items, key=lambda p: p.line_no):
            if (p.line_no, p.message) not in seen:
                seen.add((p.line_no, p.message))
                out.append(p)
        return out


def _slug(address: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", address.lower()).strip("-")


def _dns_name(text: str) -> str:
    name = re.sub(r"[^0-9a-z-]+", "-", text.lower()).strip("-") or "imported"
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name[:54].rstrip("-") + "-" + digest
    return name


def _json_key(value: Any) -> str:
    return repr(value)


def _build(
    wants: list[_Want],
    problems: _Problems,
    *,
    namespace: str,
    name_prefix: str,
    director_selector: tuple[str, str],
) -> list[dict[str, Any]]:
    """Group the services into VirtualServices, emit them with their RealServers, and check
    every manifest against the model (a refusal is a problem on the service's line)."""
    claimed: dict[tuple[Any, ...], int] = {}
    unique: list[_Want] = []
    for w in wants:
        claims: list[tuple[Any, ...]] = []
        if w.fwmark is not None:
            family = 6 if ":" in w.fwmark.address else 4
            claims.append(("mark", w.key.fwmark))
            claims += [(family, proto, w.fwmark.address, port) for proto, port in w.fwmark.ports]
        else:
            claims.append((w.key.family, w.key.protocol, w.key.address, w.key.port))
        clash = next((c for c in claims if c in claimed), None)
        if clash is not None:
            what = (f"firewall mark {clash[1]}" if clash[0] == "mark"
                    else f"{clash[1]}/{_hostport(clash[2], clash[3])}")
            problems.add(w.line_no, f"{what} is already imported from line {claimed[clash]}; a "
                                    "VIP:port or mark belongs to one VirtualService; not imported")
            continue
        for c in claims:
            claimed[c] = w.line_no
        unique.append(w)

    groups: dict[tuple[Any, ...], list[_Want]] = {}
    order: list[tuple[Any, ...]] = []
    for i, w in enumerate(unique):
        dest_ports = {d.port for d in w.dests}
        addrs = [d.address for d in w.dests]
        uniform = len(dest_ports) <= 1 and len(set(addrs)) == len(addrs)
        if w.fwmark is not None or not uniform:
            gkey: tuple[Any, ...] = ("alone", i)
        else:
            signature = frozenset((d.address, d.weight, d.upper, d.lower) for d in w.dests)
            gkey = (
                w.key.family, w.key.address, w.scheduler, w.flags, _json_key(w.persistence),
                w.one_packet, _json_key(w.forwarding), _json_key(w.health_check),
                _json_key(w.ha), w.interface, signature,
            )
        if gkey not in groups:
            groups[gkey] = []
            order.append(gkey)
        groups[gkey].append(w)

    objects: list[dict[str, Any]] = []
    used_names: set[str] = set()
    for gkey in order:
        members = groups[gkey]
        first = members[0]
        spec: dict[str, Any] = {}
        if first.fwmark is not None:
            fm = first.fwmark
            base = f"fwmark-{first.key.fwmark}" + ("-6" if first.key.family == 6 else "")
            spec["address"] = fm.address
            mark: dict[str, Any] = {
                "mark": first.key.fwmark,
                "ports": [{"port": p, "protocol": _PROTO[proto]} for proto, p in fm.ports],
            }
            if fm.source_ranges:
                mark["sourceRanges"] = list(fm.source_ranges)
            if fm.except_ranges:
                mark["exceptRanges"] = list(fm.except_ranges)
            spec["firewallMark"] = mark
        else:
            base = "-".join(
                [_slug(first.key.address)]
                + [str(w.key.port) if w.key.protocol == "tcp" else f"{w.key.protocol}{w.key.port}"
                   for w in members]
            )
            spec["address"] = first.key.address
            ports = []
            for w in members:
                entry: dict[str, Any] = {"port": w.key.port, "protocol": _PROTO[w.key.protocol]}
                dports = {d.port for d in w.dests}
                if gkey[0] != "alone" and dports and next(iter(dports)) != w.key.port:
                    entry["targetPort"] = next(iter(dports))
                ports.append(entry)
            spec["ports"] = ports
        name = _dns_name(name_prefix + base)
        n = 2
        while name in used_names:
            name = _dns_name(f"{name_prefix}{base}-{n}")
            n += 1
        used_names.add(name)
        if first.forwarding != {"method": "NAT"}:
            spec["forwarding"] = first.forwarding
        sched: dict[str, Any] = {"name": first.scheduler}
        if first.flags:
            sched["flags"] = list(first.flags)
        spec["scheduler"] = sched
        if first.persistence is not None:
            spec["persistence"] = first.persistence
        if first.one_packet:
            spec["onePacketScheduling"] = True
        if first.health_check is not None:
            spec["healthCheck"] = first.health_check
        if first.ha is not None:
            spec["ha"] = first.ha
        directors: dict[str, Any] = {"nodeSelector": {"matchLabels": {
            director_selector[0]: director_selector[1]}}}
        if first.interface:
            directors["interface"] = first.interface
        spec["directors"] = directors
        spec["backends"] = {"realServerSelector": {"matchLabels": {POOL_LABEL: name}}}
        vs = {
            "apiVersion": API_VERSION,
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        real_servers = []
        grouped = gkey[0] != "alone"
        for d in first.dests:
            rs_spec: dict[str, Any] = {"address": d.address}
            suffix = _slug(d.address)
            if not grouped and first.fwmark is None and d.port != first.key.port:
                rs_spec["port"] = d.port
                suffix += f"-{d.port}"
            if d.weight != 1:
                rs_spec["weight"] = d.weight
            if d.upper:
                rs_spec["upperThreshold"] = d.upper
            if d.lower:
                rs_spec["lowerThreshold"] = d.lower
            real_servers.append({
                "apiVersion": API_VERSION,
                "kind": "RealServer",
                "metadata": {"name": f"{name}-{suffix}"[:253].rstrip("-"), "namespace": namespace,
                             "labels": {POOL_LABEL: name}},
                "spec": rs_spec,
            })
        refused = False
        for doc in (vs, *real_servers):
            try:
                parse_manifest(doc)
            except SpecError as exc:
                refused = True
                for err in exc.errors:
                    problems.add(first.line_no, f"the model refuses {exc.obj}: {err}; not imported")
        if not refused:
            objects.append(vs)
            objects.extend(real_servers)
    return objects


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _selector(director_selector: str | tuple[str, str] | None) -> tuple[str, str]:
    if director_selector is None:
        return DEFAULT_SELECTOR
    if isinstance(director_selector, tuple):
        return director_selector
    key, eq, value = director_selector.partition("=")
    if not eq or not key:
        raise ValueError(f"director selector {director_selector!r}: expected KEY=VALUE")
    return key, value


# --------------------------------------------------------------------------- ipvsadm


def _mark_targets(
    marks: list[MarkMatch], problems: _Problems
) -> tuple[dict[tuple[int, int], FwmarkTarget], dict[tuple[int, int], list[int]]]:
    """Firewall marks described by understood mangle rules: (family, mark) -> target."""
    by_mark: dict[tuple[int, int], list[MarkMatch]] = {}
    for m in marks:
        by_mark.setdefault((m.family, m.mark), []).append(m)
    out: dict[tuple[int, int], FwmarkTarget] = {}
    lines: dict[tuple[int, int], list[int]] = {}
    for key, rules in by_mark.items():
        lines[key] = [r.line_no for r in rules]
        addresses = {r.address for r in rules}
        conds: dict[tuple[str, int], set[tuple[str, bool]]] = {}
        for r in rules:
            for port in r.ports:
                conds.setdefault(port, set()).add((r.source, r.negated))
        shapes = {frozenset(c) for c in conds.values()}
        reason = ""
        if len(addresses) > 1:
            reason = f"mark {key[1]} is set for several addresses ({', '.join(sorted(addresses))})"
        elif len(shapes) > 1:
            reason = f"mark {key[1]} is set for different client ranges on different ports"
        else:
            shape = next(iter(shapes))
            negs = [s for s, neg in shape if neg]
            poss = [s for s, neg in shape if not neg]
            if ("", False) in shape and len(shape) > 1:
                poss = []  # any source already covers the rest
                negs = []
            if negs and (poss or len(negs) > 1):
                reason = f"mark {key[1]} combines client ranges in a way the model cannot express"
            if not reason:
                out[key] = FwmarkTarget(
                    next(iter(addresses)),
                    tuple(sorted(conds)),
                    tuple(sorted(s for s in poss if s)),
                    tuple(sorted(negs)),
                )
        if reason:
            for r in rules:
                problems.add(r.line_no, f"{reason}; a VirtualService marks one VIP's ports for "
                                        "one set of client ranges; not imported")
    return out, lines


def import_ipvsadm(
    text: str,
    *,
    namespace: str = "default",
    name_prefix: str = "",
    director_selector: str | tuple[str, str] | None = None,
    fwmarks: Mapping[int, FwmarkTarget] | None = None,
) -> ImportResult:
    """`ipvsadm-save` output or an ipvsadm script -> manifests + problems.

    `fwmarks` says which VIP and ports a firewall mark stands for when the input has no
    understood `iptables -t mangle ... -j MARK --set-mark N` rule for it."""
    selector = _selector(director_selector)
    parsed: ParsedRules = parse_ipvsadm(text)
    problems = _Problems(text)
    for p in parsed.problems:
        problems.items.append(p)
    targets, mark_lines = _mark_targets(parsed.marks, problems)
    used_marks: set[tuple[int, int]] = set()
    wants: list[_Want] = []
    for svc in parsed.services:
        line_no = parsed.service_lines.get(svc.key, 0)
        want = _want_from_service(svc, line_no, parsed, problems)
        if want is None:
            continue
        if is_health_path(svc.key):
            problems.add(
                line_no,
                f"firewall-mark service {svc.key.fwmark}: marks {HEALTH_PATH_MARK_FIRST:#x}-"
                f"{HEALTH_PATH_MARK_FIRST + HEALTH_PATH_MARK_COUNT - 1:#x} are the agent's "
                "health-path services (from an lvs-operator director it is one of them and "
                "needs no import); otherwise renumber the mark to import it "
                f"({len(svc.destinations)} real server(s) not imported)",
            )
            continue
        if svc.key.fwmark:
            hint = (fwmarks or {}).get(svc.key.fwmark)
            target = hint or targets.get((svc.key.family, svc.key.fwmark))
            if target is None:
                problems.add(
                    line_no,
                    f"firewall-mark service {svc.key.fwmark}: ipvsadm does not say which VIP and "
                    "ports carry the mark, and no understood `iptables -t mangle -A PREROUTING "
                    f"... -j MARK --set-mark {svc.key.fwmark}` rule in this input does; pass "
                    f"--fwmark {svc.key.fwmark}=VIP,tcp:PORT,... to import it "
                    f"({len(svc.destinations)} real server(s) not imported)",
                )
                continue
            if (6 if ":" in target.address else 4) != svc.key.family:
                problems.add(line_no, f"firewall-mark service {svc.key.fwmark} is IPv"
                                      f"{svc.key.family} but its VIP {target.address} is not; "
                                      "not imported")
                continue
            if hint is None:
                used_marks.add((svc.key.family, svc.key.fwmark))
            want.fwmark = target
        wants.append(want)
    for key, lines in mark_lines.items():
        if key not in used_marks and key in targets:
            for no in lines:
                problems.add(no, f"sets firewall mark {key[1]}, which no imported `ipvsadm -f "
                                 f"{key[1]}` service uses; not imported")
    objects = _build(wants, problems, namespace=namespace, name_prefix=name_prefix,
                     director_selector=selector)
    return ImportResult(objects, problems.sorted())


def _want_from_service(
    svc: IPVSService, line_no: int, parsed: ParsedRules, problems: _Problems
) -> _Want | None:
    key = svc.key
    if svc.scheduler not in _MODEL_SCHEDULERS:
        problems.add(line_no, f"scheduler {svc.scheduler} is not one the VirtualService model "
                              f"offers ({', '.join(sorted(_MODEL_SCHEDULERS))}); not imported")
        return None
    if not key.fwmark:
        if key.port == 0:
            problems.add(line_no, "a port-0 (all ports) persistent service has no VirtualService "
                                  "form (ports are 1-65535; use a firewall mark); not imported")
            return None
        if not is_unicast_ip(key.address):
            problems.add(line_no, f"{key.address} is not a unicast address a VirtualService can "
                                  "hold; not imported")
            return None
    flags = []
    for flag in svc.flags:
        if flag in _MODEL_FLAGS:
            flags.append(flag)
        else:
            problems.add(line_no, f"scheduler flag {flag} means nothing to {svc.scheduler} and "
                                  "the model has no place for it; imported without it")
    want = _Want(key, line_no, svc.scheduler, tuple(flags), one_packet=svc.one_packet)
    if svc.persistence_timeout:
        pers: dict[str, Any] = {"timeout": svc.persistence_timeout}
        if svc.persistence_prefix != (32 if key.family == 4 else 128):
            pers["prefixLength"] = svc.persistence_prefix
        if svc.persistence_engine:
            if key.fwmark or key.protocol == "udp":
                pers["engine"] = svc.persistence_engine
            else:
                problems.add(line_no, f"--pe {svc.persistence_engine} on a {key.protocol} service: "
                                      "the model allows the sip engine on UDP only; imported "
                                      "without it")
        want.persistence = pers
    elif svc.persistence_engine:
        problems.add(line_no, f"--pe {svc.persistence_engine} without -p: a persistence engine "
                              "only acts on persistent services, and the model sets it inside "
                              "persistence; imported without it")
    chosen: tuple[str, str, int, str] | None = None
    for d in svc.destinations:
        dline = parsed.dest_lines.get((key, d.address, d.port), line_no)
        fwd = (d.forward, d.tunnel_type, d.tunnel_port, d.tunnel_checksum)
        if chosen is None:
            chosen = fwd
        elif fwd != chosen:
            problems.add(dline, f"real server {d.address} uses {_describe_fwd(fwd)} but this "
                                f"service's first real server uses {_describe_fwd(chosen)}; a "
                                "VirtualService has one forwarding method; not imported")
            continue
        port = d.port
        if key.fwmark and port:
            if d.forward == FORWARD_MASQ:
                problems.add(dline, f"real server {d.address}:{port} of a firewall-mark NAT "
                                    "service rewrites the port; the model gives fwmark real "
                                    "servers port 0 (keep the client's port); not imported")
                continue
            problems.add(dline, f"real server {d.address}:{port}: DR/TUN ignore the port of a "
                                "firewall-mark real server and the model writes 0; imported as "
                                f"{d.address}:0")
            port = 0
        if not is_unicast_ip(d.address):
            problems.add(dline, f"{d.address} is not a unicast address a RealServer can hold; "
                                "not imported")
            continue
        if any(x.address == d.address and x.port == port for x in want.dests):
            problems.add(dline, f"real server {d.address} is already imported as "
                                f"{d.address}:{port}; not imported twice")
            continue
        want.dests.append(_Dest(d.address, port, d.weight, d.upper_threshold, d.lower_threshold))
    if chosen is not None:
        want.forwarding = _forwarding_spec(*chosen)
    return want


def _describe_fwd(fwd: tuple[str, str, int, str]) -> str:
    method, ttype, tport, csum = fwd
    if method != FORWARD_TUNNEL:
        return _METHOD[method]
    extra = f" port {tport}" if tport else ""
    extra += f" {csum}" if csum and csum != "none" else ""
    return f"TUN ({ttype}{extra})"


def _forwarding_spec(method: str, ttype: str, tport: int, csum: str) -> dict[str, Any]:
    out: dict[str, Any] = {"method": _METHOD[method]}
    if method == FORWARD_TUNNEL and ttype and ttype != "ipip":
        tunnel: dict[str, Any] = {"type": ttype}
        if tport:
            tunnel["port"] = tport
        if csum and csum != "none":
            tunnel["checksum"] = csum
        out["tunnel"] = tunnel
    return out


# --------------------------------------------------------------------------- keepalived syntax


@dataclass
class _KNode:
    line_no: int
    word: str
    args: list[str]
    children: list[_KNode] | None = None
    end_line: int = 0

    def __str__(self) -> str:
        return " ".join([self.word, *self.args])


def _decomment(line: str) -> tuple[str, bool]:
    """lib/parser.c decomment(): cut at an unquoted # or !, unescape \\# and \\!, and tell
    whether a trailing backslash continues the line."""
    out: list[str] = []
    quote = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == '"':
            quote = not quote
        elif c == "\\":
            if i + 1 >= len(line):
                return "".join(out).rstrip(), True
            if not quote and line[i + 1] in "#!":
                out.append(line[i + 1])
                i += 2
                continue
            out.append(line[i : i + 2])
            i += 2
            continue
        elif not quote and c in "#!":
            break
        out.append(c)
        i += 1
    return "".join(out).strip(), False


def _ktokens(line: str) -> list[str]:
    """alloc_strvec_r(): whitespace-separated words, a quoted string is one word; braces are
    words of their own."""
    out: list[str] = []
    i = 0
    while i < len(line):
        c = line[i]
        if c.isspace():
            i += 1
        elif c == '"':
            end = line.find('"', i + 1)
            end = len(line) if end < 0 else end
            out.append(line[i + 1 : end])
            i = end + 1
        elif c in "{}":
            out.append(c)
            i += 1
        else:
            j = i
            while j < len(line) and not line[j].isspace() and line[j] not in '"{}':
                j += 1
            out.append(line[i:j])
            i = j
    return out


def _parse_keepalived(text: str, problems: _Problems) -> list[_KNode]:
    root: list[_KNode] = []
    stack: list[tuple[_KNode | None, list[_KNode]]] = [(None, root)]
    pending: _KNode | None = None  # a statement that may still get a `{` on a later line
    cont: list[str] = []
    cont_start = 0
    for no, raw in enumerate(text.splitlines(), 1):
        body, more = _decomment(raw)
        if more:
            if not cont:
                cont_start = no
            cont.append(body)
            continue
        if cont:
            body = " ".join([*cont, body])
            no_first = cont_start
            cont = []
        else:
            no_first = no
        tokens = _ktokens(body)
        if not tokens:
            continue
        current: list[str] = []

        def finish(tokens_: list[str], line_no: int) -> _KNode | None:
            if not tokens_:
                return None
            node = _KNode(line_no, tokens_[0], tokens_[1:])
            stack[-1][1].append(node)
            return node

        for tok in tokens:
            if tok == "{":
                node = finish(current, no_first)
                if node is None:
                    node = pending
                if node is None or node.children is not None:
                    problems.add(no_first, "`{` without a keyword before it; ignored")
                    node = _KNode(no_first, "", [])
                node.children = []
                stack.append((node, node.children))
                current = []
                pending = None
            elif tok == "}":
                finish(current, no_first)
                current = []
                pending = None
                if len(stack) == 1:
                    problems.add(no, "`}` closes nothing; ignored")
                else:
                    closed = stack.pop()[0]
                    if closed is not None:
                        closed.end_line = no
            else:
                current.append(tok)
        pending = finish(current, no_first)
    while len(stack) > 1:
        node, _ = stack.pop()
        if node is not None:
            problems.add(node.line_no, f"the block of `{node}` is never closed; read to the end "
                                       "of the file")
    return root


# --------------------------------------------------------------------------- keepalived model


@dataclass
class _KUrl:
    node: _KNode
    path: str = ""
    digest: str = ""
    codes: set[int] = field(default_factory=set)
    virtualhost: str | None = None


@dataclass
class _KCheck:
    node: _KNode
    kind: str  # TCP_CHECK | HTTP_GET | SSL_GET
    port: int | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    delay_loop: float | None = None
    urls: list[_KUrl] = field(default_factory=list)
    virtualhost: str | None = None


@dataclass
class _KRS:
    node: _KNode
    address: str
    family: int
    port: int | None
    weight: int | None = None
    forward: tuple[str, str, int, str] | None = None  # from lvs_method or inherited
    upper: int = 0
    lower: int = 0
    inhibit: bool | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    delay_loop: float | None = None
    virtualhost: str | None = None
    checks: list[_KCheck] = field(default_factory=list)


@dataclass
class _KVS:
    node: _KNode
    kind: str  # address | fwmark | group
    address: str = ""
    family: int = 0
    port: int = 0
    mark: int = 0
    group: str = ""
    protocol: str = ""
    protocol_node: _KNode | None = None
    scheduler: str = ""
    flag_bits: set[int] = field(default_factory=set)
    named_flags: list[str] = field(default_factory=list)
    ops: _KNode | None = None
    forward: tuple[str, str, int, str] | None = None
    timeout: int = 0
    granularity: int | None = None
    engine: str = ""
    delay_loop: float = 60.0
    connect_timeout: float = 5.0
    retry: int | None = None
    delay_before_retry: float | None = None
    inhibit: bool = False
    weight: int = 1
    quorum: int = 1
    quorum_node: _KNode | None = None
    hysteresis: int = 0
    sorry: tuple[str, int | None, _KNode] | None = None
    virtualhost: str | None = None
    real_servers: list[_KRS] = field(default_factory=list)


@dataclass
class _KVrrp:
    node: _KNode
    name: str
    vrid: int | None = None
    priority: int = 100
    advert: int = 1
    interface: str | None = None
    vips: list[tuple[str, str | None, _KNode]] = field(default_factory=list)  # addr, dev, line
    peers: list[str] = field(default_factory=list)
    sync_interface: str | None = None


_UNSUPPORTED_BLOCKS = {
    "vrrp_sync_group": "VRRP sync groups",
    "vrrp_script": "VRRP tracking scripts",
    "vrrp_track_process": "VRRP process tracking",
    "track_file": "tracked files",
    "static_ipaddress": "static addresses",
    "static_routes": "static routes",
    "static_rules": "static policy rules",
    "linkbeat_interfaces": "link beat interfaces",
    "bfd_instance": "BFD instances",
    "SSL": "the SSL_GET client certificate context",
    "garp_group": "gratuitous ARP groups",
    "net_namespace": "network namespaces",
    "instance": "instance names",
}


def _timer(node: _KNode, problems: _Problems, what: str) -> float | None:
    try:
        value = float(node.args[0])
    except (IndexError, ValueError):
        problems.add(node.line_no, f"{what} `{' '.join(node.args)}` is not a number of seconds; "
                                   "keepalived ignores it, and so does the import")
        return None
    if value < 0:
        problems.add(node.line_no, f"{what} is negative; ignored")
        return None
    return value


def _int(node: _KNode, problems: _Problems, what: str, low: int, high: int) -> int | None:
    try:
        value = int(node.args[0])
    except (IndexError, ValueError):
        problems.add(node.line_no, f"{what} `{' '.join(node.args)}` is not an integer; "
                                   "keepalived ignores it, and so does the import")
        return None
    if not low <= value <= high:
        problems.add(node.line_no, f"{what} {value} is outside {low}-{high}; keepalived ignores "
                                   "it, and so does the import")
        return None
    return value


def _bool(node: _KNode) -> bool:
    return not node.args or node.args[0].lower() in ("true", "yes", "on", "1")


def _kaddr(text: str) -> tuple[str, int] | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(addr), addr.version


def _kport(text: str | None) -> int | None:
    if text is None or text.strip("0") == "":
        return None
    return int(text) if text.isdigit() and int(text) <= 65535 else -1


def _lvs_method(node: _KNode, problems: _Problems) -> tuple[str, str, int, str] | None:
    """svr_forwarding_handler(): NAT | DR | TUN [type ipip|gue port N|gre] [nocsum|csum|remcsum]"""
    if not node.args or node.args[0] not in ("NAT", "DR", "TUN"):
        problems.add(node.line_no, f"unknown forwarding method `{' '.join(node.args)}`; "
                                   "keepalived ignores it, and so does the import")
        return None
    method = {"NAT": FORWARD_MASQ, "DR": FORWARD_ROUTE, "TUN": FORWARD_TUNNEL}[node.args[0]]
    ttype, port, csum = "ipip", 0, "none"
    args = node.args[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "type" and i + 1 < len(args) and args[i + 1] in ("ipip", "gue", "gre"):
            ttype = args[i + 1]
            i += 2
        elif a == "port" and i + 1 < len(args) and args[i + 1].isdigit():
            port = int(args[i + 1])
            i += 2
        elif a in ("nocsum", "csum", "remcsum"):
            csum = {"nocsum": "none"}.get(a, a)
            i += 1
        else:
            problems.add(node.line_no, f"invalid tunnel option `{a}`; keepalived ignores the "
                                       "whole line, and so does the import")
            return None
    if method != FORWARD_TUNNEL:
        return (method, "", 0, "")
    if (ttype == "gue") != (port != 0) or (ttype == "ipip" and csum != "none") or (
        ttype == "gre" and csum == "remcsum"
    ):
        problems.add(node.line_no, "tunnel options keepalived refuses (gue needs a port, ipip "
                                   "takes no checksum, gre no remcsum); ignored")
        return None
    return (method, ttype, port, csum if ttype != "ipip" else "")


def import_keepalived(
    text: str,
    *,
    namespace: str = "default",
    name_prefix: str = "",
    director_selector: str | tuple[str, str] | None = None,
    fwmarks: Mapping[int, FwmarkTarget] | None = None,
) -> ImportResult:
    """keepalived.conf -> manifests + problems. IPVS state is what keepalived programs once
    every real server's checks pass (its steady state)."""
    selector = _selector(director_selector)
    problems = _Problems(text)
    root = _parse_keepalived(text, problems)
    groups: dict[str, _KNode] = {}
    used_groups: set[str] = set()
    vrrps: list[_KVrrp] = []
    servers: list[_KVS] = []
    sync: dict[str, Any] | None = None
    sync_instance = ""
    for node in root:
        word = node.word
        if word.startswith("@") or word.startswith("$") or word.startswith("~"):
            problems.add(node.line_no, f"`{word}`: keepalived conditional configuration and "
                                       "parameter definitions are not evaluated; not imported")
        elif word == "include":
            problems.add(node.line_no, f"include {' '.join(node.args)}: other files are not "
                                       "followed; import them separately")
        elif word == "global_defs":
            for child in node.children or ():
                if child.word == "lvs_sync_daemon" and child.args:
                    sync = {"enabled": True, "interface": child.args[0]}
                    rest = child.args[1:]
                    for i, a in enumerate(rest):
                        if a == "inst" and i + 1 < len(rest):
                            sync_instance = rest[i + 1]
                        elif a == "id" and i + 1 < len(rest) and rest[i + 1].isdigit():
                            sync["syncID"] = int(rest[i + 1])
                        elif a in ("maxlen", "port", "ttl", "group"):
                            problems.add(child.line_no, f"lvs_sync_daemon {a}: the model's "
                                                        "connectionSync has no such setting; "
                                                        "not imported")
                else:
                    problems.add(child.line_no, f"global_defs {child.word}: a keepalived daemon "
                                                "setting with no VirtualService equivalent; not "
                                                "imported")
        elif word == "vrrp_instance":
            vrrps.append(_vrrp(node, problems))
        elif word == "virtual_server_group":
            if node.args:
                groups[node.args[0]] = node
        elif word == "virtual_server":
            vs = _virtual_server(node, problems)
            if vs is not None:
                servers.append(vs)
        elif word in _UNSUPPORTED_BLOCKS:
            problems.add(node.line_no, f"{word}: {_UNSUPPORTED_BLOCKS[word]} have no "
                                       "VirtualService equivalent; not imported")
        else:
            problems.add(node.line_no, f"unknown or unsupported top-level keyword `{word}`; "
                                       "not imported")

    # VRRP: which instance holds each VIP; the sync daemon's id defaults to that vrid.
    vip_owner: dict[str, tuple[_KVrrp, str | None, _KNode]] = {}
    for inst in vrrps:
        for addr, dev, vnode in inst.vips:
            if addr in vip_owner:
                problems.add(vnode.line_no, f"VIP {addr} is already in vrrp_instance "
                                            f"{vip_owner[addr][0].name}; ignored here")
                continue
            vip_owner[addr] = (inst, dev, vnode)
        if inst.sync_interface and sync is None:
            sync = {"enabled": True, "interface": inst.sync_interface}
            if inst.vrid is not None:
                sync["syncID"] = inst.vrid
    if sync is not None and "syncID" not in sync and sync_instance:
        for inst in vrrps:
            if inst.name == sync_instance and inst.vrid is not None:
                sync["syncID"] = inst.vrid

    wants: list[_Want] = []
    vs_addresses: set[str] = set()
    for vs in servers:
        for want in _wants_of(vs, groups, used_groups, fwmarks or {}, problems):
            if not want.key.fwmark:
                vs_addresses.add(want.key.address)
            address = want.fwmark.address if want.fwmark is not None else want.key.address
            owner = vip_owner.get(address)
            if owner is not None or sync is not None:
                ha: dict[str, Any] = {"mode": "None"}
                if owner is not None:
                    inst, dev, _ = owner
                    vrrp: dict[str, Any] = {"virtualRouterID": inst.vrid}
                    if inst.priority != 100:
                        vrrp["priority"] = inst.priority
                    if inst.advert != 1:
                        vrrp["advertIntervalSeconds"] = inst.advert
                    if inst.peers:
                        vrrp["unicastPeers"] = inst.peers
                    ha = {"mode": "VRRP", "vrrp": vrrp}
                    want.interface = dev or inst.interface
                if sync is not None:
                    ha["connectionSync"] = dict(sync)
                want.ha = ha
            wants.append(want)
    for inst in vrrps:
        unused = [(a, n) for a, _d, n in inst.vips if a not in vs_addresses]
        if inst.vips and len(unused) == len(inst.vips):
            problems.add(inst.node.line_no, f"vrrp_instance {inst.name}: none of its VIPs is a "
                                            "virtual_server address, and the model holds VRRP "
                                            "settings on VirtualServices only; not imported")
        for addr, vnode in unused:
            problems.add(vnode.line_no, f"VIP {addr} has no virtual_server; the model holds a VIP "
                                        "only for a VirtualService; not imported")
    for name, gnode in groups.items():
        if name not in used_groups:
            problems.add(gnode.line_no, f"virtual_server_group {name} is used by no "
                                        "virtual_server; keepalived ignores it")
    objects = _build(wants, problems, namespace=namespace, name_prefix=name_prefix,
                     director_selector=selector)
    return ImportResult(objects, problems.sorted())


def _vrrp(node: _KNode, problems: _Problems) -> _KVrrp:
    inst = _KVrrp(node, node.args[0] if node.args else "")
    for child in node.children or ():
        w = child.word
        if w == "virtual_router_id":
            inst.vrid = _int(child, problems, "virtual_router_id", 1, 255)
        elif w == "priority":
            value = _int(child, problems, "priority", 1, 255)
            if value == 255:
                problems.add(child.line_no, "priority 255 (address owner) has no model "
                                            "equivalent; imported as 254")
                value = 254
            if value is not None:
                inst.priority = value
        elif w == "advert_int":
            t = _timer(child, problems, "advert_int")
            if t is not None:
                if t != int(t) or not 1 <= t <= 255:
                    problems.add(child.line_no, f"advert_int {child.args[0]}: the model takes "
                                                "whole seconds 1-255; rounded up")
                inst.advert = min(255, max(1, math.ceil(t)))
        elif w == "interface" and child.args:
            inst.interface = _interface(child, child.args[0], problems)
        elif w in ("virtual_ipaddress",):
            for entry in child.children or ():
                addr_text = entry.word.split("/")[0]
                plen = entry.word.partition("/")[2]
                found = _kaddr(addr_text)
                if found is None:
                    problems.add(entry.line_no, f"`{entry.word}` is not an address; not imported")
                    continue
                dev = None
                extra = list(entry.args)
                if "dev" in extra:
                    k = extra.index("dev")
                    if k + 1 < len(extra):
                        dev = _interface(entry, extra[k + 1], problems)
                        del extra[k : k + 2]
                full = "32" if found[1] == 4 else "128"
                notes = []
                if plen and plen != full:
                    notes.append(f"the model holds the VIP as /{full}, not /{plen}")
                if extra:
                    notes.append(f"options {' '.join(extra)} have no model equivalent")
                if notes:
                    problems.add(entry.line_no, "; ".join(notes) + "; imported without them")
                inst.vips.append((found[0], dev, entry))
        elif w == "unicast_peer":
            for entry in child.children or ():
                found = _kaddr(entry.word)
                if found is None or entry.args:
                    problems.add(entry.line_no, f"unicast peer `{entry}`: only a plain address "
                                                "fits the model; not imported")
                    continue
                if len(inst.peers) >= MAX_PEERS:
                    problems.add(entry.line_no, f"more than {MAX_PEERS} unicast peers: the "
                                                "model holds 16; not imported")
                    continue
                inst.peers.append(found[0])
        elif w == "lvs_sync_daemon_interface" and child.args:
            inst.sync_interface = child.args[0]
        elif w == "state":
            problems.add(child.line_no, f"state {' '.join(child.args)}: the model has no "
                                        "initial state (the highest priority holds the VIP); "
                                        "not imported")
        elif w == "authentication":
            problems.add(child.line_no, "authentication: the password does not belong in a "
                                        "manifest; put auth_pass in a Secret (key `password`) "
                                        "and set spec.ha.vrrp.authSecretRef; not imported")
        else:
            problems.add(child.line_no, f"vrrp_instance {w}: no VirtualService equivalent; "
                                        "not imported")
    if inst.vrid is None:
        problems.add(node.line_no, f"vrrp_instance {inst.name} has no valid virtual_router_id; "
                                   "keepalived refuses it, and so does the import")
        inst.vips = []
    return inst


_VS_IGNORED = {
    "alpha": "alpha (all real servers start failed) has no model equivalent",
    "omega": "omega (run quorum_down on shutdown) has no model equivalent",
    "quorum_up": "quorum_up scripts have no model equivalent",
    "quorum_down": "quorum_down scripts have no model equivalent",
    "ha_suspend": "ha_suspend (checks only while the VIP is local) has no model equivalent",
    "smtp_alert": "e-mail alerts have no model equivalent",
    "snmp_name": "SNMP names have no model equivalent",
    "sorry_server_inhibit": "sorry_server_inhibit has no model equivalent",
    "sorry_server_lvs_method": "the sorry server takes the VirtualService's forwarding method "
                               "in the model",
    "warmup": "warmup (random first check delay) has no model equivalent",
    "nat_mask": "nat_mask (a keepalived 1.1 option) has no effect in keepalived 2 and no model "
                "equivalent",
    "hashed": "`hashed` has no effect",
}


def _virtual_server(node: _KNode, problems: _Problems) -> _KVS | None:
    args = node.args
    if len(args) >= 2 and args[0] == "group":
        vs = _KVS(node, "group", group=args[1])
    elif len(args) >= 2 and args[0] == "fwmark":
        if not args[1].isdigit() or not 1 <= int(args[1]) <= 2**32 - 1:
            problems.add(node.line_no, f"fwmark {args[1]} is not 1-4294967295; keepalived skips "
                                       "this virtual_server, and so does the import")
            return None
        if is_health_path(ServiceKey(4, "", "", 0, int(args[1]))):
            problems.add(node.line_no, f"fwmark {args[1]} is in {HEALTH_PATH_MARK_FIRST:#x}-"
                                       f"{HEALTH_PATH_MARK_FIRST + HEALTH_PATH_MARK_COUNT - 1:#x}, "
                                       "which the agent reserves for DR/TUN health checks; "
                                       "renumber it (here and in the mangle rules) to import it")
            return None
        vs = _KVS(node, "fwmark", mark=int(args[1]), family=4)
    else:
        found = _kaddr(args[0]) if args else None
        port = _kport(args[1] if len(args) > 1 else None)
        if found is None or port == -1:
            problems.add(node.line_no, f"virtual_server `{' '.join(args)}`: not IP PORT, fwmark N "
                                       "or group NAME; keepalived skips it, and so does the "
                                       "import")
            return None
        vs = _KVS(node, "address", address=found[0], family=found[1], port=port or 0)
    for child in node.children or ():
        w = child.word
        if w in ("lb_algo", "lvs_sched"):
            if child.args and child.args[0] in _KEEPALIVED_SCHEDULERS:
                vs.scheduler = child.args[0]
            else:
                problems.add(child.line_no, f"invalid scheduler `{' '.join(child.args)}`; "
                                            "keepalived ignores it (wlc), and so does the import")
        elif w in ("lb_kind", "lvs_method"):
            fwd = _lvs_method(child, problems)
            if fwd is not None:
                vs.forward = fwd
        elif w in ("flag-1", "flag-2", "flag-3"):
            vs.flag_bits.add(int(w[-1]))
        elif w in ("sh-port", "sh-fallback", "mh-port", "mh-fallback"):
            if vs.scheduler != w[:2]:
                problems.add(child.line_no, f"{w} only applies to the {w[:2]} scheduler (set "
                                            "lb_algo first); keepalived ignores it, and so does "
                                            "the import")
            else:
                vs.named_flags.append(w)
        elif w == "ops":
            vs.ops = child
        elif w == "persistence_timeout":
            if not child.args:
                vs.timeout = DEFAULT_PERSISTENCE
            else:
                t = _int(child, problems, "persistence_timeout", 1, 86400 * 31)
                if t is not None:
                    vs.timeout = t
        elif w == "persistence_granularity":
            vs.granularity = _granularity(child, vs, problems)
            if vs.granularity is not None and not vs.timeout:
                vs.timeout = DEFAULT_PERSISTENCE
        elif w == "persistence_engine":
            if child.args and child.args[0] == "sip":
                vs.engine = "sip"
            else:
                problems.add(child.line_no, "persistence engines other than sip do not exist in "
                                            "the kernel; not imported")
        elif w == "protocol":
            proto = child.args[0].lower() if child.args else ""
            if proto in _PROTO:
                vs.protocol = proto
                vs.protocol_node = child
            else:
                problems.add(child.line_no, f"unknown protocol `{' '.join(child.args)}`; "
                                            "keepalived ignores it, and so does the import")
        elif w == "delay_loop":
            seconds = _timer(child, problems, "delay_loop")
            if seconds is not None:
                vs.delay_loop = seconds
        elif w == "connect_timeout":
            seconds = _timer(child, problems, "connect_timeout")
            if seconds is not None:
                vs.connect_timeout = seconds
        elif w == "delay_before_retry":
            vs.delay_before_retry = _timer(child, problems, "delay_before_retry")
        elif w == "retry":
            vs.retry = _int(child, problems, "retry", 1, 2**32 - 1)
        elif w == "inhibit_on_failure":
            vs.inhibit = True
        elif w == "weight":
            value = _int(child, problems, "weight", 1, 65535)
            if value is not None:
                vs.weight = value
        elif w == "quorum":
            value = _int(child, problems, "quorum", 1, 2**32 - 1)
            vs.quorum, vs.quorum_node = (value or 1), child
        elif w == "hysteresis":
            value = _int(child, problems, "hysteresis", 0, 2**32 - 1)
            if value is not None:
                vs.hysteresis = value
        elif w == "sorry_server":
            found = _kaddr(child.args[0]) if child.args else None
            port = _kport(child.args[1] if len(child.args) > 1 else None)
            if found is None or port == -1:
                problems.add(child.line_no, "sorry_server is not IP [PORT]; not imported")
            else:
                vs.sorry = (found[0], port, child)
        elif w == "virtualhost" and child.args:
            vs.virtualhost = child.args[0]
        elif w == "ip_family":
            family = {"inet": 4, "inet6": 6}.get(child.args[0] if child.args else "", 0)
            if not family:
                problems.add(child.line_no, "unknown ip_family; keepalived ignores it, and so "
                                            "does the import")
            elif vs.kind == "address" and family != vs.family:
                problems.add(child.line_no, "ip_family conflicts with the virtual server's "
                                            "address; keepalived ignores it, and so does the "
                                            "import")
            else:
                vs.family = family
        elif w == "real_server":
            rs = _real_server(child, vs, problems)
            if rs is not None:
                vs.real_servers.append(rs)
        elif w in _VS_IGNORED:
            problems.add(child.line_no, f"{_VS_IGNORED[w]}; not imported")
        else:
            problems.add(child.line_no, f"virtual_server {w}: unknown or unsupported keyword; "
                                        "not imported")
    return vs


_KEEPALIVED_SCHEDULERS = (
    "rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed", "nq", "twos"
)


def _granularity(node: _KNode, vs: _KVS, problems: _Problems) -> int | None:
    text = node.args[0] if node.args else ""
    family = vs.family or (4 if "." in text else 6)
    if family == 6:
        return _int(node, problems, "IPv6 persistence_granularity", 1, 128)
    try:
        net = ipaddress.IPv4Network(f"0.0.0.0/{text}")
    except ValueError:
        problems.add(node.line_no, f"persistence_granularity {text} is not a contiguous netmask; "
                                   "the model holds a prefix length; not imported")
        return None
    return net.prefixlen


_RS_IGNORED = {
    "notify_up": "notify_up scripts have no model equivalent",
    "notify_down": "notify_down scripts have no model equivalent",
    "alpha": "alpha (start failed) has no model equivalent",
    "smtp_alert": "e-mail alerts have no model equivalent",
    "snmp_name": "SNMP names have no model equivalent",
    "warmup": "warmup (random first check delay) has no model equivalent",
}
_CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET")
_OTHER_CHECKERS = ("MISC_CHECK", "SMTP_CHECK", "DNS_CHECK", "UDP_CHECK", "PING_CHECK",
                   "FILE_CHECK", "BFD_CHECK")


def _real_server(node: _KNode, vs: _KVS, problems: _Problems) -> _KRS | None:
    found = _kaddr(node.args[0]) if node.args else None
    port = _kport(node.args[1] if len(node.args) > 1 else None)
    if found is None or port == -1:
        problems.add(node.line_no, f"real_server `{' '.join(node.args)}` is not IP [PORT]; "
                                   "keepalived skips it, and so does the import")
        return None
    rs = _KRS(node, found[0], found[1], port, forward=vs.forward)
    for child in node.children or ():
        w = child.word
        if w == "weight":
            value = _int(child, problems, "weight", 0, 65535)
            if value is not None:
                rs.weight = value
        elif w == "lvs_method":
            fwd = _lvs_method(child, problems)
            if fwd is not None:
                rs.forward = fwd
        elif w == "uthreshold":
            rs.upper = _int(child, problems, "uthreshold", 0, 2**31 - 1) or 0
        elif w == "lthreshold":
            rs.lower = _int(child, problems, "lthreshold", 0, 2**31 - 1) or 0
        elif w == "inhibit_on_failure":
            rs.inhibit = _bool(child)
        elif w == "connect_timeout":
            rs.connect_timeout = _timer(child, problems, "connect_timeout")
        elif w == "retry":
            rs.retry = _int(child, problems, "retry", 1, 2**32 - 1)
        elif w == "delay_before_retry":
            rs.delay_before_retry = _timer(child, problems, "delay_before_retry")
        elif w == "delay_loop":
            rs.delay_loop = _timer(child, problems, "delay_loop")
        elif w == "virtualhost" and child.args:
            rs.virtualhost = child.args[0]
        elif w in _CHECKERS:
            rs.checks.append(_checker(child, problems))
        elif w in _OTHER_CHECKERS:
            problems.add(child.line_no, f"{w}: the model checks with TCP connects or HTTP GETs "
                                        "only; not imported")
        elif w in _RS_IGNORED:
            problems.add(child.line_no, f"{_RS_IGNORED[w]}; not imported")
        else:
            problems.add(child.line_no, f"real_server {w}: unknown or unsupported keyword; "
                                        "not imported")
    return rs


def _interface(node: _KNode, name: str, problems: _Problems) -> str | None:
    if _IFNAME.fullmatch(name):
        return name
    problems.add(node.line_no, f"interface name {name!r} is not a Linux device name the model "
                               "takes (letters, digits, _.:-, at most 15); not imported")
    return None


def _http_path(node: _KNode, problems: _Problems) -> str:
    """The URL path as the model holds it: printable ASCII from `/`; anything else is
    percent-encoded, which is what belongs on an HTTP request line anyway."""
    path = node.args[0]
    fixed = path if path.startswith("/") else "/" + path
    fixed = "".join(c if "!" <= c <= "~" else "".join(f"%{b:02X}" for b in c.encode())
                    for c in fixed)
    if fixed != path:
        problems.add(node.line_no, f"path {path!r}: the model takes a printable ASCII path from "
                                   f"`/`; imported as {fixed}")
    return fixed


def _status_codes(node: _KNode, problems: _Problems) -> set[int]:
    codes: set[int] = set()
    for part in node.args:
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            problems.add(node.line_no, f"invalid status code `{part}`; ignored")
            continue
        if not 100 <= low <= high <= 599:
            problems.add(node.line_no, f"invalid status code `{part}`; ignored")
            continue
        codes.update(range(low, high + 1))
    return codes


def _checker(node: _KNode, problems: _Problems) -> _KCheck:
    check = _KCheck(node, node.word)
    http = node.word in ("HTTP_GET", "SSL_GET")
    for child in node.children or ():
        w = child.word
        if w == "connect_port":
            check.port = _int(child, problems, "connect_port", 1, 65535)
        elif w == "connect_timeout":
            check.connect_timeout = _timer(child, problems, "connect_timeout")
        elif w == "retry" or (w == "nb_get_retry" and http):
            check.retry = _int(child, problems, w, 1, 2**32 - 1)
        elif w == "nb_get_retry":
            problems.add(child.line_no, "nb_get_retry is not a TCP_CHECK keyword: keepalived "
                                        "ignores it (use retry), and so does the import")
        elif w == "delay_before_retry":
            check.delay_before_retry = _timer(child, problems, "delay_before_retry")
        elif w == "delay_loop":
            check.delay_loop = _timer(child, problems, "delay_loop")
        elif w == "virtualhost" and http and child.args:
            check.virtualhost = child.args[0]
        elif w == "url" and http:
            url = _KUrl(child)
            for u in child.children or ():
                if u.word == "path" and u.args:
                    url.path = _http_path(u, problems)
                elif u.word == "digest" and u.args:
                    if re.fullmatch(r"[0-9a-fA-F]{32}", u.args[0]):
                        url.digest = u.args[0].lower()
                    else:
                        problems.add(u.line_no, f"digest {u.args[0]} is not an MD5 (32 hex "
                                                "digits): no page would ever match it; not "
                                                "imported")
                elif u.word == "status_code":
                    url.codes |= _status_codes(u, problems)
                elif u.word == "virtualhost" and u.args:
                    url.virtualhost = u.args[0]
                else:
                    problems.add(u.line_no, f"url {u.word}: the model checks path, status codes "
                                            "and digest only; not imported")
            if not url.path:
                problems.add(child.line_no, "url without path: keepalived ignores it, and so "
                                            "does the import")
            else:
                check.urls.append(url)
        elif w in ("connect_ip", "bindto", "bind_port", "bind_if", "fwmark"):
            problems.add(child.line_no, f"{w}: the model checks the real server's own address "
                                        "from the director's default source; not imported")
        else:
            problems.add(child.line_no, f"{node.word} {w}: unknown or unsupported keyword; "
                                        "not imported")
    return check


@dataclass
class _Resolved:
    """A keepalived real server after validate_check_config()'s defaults and corrections."""

    rs: _KRS
    forward: tuple[str, str, int, str]
    weight: int


def _wants_of(
    vs: _KVS,
    groups: dict[str, _KNode],
    used_groups: set[str],
    fwmarks: Mapping[int, FwmarkTarget],
    problems: _Problems,
) -> list[_Want]:
    """The IPVS services keepalived creates for one virtual_server, as _Wants."""
    node = vs.node
    entries: list[tuple[str, int, int, int, _KNode]] = []  # (address, family, port, mark, line)
    if vs.kind == "group":
        gnode = groups.get(vs.group)
        if gnode is None:
            problems.add(node.line_no, f"virtual_server_group {vs.group} is not defined; "
                                       "keepalived skips this virtual_server")
            return []
        used_groups.add(vs.group)
        entries = _group_entries(gnode, problems)
    elif vs.kind == "fwmark":
        entries = [("", vs.family, 0, vs.mark, node)]
    else:
        entries = [(vs.address, vs.family, vs.port, 0, node)]

    if not vs.real_servers:
        problems.add(node.line_no, "virtual server has no real servers: keepalived ignores it, "
                                   "and so does the import")
        return []
    has_address = any(not e[3] for e in entries)
    protocol = vs.protocol
    if has_address and not protocol:
        problems.add(node.line_no, "no protocol: keepalived defaults to UDP (with a warning); "
                                   "imported as UDP")
        protocol = "udp"
    if not has_address and vs.protocol_node is not None:
        problems.add(vs.protocol_node.line_no, "keepalived ignores protocol for firewall-mark "
                                               "services; not imported")
    scheduler = vs.scheduler or "wlc"
    if scheduler not in _MODEL_SCHEDULERS:
        problems.add(node.line_no, f"scheduler {scheduler} is not one the model offers; "
                                   "not imported")
        return []
    flags: list[str] = list(vs.named_flags)
    for bit in sorted(vs.flag_bits):
        if scheduler in ("sh", "mh") and bit in (1, 2):
            flags.append(f"{scheduler}-{'fallback' if bit == 1 else 'port'}")
        else:
            problems.add(node.line_no, f"flag-{bit} means nothing to {scheduler}; not imported")
    order = {"fallback": 1, "port": 2}
    flags = sorted(set(flags), key=lambda f: order[f.split("-")[1]])
    one_packet = False
    if vs.ops is not None:
        if has_address and protocol != "udp":
            problems.add(vs.ops.line_no, "ops (one-packet scheduling) needs UDP: keepalived "
                                         "resets it, and so does the import")
        else:
            one_packet = True
    persistence: dict[str, Any] | None = None
    if not vs.timeout and has_address and any(e[2] == 0 for e in entries if not e[3]):
        problems.add(node.line_no, "zero port only valid for persistent services: keepalived "
                                   "makes it persistent (360 s)")
    if vs.timeout:
        persistence = {"timeout": vs.timeout}
    if persistence is not None and vs.granularity is not None:
        families = {e[1] for e in entries}
        if vs.granularity != (32 if families == {4} else 128):
            persistence["prefixLength"] = vs.granularity
    if persistence is not None and vs.engine:
        if protocol == "udp" or not has_address:
            persistence["engine"] = vs.engine
        else:
            problems.add(node.line_no, "persistence_engine sip needs UDP in the model; imported "
                                       "without it")

    # Real servers: duplicates, family, forwarding, weight (validate_check_config).
    resolved: list[_Resolved] = []
    seen: set[tuple[str, int | None]] = set()
    final_vs_fwd = vs.forward or (FORWARD_MASQ, "", 0, "")
    for rs in vs.real_servers:
        if (rs.address, rs.port) in seen:
            problems.add(rs.node.line_no, f"real server {rs.address} is duplicated: keepalived "
                                          "removes the second, and so does the import")
            continue
        seen.add((rs.address, rs.port))
        fwd = rs.forward or final_vs_fwd
        weight = rs.weight if rs.weight is not None else vs.weight
        resolved.append(_Resolved(rs, fwd, weight))
    if not resolved:
        return []
    chosen = resolved[0].forward
    kept: list[_Resolved] = []
    for r in resolved:
        if r.forward != chosen:
            problems.add(r.rs.node.line_no, f"real server {r.rs.address} uses "
                                            f"{_describe_fwd(r.forward)} but the first uses "
                                            f"{_describe_fwd(chosen)}; a VirtualService has one "
                                            "forwarding method; not imported")
            continue
        kept.append(r)
    forwarding = _forwarding_spec(*chosen)
    nat = chosen[0] == FORWARD_MASQ

    health = _health_check(vs, kept, problems)

    # quorum corrections (validate_check_config)
    weight_sum = sum(r.weight for r in kept)
    quorum, hysteresis = vs.quorum, vs.hysteresis
    if quorum > weight_sum and vs.quorum_node is not None:
        problems.add(vs.quorum_node.line_no, f"quorum {quorum} exceeds the total weight "
                                             f"{weight_sum}: keepalived lowers it, and so does "
                                             "the import")
        quorum = max(weight_sum, 1)
    if hysteresis >= quorum and hysteresis:
        problems.add(node.line_no, f"hysteresis {hysteresis} >= quorum {quorum}: keepalived "
                                   f"sets it to {quorum - 1}, and so does the import")
        hysteresis = quorum - 1
    if vs.quorum_node is not None or vs.hysteresis or vs.sorry is not None:
        q: dict[str, Any] = {"minimum": quorum}
        if hysteresis:
            q["hysteresis"] = hysteresis
        if vs.sorry is not None:
            address, sport, snode = vs.sorry
            sorry: dict[str, Any] = {"address": address}
            if nat and sport and sport != vs.port:
                sorry["port"] = sport
            elif not nat and sport and sport != vs.port:
                problems.add(snode.line_no, "DR/TUN sorry server port differs from the virtual "
                                            "port: keepalived resets it, and so does the import")
            q["sorryServer"] = sorry
        if health is None:
            health = {"type": "None"}
        health["quorum"] = q

    wants: list[_Want] = []
    for address, family, port, mark, enode in entries:
        if mark:
            target = fwmarks.get(mark)
            if target is None:
                problems.add(enode.line_no, f"firewall-mark service {mark}: keepalived.conf does "
                                            "not say which VIP and ports carry the mark; pass "
                                            f"--fwmark {mark}=VIP,tcp:PORT,... to import it")
                continue
            target_family = 6 if ":" in target.address else 4
            if family and family != target_family:
                problems.add(enode.line_no, f"--fwmark {mark} names an IPv{target_family} address "
                                            f"but the service is IPv{family}; not imported")
                continue
            family = target_family
            key = ServiceKey(family, "", "", 0, mark)
        else:
            if port == 0:
                problems.add(enode.line_no, "a port-0 (all ports) persistent service has no "
                                            "VirtualService form (ports are 1-65535); not "
                                            "imported")
                continue
            target = None
            key = ServiceKey(family, protocol, address, port, 0)
        want = _Want(key, enode.line_no, scheduler, tuple(flags), persistence, one_packet,
                     dict(forwarding), fwmark=target, health_check=health)
        for r in kept:
            rs = r.rs
            if r.forward[0] != FORWARD_TUNNEL and rs.family != family:
                problems.add(rs.node.line_no, f"real server {rs.address} is IPv{rs.family} but "
                                              f"the virtual service is IPv{family}; only TUN "
                                              "mixes families (keepalived skips it), not "
                                              "imported there")
                continue
            if mark:
                if nat and rs.port:
                    problems.add(rs.node.line_no, f"real server {rs.address}:{rs.port} of the "
                                                  f"NAT firewall-mark service {mark} rewrites "
                                                  "the port; the model gives fwmark real "
                                                  "servers port 0; not imported there")
                    continue
                if not nat and rs.port:
                    problems.add(rs.node.line_no, "fwmark real server has a port: keepalived "
                                                  "ignores it (DR/TUN), and so does the import")
                dport = 0
            elif nat:
                dport = rs.port if rs.port else (port if vs.kind != "group" else 0)
                if not dport:
                    problems.add(rs.node.line_no, "NAT real server without a port in a group: "
                                                  "keepalived programs port 0; not imported")
                    continue
            else:
                if rs.port and rs.port != port and vs.kind != "group":
                    problems.add(rs.node.line_no, "virtual server and real server ports don't "
                                                  "match: keepalived resets the real server's, "
                                                  "and so does the import")
                dport = port
            if any(d.address == rs.address and d.port == dport for d in want.dests):
                problems.add(rs.node.line_no, f"real server {rs.address} is {rs.address}:{dport} "
                                              "again once keepalived fills in the port; the "
                                              "kernel refuses the second (File exists), and so "
                                              "does the import")
                continue
            want.dests.append(_Dest(rs.address, dport, r.weight, rs.upper, rs.lower))
        wants.append(want)
    return wants


def _group_entries(gnode: _KNode, problems: _Problems) -> list[tuple[str, int, int, int, _KNode]]:
    out: list[tuple[str, int, int, int, _KNode]] = []
    for entry in gnode.children or ():
        if entry.word == "fwmark":
            if not entry.args or not entry.args[0].isdigit():
                problems.add(entry.line_no, "fwmark needs a number; ignored")
                continue
            family = {"inet": 4, "inet6": 6}.get(entry.args[1] if len(entry.args) > 1 else "", 0)
            out.append(("", family, 0, int(entry.args[0]), entry))
            continue
        port = _kport(entry.args[0] if entry.args else None)
        addresses = _address_range(entry.word)
        if addresses is None or port == -1:
            problems.add(entry.line_no, f"`{entry}` is not ADDRESS[-RANGE] [PORT]; keepalived "
                                        "skips it, and so does the import")
            continue
        for a in addresses:
            out.append((a, 6 if ":" in a else 4, port or 0, 0, entry))
    return out


def _address_range(text: str) -> list[str] | None:
    """192.0.2.3-10, 192.0.2.250-192.0.3.10, 192.0.2.8/29, 2001:db8::2-9 (last group hex)."""
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            if net.num_addresses > 256:
                return None
            return [str(a) for a in net]
        if "-" not in text:
            return [str(ipaddress.ip_address(text))]
        first_text, _, last_text = text.partition("-")
        first = ipaddress.ip_address(first_text)
        if "." in last_text or ":" in last_text:
            last = ipaddress.ip_address(last_text)
        elif first.version == 4:
            last = ipaddress.ip_address(first_text.rsplit(".", 1)[0] + "." + last_text)
        else:
            base = first_text.rsplit(":", 1)[0]
            last = ipaddress.ip_address(f"{base}:{last_text}")
        if int(last) < int(first) or int(last) - int(first) > 255:
            return None
        return [str(ipaddress.ip_address(int(first) + i)) for i in range(int(last) - int(first)
                                                                          + 1)]
    except ValueError:
        return None


def _health_check(
    vs: _KVS, kept: list[_Resolved], problems: _Problems
) -> dict[str, Any] | None:
    """One HealthCheck from the real servers' checkers (keepalived has one per real server)."""
    forms: list[tuple[_Resolved, dict[str, Any] | None, _KCheck | None]] = []
    for r in kept:
        rs = r.rs
        if len(rs.checks) > 1:
            for extra in rs.checks[1:]:
                problems.add(extra.node.line_no, "a second checker on one real server: the model "
                                                 "runs one health check; not imported")
        check = rs.checks[0] if rs.checks else None
        forms.append((r, _check_form(vs, rs, check, problems) if check else None, check))
    checked = [f for f in forms if f[1] is not None]
    if not checked:
        if vs.inhibit or any(r.rs.inhibit for r in kept):
            problems.add(vs.node.line_no, "inhibit_on_failure without any checker has no effect; "
                                          "not imported")
        return None
    first = checked[0][1]
    assert first is not None
    for r, form, check in forms:
        if form is None:
            problems.add(r.rs.node.line_no, f"real server {r.rs.address} has no checker (always "
                                            "up in keepalived) but the VirtualService checks "
                                            "every real server; imported with the check")
        elif form != first:
            assert check is not None
            problems.add(check.node.line_no, f"real server {r.rs.address}'s checker differs "
                                             "from the first real server's; a VirtualService "
                                             "has one health check; imported with the first")
    inhibits = {bool(r.rs.inhibit if r.rs.inhibit is not None else vs.inhibit) for r in kept}
    health = dict(first)
    if len(inhibits) > 1:
        problems.add(vs.node.line_no, "inhibit_on_failure is set on some real servers only; a "
                                      "VirtualService has one onFailure; imported as Remove")
    elif inhibits == {True}:
        health["onFailure"] = "Inhibit"
    return health


def _check_form(vs: _KVS, rs: _KRS, check: _KCheck, problems: _Problems) -> dict[str, Any]:
    """The HealthCheck one keepalived checker amounts to, with keepalived's defaults filled
    in from the real server and virtual server (validate_check_config)."""
    http = check.kind in ("HTTP_GET", "SSL_GET")
    connect_timeout = _first(check.connect_timeout, rs.connect_timeout, vs.connect_timeout)
    retry = _first(check.retry, rs.retry, vs.retry, 1)
    delay_loop = _first(check.delay_loop, rs.delay_loop, vs.delay_loop)
    default_dbr = 3.0 if http else 1.0
    delay_before_retry = _first(check.delay_before_retry, rs.delay_before_retry,
                                vs.delay_before_retry, default_dbr)
    form: dict[str, Any] = {"type": "HTTP" if check.kind == "HTTP_GET" else "TCP"}
    if check.kind == "SSL_GET":
        problems.add(check.node.line_no, "SSL_GET: the model has no TLS check; imported as a "
                                         "TCP connect check on the same port")
        for ssl_url in check.urls:
            problems.add(ssl_url.node.line_no, "url of an SSL_GET: a TCP connect check requests no "
                                           "URL; not imported")
        if check.virtualhost:
            problems.add(check.node.line_no, "virtualhost of an SSL_GET: a TCP connect check "
                                             "sends no Host; not imported")
    if check.port is not None and check.port != rs.port:
        form["port"] = check.port
    form["connectTimeoutSeconds"] = _seconds(connect_timeout, 1, 300, check, "connect_timeout",
                                             problems)
    form["retries"] = int(min(max(int(retry), 1), 100))
    if retry > 100:
        problems.add(check.node.line_no, f"retry {retry}: the model allows at most 100")
    form["delayBeforeRetrySeconds"] = _seconds(delay_before_retry, 0, 300, check,
                                               "delay_before_retry", problems)
    form["intervalSeconds"] = _seconds(delay_loop, 1, 3600, check, "delay_loop", problems)
    form["onFailure"] = "Remove"
    if check.kind == "HTTP_GET":
        if not check.urls:
            problems.add(check.node.line_no, "HTTP_GET without a url checks nothing in keepalived; "
                                             "imported as a GET of /")
        url = check.urls[0] if check.urls else None
        for extra in check.urls[1:]:
            problems.add(extra.node.line_no, "a second url: the model checks one URL; not "
                                             "imported")
        httpform: dict[str, Any] = {"path": url.path if url else "/"}
        host = _first(url.virtualhost if url else None, check.virtualhost, rs.virtualhost,
                      vs.virtualhost)
        if host:
            httpform["host"] = host
        codes = set(url.codes) if url and url.codes else set(range(200, 300))
        httpform["expectedStatusCodes"] = _codes(codes, url.node if url else check.node, problems)
        if url and url.digest:
            httpform["digest"] = url.digest
        form["http"] = httpform
    return form


def _codes(codes: set[int], node: _KNode, problems: _Problems) -> list[int]:
    if len(codes) <= MAX_STATUS_CODES:
        return sorted(codes)
    registered = sorted(c for c in codes if c in _REGISTERED_STATUS)
    kept = registered[:MAX_STATUS_CODES]
    which = "the registered ones" if len(registered) <= MAX_STATUS_CODES else (
        f"the first {MAX_STATUS_CODES} registered ones")
    ranges = _ranges(sorted(codes))
    problems.add(node.line_no, f"keepalived accepts status {ranges}; a HealthCheck lists at most "
                               f"{MAX_STATUS_CODES} codes: imported as {which} "
                               f"{', '.join(map(str, kept))}")
    return kept


def _ranges(codes: list[int]) -> str:
    out: list[str] = []
    start = prev = codes[0]
    for c in [*codes[1:], -1]:
        if c == prev + 1:
            prev = c
            continue
        out.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = c
    return " ".join(out)


def _seconds(value: float, low: int, high: int, check: _KCheck, what: str,
             problems: _Problems) -> int:
    whole = math.ceil(value)
    if whole != value or not low <= whole <= high:
        fixed = min(max(whole, low), high)
        problems.add(check.node.line_no, f"{what} {value:g}: the model takes whole seconds "
                                         f"{low}-{high}; imported as {fixed}")
        return fixed
    return whole


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None
