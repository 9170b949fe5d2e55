"""Render plans the way LVS people read them: `ipvsadm -S -n` lines plus the shell commands
for what IPVS does not hold (sysctl, ip addr, ipset, iptables), in the classic how-to style.

The IPVS part reproduces ipvsadm 1.31's `print_service_entry` in FMT_RULE|FMT_NUMERIC mode,
including its sort order (`ipvs_cmp_services`/`ipvs_cmp_dests`, which subtract unsigned
values into a signed int). One deliberate addition: thresholds (-x/-y), which ipvsadm-save
omits, are printed when set, so that feeding the output to `ipvsadm-restore` recreates the
whole state.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from .plan import (
    FORWARD_MASQ,
    FORWARD_ROUTE,
    FORWARD_TUNNEL,
    Destination,
    IPVSService,
    MarkRule,
    NodePlan,
    SNATRule,
)

__all__ = [
    "JUMP_COMMENT",
    "MARK_CHAIN",
    "SNAT_CHAIN",
    "compare_dests",
    "compare_services",
    "ipvsadm_save",
    "mark_rule_args",
    "node_commands",
    "render_ipvsadm",
    "snat_rule_args",
]

MARK_CHAIN = "LVS-MARK"  # owned chain in the mangle table
SNAT_CHAIN = "LVS-SNAT"  # owned chain in the nat table (FULLNAT)
JUMP_COMMENT = "lvs-operator"  # marks the one jump rule into each owned chain

_AF = {4: 2, 6: 10}  # AF_INET, AF_INET6
_PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132, "": 0}
_PROTO_OPT = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_FWD = {FORWARD_MASQ: "-m", FORWARD_ROUTE: "-g", FORWARD_TUNNEL: "-i"}
_CSUM = {
    "none": "--tun-nocsum",
    "csum": "--tun-csum",
    "remcsum": "--tun-remcsum",
    "": "--tun-nocsum",
}


def _s32(value: int) -> int:
    """C's conversion of an unsigned 32-bit difference to int, as ipvsadm's comparators do."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _words(address: str) -> list[int]:
    if not address:
        return [0]
    packed = ipaddress.ip_address(address).packed
    return [int.from_bytes(packed[i : i + 4], "big") for i in range(0, len(packed), 4)]


def _cmp_addr(a: str, b: str) -> int:
    r = 0
    for wa, wb in zip(_words(a), _words(b), strict=False):
        r = _s32(wa - wb)
        if r:
            break
    return r


def compare_services(a: IPVSService, b: IPVSService) -> int:
    """ipvsadm's sort order of services (ipvs_cmp_services): ipvsadm-save and `ipvsadm -L`
    print in it, and so do `lvsctl save` and `lvsctl list`."""
    for r in (
        _s32(a.key.fwmark - b.key.fwmark),
        _AF[a.key.family] - _AF[b.key.family],
        _PROTO_NUM[a.key.protocol] - _PROTO_NUM[b.key.protocol],
        _cmp_addr(a.key.address, b.key.address),
        a.key.port - b.key.port,
    ):
        if r:
            return r
    return 0


def compare_dests(a: Destination, b: Destination) -> int:
    """ipvsadm's sort order of a service's destinations (ipvs_cmp_dests)."""
    return _cmp_addr(a.address, b.address) or (a.port - b.port)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _service_name(s: IPVSService) -> str:
    if s.key.fwmark:
        return f"-f {s.key.fwmark}" + (" -6" if s.key.family == 6 else "")
    return f"{_PROTO_OPT[s.key.protocol]} {_hostport(s.key.address, s.key.port)}"


def _netmask(prefix: int) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)


def _service_line(s: IPVSService) -> str:
    line = f"-A {_service_name(s)} -s {s.scheduler}"
    if s.persistence_timeout:
        line += f" -p {s.persistence_timeout}"
        if s.key.family == 4 and s.persistence_prefix != 32:
            line += f" -M {_netmask(s.persistence_prefix)}"
        if s.key.family == 6 and s.persistence_prefix != 128:
            line += f" -M {s.persistence_prefix}"
    if s.persistence_engine:
        line += f" --pe {s.persistence_engine}"
    if s.one_packet:
        line += " -o"
    if s.flags:
        line += " -b " + ",".join(s.flags)
    return line


def _dest_line(svc: str, d: Destination) -> str:
    line = f"-a {svc} -r {_hostport(d.address, d.port)} {_FWD[d.forward]} -w {d.weight}"
    if d.forward == FORWARD_TUNNEL:
        line += f" --tun-type {d.tunnel_type or 'ipip'}"
        if d.tunnel_type == "gue":
            line += f" --tun-port {d.tunnel_port} {_CSUM[d.tunnel_checksum]}"
        elif d.tunnel_type == "gre":
            line += f" {_CSUM[d.tunnel_checksum]}"
    if d.upper_threshold:
        line += f" -x {d.upper_threshold}"
    if d.lower_threshold:
        line += f" -y {d.lower_threshold}"
    return line


def ipvsadm_save(services: Iterable[IPVSService]) -> list[str]:
    """The lines `ipvsadm -S -n` prints for these services, in ipvsadm's order."""
    lines: list[str] = []
    for s in sorted(services, key=functools.cmp_to_key(compare_services)):
        lines.append(_service_line(s))
        name = _service_name(s)
        for d in sorted(s.destinations, key=functools.cmp_to_key(compare_dests)):
            lines.append(_dest_line(name, d))
    return lines


def mark_rule_args(rule: MarkRule) -> list[str]:
    """iptables arguments (after `-A LVS-MARK`) for one owned mark rule."""
    args = ["-m", "set", "--match-set", rule.dst_set, "dst,dst"]
    if rule.src_set:
        args += ["-m", "set", "--match-set", rule.src_set, "src"]
    if rule.except_set:
        args += ["-m", "set", "!", "--match-set", rule.except_set, "src"]
    args += ["-m", "comment", "--comment", f"lvs-operator {rule.owner}"]
    args += ["-j", "MARK", "--set-mark", str(rule.mark)]
    return args


def snat_rule_args(rule: SNATRule) -> list[str]:
    """iptables arguments (after `-A LVS-SNAT`) for one FULLNAT source-NAT rule."""
    prefix = 32 if rule.family == 4 else 128
    args = ["-m", "ipvs", "--vaddr", f"{rule.vip}/{prefix}"]
    if rule.fwmark:
        args += ["--vdir", "ORIGINAL", "-m", "mark", "--mark", str(rule.fwmark)]
    else:
        args += ["--vport", str(rule.port), "--vproto", rule.protocol, "--vdir", "ORIGINAL"]
    args += ["-m", "comment", "--comment", f"lvs-operator {rule.owner}"]
    if rule.to_source:
        args += ["-j", "SNAT", "--to-source", rule.to_source]
    else:
        args += ["-j", "MASQUERADE"]
    return args


def _shell(args: list[str]) -> str:
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def _jump(chain: str) -> str:
    """The jump into an owned chain, first in its hook, as the agent writes it."""
    return f"-m comment --comment {JUMP_COMMENT} -j {chain}"


def node_commands(plan: NodePlan) -> list[str]:
    """Shell commands, classic LVS how-to style, for everything outside the IPVS table."""
    out: list[str] = []
    d, b = plan.director, plan.backend
    for s in d.sysctls:
        out.append(f"sysctl -w {s.key}={s.value}")
    for v in d.vips:
        dev = v.interface or "eth0"
        note = "" if v.interface else "  # the agent uses the device of the route to the VIP"
        if v.ha_mode != "None":
            note += f"  # {v.ha_mode}: only the active director holds it"
        out.append(f"ip addr add {v.address}/{v.prefix_length} dev {dev}{note}")
    for st in d.ipsets:
        out.append(f"ipset create {st.name} {st.set_type} family {st.family}")
        for entry in st.entries:
            out.append(f"ipset add {st.name} {entry}")
    for family in (4, 6):
        tool = "iptables" if family == 4 else "ip6tables"
        marks = [m for m in d.mark_rules if m.family == family]
        if marks:
            out.append(f"{tool} -t mangle -N {MARK_CHAIN}")
            out.append(f"{tool} -t mangle -I PREROUTING 1 {_jump(MARK_CHAIN)}")
            for m in marks:
                out.append(f"{tool} -t mangle -A {MARK_CHAIN} {_shell(mark_rule_args(m))}")
        snats = [r for r in d.snat_rules if r.family == family]
        if snats:
            out.append(f"{tool} -t nat -N {SNAT_CHAIN}")
            out.append(f"{tool} -t nat -I POSTROUTING 1 {_jump(SNAT_CHAIN)}")
            for r in snats:
                out.append(f"{tool} -t nat -A {SNAT_CHAIN} {_shell(snat_rule_args(r))}")
    for t in b.tunnels:
        module = {"ipip": "ipip", "gre": "ip_gre", "ip6tnl": "ip6_tunnel", "ip6gre": "ip6_gre"}
        out.append(f"modprobe {module[t.kind]}")
        if t.fou_port:
            out.append("modprobe fou")
            out.append(f"ip fou add port {t.fou_port} gue")
        out.append(f"ip link set {t.name} up")
    for s in b.sysctls:
        out.append(f"sysctl -w {s.key}={s.value}")
    for lv in b.vips:
        out.append(f"ip addr add {lv.address}/{lv.prefix_length} dev {lv.device}")
    return out


def render_ipvsadm(plans: Iterable[NodePlan]) -> str:
    """Everything `lvsctl plan --format ipvsadm` prints: per node, the IPVS table as
    `ipvsadm -S -n` prints it, then the commands for the rest of that node's state."""
    chunks: list[str] = []
    for plan in plans:
        if plan.empty:
            continue
        roles = [
            r
            for r, present in (
                ("director", plan.director.services or plan.director.vips),
                ("real server", plan.backend.vips),
            )
            if present
        ]
        chunks.append(f"# node {plan.node} ({', '.join(roles)})")
        if plan.director.services:
            chunks.append("# ipvsadm -S -n")
            chunks.extend(ipvsadm_save(plan.director.services))
        commands = node_commands(plan)
        if commands:
            chunks.append("# the rest of this node's state")
            chunks.extend(commands)
        chunks.append("")
    return "\n".join(chunks)
