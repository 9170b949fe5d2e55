"""IPVS counters, rates and the connection table without a kernel: the fake's helpers, the
netlink decoding of IPVS_*_ATTR_STATS64/STATS, /proc/net/ip_vs_conn parsing, and the rule that
counters never make the agent change anything. The same against real IPVS:
tests/contract/ipvs_contract.py (both sides) and tests/vm/test_lvsctl_ops.py (with traffic)."""

from __future__ import annotations

import struct

import pytest

from lvs_operator.agent.cache import CachingKernel
from lvs_operator.agent.reconcile import InSync, reconcile
from lvs_operator.agent.state import AgentState
from lvs_operator.kernel import real_ipvs as r
from lvs_operator.kernel.errors import KernelError, NotFound
from lvs_operator.kernel.fake import FakeIPVS
from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind, IPVSStats, LiveConnection
from tests.contract.ipvs_contract import add_ops, dest, mixed_table, tcp, with_dests

from .test_reconcile import KEY, fake_kernel, plans, web

K = IPVSOpKind
STATS = IPVSStats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
BIG = IPVSStats(*(2**40 + i for i in range(10)))  # beyond 32 bits, like a busy director's


# --------------------------------------------------------------------------- the fake


def _fake_with_web() -> FakeIPVS:
    fake = FakeIPVS()
    s = with_dests(tcp(), dest("192.0.2.11", 80), dest("192.0.2.12", 80))
    assert fake.apply(add_ops(s, tcp(port=443))) == []
    return fake


def _stats(fake: FakeIPVS) -> dict[object, IPVSStats]:
    out: dict[object, IPVSStats] = {}
    for ls in fake.dump():
        out[ls.service.key] = ls.stats
        out.update({(ls.service.key, ld.dest.key): ld.stats for ld in ls.destinations})
    return out


def test_traffic_counts_on_the_destination_its_service_and_the_total() -> None:
    fake = _fake_with_web()
    key = tcp().key
    fake.add_traffic(key, ("192.0.2.11", 80), conns=1, inpkts=5, outpkts=4, inbytes=400)
    fake.add_traffic(key, ("192.0.2.12", 80), conns=2, inpkts=10, outpkts=8, outbytes=7000)
    fake.set_rates(key, cps=1, inpps=7, outpps=6, inbps=300, outbps=3500)
    fake.set_rates(key, ("192.0.2.12", 80), inbps=99)
    stats = _stats(fake)
    assert stats[key] == IPVSStats(3, 15, 12, 400, 7000, 1, 7, 6, 300, 3500)
    assert stats[(key, ("192.0.2.11", 80))] == IPVSStats(1, 5, 4, 400, 0)
    assert stats[(key, ("192.0.2.12", 80))] == IPVSStats(2, 10, 8, 0, 7000, inbps=99)
    assert stats[tcp(port=443).key] == IPVSStats()
    assert fake.total == IPVSStats(3, 15, 12, 400, 7000)


def test_zero_resets_one_service_or_all_and_edits_keep_the_counters() -> None:
    fake = _fake_with_web()
    key, other = tcp().key, tcp(port=443).key
    fake.add_traffic(key, ("192.0.2.11", 80), conns=1, inpkts=5)
    fake.add_traffic(other, conns=4)
    s = with_dests(tcp(scheduler="wrr"), dest("192.0.2.11", 80, weight=3))
    assert fake.apply([IPVSOp(K.EDIT_SERVICE, s), IPVSOp(K.EDIT_DEST, s, s.destinations[0])]) == []
    assert _stats(fake)[(key, ("192.0.2.11", 80))].conns == 1  # an edit is in place
    fake.zero(key)
    stats = _stats(fake)
    assert stats[key] == stats[(key, ("192.0.2.11", 80))] == IPVSStats()
    assert stats[other].conns == 4 and fake.total.conns == 5
    fake.zero()
    assert set(_stats(fake).values()) == {IPVSStats()} and fake.total == IPVSStats()
    with pytest.raises(NotFound):
        fake.zero(tcp(port=8080).key)


def test_set_connections_keeps_the_connection_table_in_step() -> None:
    fake = _fake_with_web()
    key = tcp().key
    fake.set_connections(key, ("192.0.2.11", 80), active=2, inactive=1)
    fake.set_connections(key, ("192.0.2.12", 80), active=1)
    table = fake.connections()
    assert sorted((c.destination, c.state) for c in table) == [
        ("192.0.2.11", "ESTABLISHED"),
        ("192.0.2.11", "ESTABLISHED"),
        ("192.0.2.11", "FIN_WAIT"),
        ("192.0.2.12", "ESTABLISHED"),
    ]
    assert {(c.protocol, c.virtual, c.virtual_port) for c in table} == {("TCP", "203.0.113.10", 80)}
    fake.set_connections(key, ("192.0.2.11", 80), active=0)
    assert [c.destination for c in fake.connections()] == ["192.0.2.12"]
    fake.connection_table.append(table[0])  # tests may also fill it themselves
    assert len(fake.connections()) == 2
    assert fake.info() == ("1.2.1", 4096)


# --------------------------------------------------------------------------- no diffs


def test_moving_counters_and_rates_never_make_the_agent_change_anything() -> None:
    kernel, state = fake_kernel(), AgentState()
    plan = plans(*web("198.51.100.11", "198.51.100.12"))
    assert reconcile(plan, kernel, state).ok
    ipvs = kernel.ipvs
    assert isinstance(ipvs, FakeIPVS)
    for rs in ("198.51.100.11", "198.51.100.12"):
        ipvs.add_traffic(KEY, (rs, 80), conns=10**6, inpkts=2**33, outpkts=7, inbytes=2**40)
        ipvs.set_rates(KEY, (rs, 80), cps=50, inpps=900, outpps=800, inbps=10**6, outbps=10**7)
    ipvs.set_rates(KEY, cps=100)
    assert all(ls.stats != IPVSStats() for ls in ipvs.dump() if ls.service.key == KEY)
    report = reconcile(plan, kernel, state)
    assert report.ok and report.steps == []
    # the cached view, with services remembered as in sync, sees nothing either
    caching, in_sync = CachingKernel(kernel), {}  # type: ignore[var-annotated]
    typed: InSync = in_sync
    assert reconcile(plan, caching.view, state, in_sync=typed).steps == []
    ipvs.add_traffic(KEY, ("198.51.100.11", 80), conns=1)
    caching.refresh()
    assert reconcile(plan, caching.view, state, in_sync=typed).steps == []
    ipvs.zero()
    assert reconcile(plan, kernel, state).steps == []


def test_a_draining_destination_is_judged_on_connections_not_on_counters() -> None:
    """Counters (Conns since the last zero) are history; only ActiveConn+InActConn hold a
    drain: a destination with huge counters and no connections is deleted at once."""
    kernel, state = fake_kernel(), AgentState()
    assert reconcile(plans(*web("198.51.100.11", "198.51.100.12")), kernel, state).ok
    ipvs = kernel.ipvs
    assert isinstance(ipvs, FakeIPVS)
    ipvs.add_traffic(KEY, ("198.51.100.12", 80), conns=5000, inpkts=10**6)
    report = reconcile(plans(*web("198.51.100.11")), kernel, state)
    assert [(str(s.target), s.detail) for s in report.steps] == [
        ("del-dest tcp/192.0.2.10:80 -> 198.51.100.12:80 w1", "idle")
    ]


# --------------------------------------------------------------------------- netlink


def _stats64(values: IPVSStats) -> bytes:
    return b"".join(
        r._nla(k, struct.pack("=Q", v)) for k, v in zip(r.STATS_ATTRS, values, strict=True)
    )


def _stats32(values: IPVSStats) -> bytes:
    """IPVS_*_ATTR_STATS as ip_vs_genl_fill_stats writes it: u32, but u64 byte counters."""
    out = b""
    for k, v in zip(r.STATS_ATTRS, values, strict=True):
        wide = k in (4, 5)
        out += r._nla(k, struct.pack("=Q", v) if wide else struct.pack("=I", v & 0xFFFFFFFF))
    return out


def test_stats64_and_the_older_32_bit_stats_decode() -> None:
    assert r._decode_stats(memoryview(_stats64(BIG))) == BIG
    assert r._decode_stats(memoryview(_stats32(STATS))) == STATS
    # 64-bit attributes padded (architectures without efficient unaligned access)
    pad = r._nla(11, b"")  # IPVS_STATS_ATTR_PAD
    padded = b"".join(
        pad + r._nla(k, struct.pack("=Q", v)) for k, v in zip(r.STATS_ATTRS, BIG, strict=True)
    )
    assert r._decode_stats(memoryview(padded)) == BIG
    assert r._decode_stats(memoryview(b"")) == IPVSStats()


def test_the_64_bit_counters_win_over_the_32_bit_ones() -> None:
    both = r._nested(memoryview(r._nla(10, _stats32(STATS)) + r._nla(12, _stats64(BIG))))
    assert r._stats_of(both, 12, 10) == BIG
    old_kernel = r._nested(memoryview(r._nla(10, _stats32(STATS))))
    assert r._stats_of(old_kernel, 12, 10) == STATS
    assert r._stats_of({}, 12, 10) == IPVSStats()


def _dest_message(d, stats: IPVSStats, *, with_stats64: bool = True) -> memoryview:  # type: ignore[no-untyped-def]
    """A destination nest as Linux 6.1's ip_vs_genl_fill_dest writes it, stats included."""
    full = r._nested(memoryview(r._dest_full(d))[4:])
    raw = {k: bytes(v) for k, v in full.items()}
    order = [r.DEST_ADDR, r.DEST_PORT, r.DEST_FWD_METHOD, r.DEST_WEIGHT, r.DEST_TUN_TYPE,
             r.DEST_TUN_PORT, r.DEST_TUN_FLAGS, r.DEST_U_THRESH, r.DEST_L_THRESH]  # fmt: skip
    parts = [r._nla(k, raw[k].ljust(16, b"\0") if k == r.DEST_ADDR else raw[k]) for k in order]
    parts += [r._u32(r.DEST_ACTIVE_CONNS, 1), r._u32(r.DEST_INACT_CONNS, 2)]
    parts += [r._u32(r.DEST_PERSIST_CONNS, 3), r._nla(r.DEST_ADDR_FAMILY, raw[r.DEST_ADDR_FAMILY])]
    parts.append(r._nla(r.DEST_STATS | 0x8000, _stats32(stats)))  # NLA_F_NESTED or not: same
    if with_stats64:
        parts.append(r._nla(r.DEST_STATS64, _stats64(stats)))
    return memoryview(b"".join(parts))


def test_destination_stats_through_the_fast_and_the_generic_decoder() -> None:
    decoder = r._DestDecoder()
    dests = [d for s in mixed_table() for d in s.destinations]
    for n, d in enumerate(dests * 2):  # the second round reads with the learned layout
        stats = IPVSStats(*(2**35 * n + i for i in range(10)))
        nest = _dest_message(d, stats)
        live = decoder.decode(nest, 2)
        assert live.stats == stats
        assert live == r._decode_dest(r._nested(nest), 2)
    assert all(layout is not None and layout.stats_at > 0 for layout in decoder._layouts.values())


def test_destination_stats_of_a_kernel_without_stats64() -> None:
    d = mixed_table()[0].destinations[0]
    decoder = r._DestDecoder()
    for _ in range(2):
        nest = _dest_message(d, STATS, with_stats64=False)
        assert decoder.decode(nest, 2).stats == STATS
        assert r._decode_dest(r._nested(nest), 2).stats == STATS


def test_a_moved_stats64_block_is_still_read_right() -> None:
    """Same size, other order: the layout check notices and the generic path reads it."""
    d = mixed_table()[0].destinations[0]
    decoder = r._DestDecoder()
    decoder.decode(_dest_message(d, STATS), 2)
    first = bytes(_dest_message(d, BIG))
    s32, s64 = r._nla(r.DEST_STATS | 0x8000, _stats32(BIG)), r._nla(r.DEST_STATS64, _stats64(BIG))
    assert first.endswith(s32 + s64)
    swapped = memoryview(first[: -len(s32 + s64)] + s64 + s32)
    assert decoder.decode(swapped, 2).stats == BIG


def test_zero_and_info_commands_are_the_uapi_numbers() -> None:
    assert (r.CMD_GET_INFO, r.CMD_ZERO) == (15, 16)  # include/uapi/linux/ip_vs.h
    assert (r.SVC_STATS, r.SVC_STATS64, r.DEST_STATS, r.DEST_STATS64) == (10, 12, 10, 12)


# --------------------------------------------------------------------------- /proc


# ip_vs_conn_seq_show (Linux 6.1): "%-3s %08X %04X %08X %04X %s %04X %-11s %7u%s\n" for IPv4,
# %pI6 for IPv6 addresses; a persistence engine's template ends in " <name> <data>".
PROC = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP CB007102 B7F2 CB00710A 0050 C633640B 1F90 ESTABLISHED     897
TCP CB007102 B7F4 CB00710A 0050 C633640C 1F90 TIME_WAIT        59
UDP CB007102 D431 CB00710D 13C4 C6336415 13C4 UDP             299
IP  CB007102 0000 00000063 0000 C000020B 0000 NONE            598
UDP C0000264 13C4 CB00710D 13C4 C6336415 13C4 NONE             59 sip 6a4f1c2e@192.0.2.100
TCP 2001:0db8:0000:0000:0000:0000:0000:0064 9C40 2001:0db8:0000:0000:0000:0000:0000:0010 01BB \
2001:0db8:0001:0000:0000:0000:0000:0011 01BB SYN_RECV         58
TCP 2001:0db8:0000:0000:0000:0000:0000:0064 9C42 2001:0db8:0000:0000:0000:0000:0000:0010 01BB \
C000020B 01BB ESTABLISHED     900
"""


def test_proc_ip_vs_conn_parses_ipv4_ipv6_templates_and_pe_data() -> None:
    conns = r.parse_ip_vs_conn(PROC)
    assert conns[0] == LiveConnection(
        "TCP", "203.0.113.2", 47090, "203.0.113.10", 80, "198.51.100.11", 8080, "ESTABLISHED", 897.0
    )
    assert [(c.protocol, c.state, c.expires) for c in conns] == [
        ("TCP", "ESTABLISHED", 897.0),
        ("TCP", "TIME_WAIT", 59.0),
        ("UDP", "UDP", 299.0),
        ("IP", "NONE", 598.0),
        ("UDP", "NONE", 59.0),
        ("TCP", "SYN_RECV", 58.0),
        ("TCP", "ESTABLISHED", 900.0),
    ]
    assert (conns[3].virtual, conns[3].virtual_port) == ("0.0.0.99", 0)  # fwmark 99 template
    assert conns[4].client == "192.0.2.100"
    assert (conns[5].client, conns[5].virtual, conns[5].destination) == (
        "2001:db8::64",
        "2001:db8::10",
        "2001:db8:1::11",
    )
    assert conns[6].destination == "192.0.2.11"  # an IPv4 tunnel destination of IPv6 VIP
    assert r.parse_ip_vs_conn(PROC.splitlines()[0] + "\n") == []
    assert r.parse_ip_vs_conn("") == []


@pytest.mark.parametrize(
    "line",
    ["TCP CB007102 B7F2 CB00710A", "TCP XYZ B7F2 CB00710A 0050 C633640B 1F90 ESTABLISHED 1",
     "TCP CB007102 B7F2 CB00710A 0050 C633640B 1F90 ESTABLISHED soon"],
)  # fmt: skip
def test_unexpected_proc_lines_are_kernel_errors(line: str) -> None:
    with pytest.raises(KernelError, match="ip_vs_conn"):
        r.parse_ip_vs_conn(line)
