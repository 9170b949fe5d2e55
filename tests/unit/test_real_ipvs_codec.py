"""NetlinkIPVS's wire format, checked without a kernel: what it encodes decodes back to the
plan's kernel attributes, and the byte-level details pyroute2 gets wrong are right here.
The same adapter against real IPVS: tests/vm/test_real_ipvs.py."""

from __future__ import annotations

import os
import struct

import pytest

from lvs_operator.kernel import real_ipvs as r
from lvs_operator.kernel.errors import InvalidArgument, KernelError, KernelUnavailable, NotFound
from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind, dest_attributes, service_attributes
from tests.contract.ipvs_contract import mixed_table, tcp, tunnel

K = IPVSOpKind


def _service_attrs(body: bytes) -> dict[int, memoryview]:
    return r._nested(memoryview(body))


def test_services_and_destinations_decode_back_to_their_kernel_attributes() -> None:
    for s in mixed_table():
        a = _service_attrs(r._service_full(s))
        assert r._decode_service(a) == service_attributes(s)
        af = struct.unpack("=H", a[r.SVC_AF])[0]
        for d in s.destinations:
            live = r._decode_dest(r._nested(memoryview(r._dest_full(d))[4:]), af)
            assert live.dest == dest_attributes(d)
            assert (live.active_conns, live.inactive_conns, live.persistent_conns) == (0, 0, 0)


def test_tunnel_port_goes_in_network_byte_order() -> None:
    a = r._nested(memoryview(r._dest_full(tunnel("192.0.2.11", "gue", 6080, "remcsum")))[4:])
    assert bytes(a[r.DEST_TUN_PORT]) == b"\x17\xc0"
    assert bytes(a[r.DEST_TUN_TYPE]) == b"\x01"
    assert struct.unpack("=H", a[r.DEST_TUN_FLAGS]) == (2,)
    assert struct.unpack("=I", a[r.DEST_FWD_METHOD]) == (2,)


@pytest.mark.parametrize(
    ("service", "netmask"),
    [
        (tcp(persistence_timeout=60, persistence_prefix=24), b"\xff\xff\xff\x00"),
        (tcp(), b"\xff\xff\xff\xff"),  # always sent: the kernel wants it on every add/edit
        (tcp("2001:db8::10", persistence_timeout=60, persistence_prefix=64), struct.pack("=I", 64)),
        (tcp("2001:db8::10"), struct.pack("=I", 128)),  # IPv6: a prefix length in 1..128
    ],
)
def test_netmask_is_always_sent_in_the_family_s_own_form(service, netmask) -> None:  # type: ignore[no-untyped-def]
    assert bytes(_service_attrs(r._service_full(service))[r.SVC_NETMASK]) == netmask


def test_flags_carry_persistence_one_packet_and_scheduler_bits_with_a_full_mask() -> None:
    s = tcp(
        scheduler="sh", flags=("sh-fallback", "sh-port"), persistence_timeout=5, one_packet=True
    )
    flags, mask = struct.unpack("=II", _service_attrs(r._service_full(s))[r.SVC_FLAGS])
    assert (flags, mask) == (0x1 | 0x4 | 0x8 | 0x10, 0xFFFFFFFF)


def test_edits_use_the_set_commands_never_delete() -> None:
    s = tcp()._replace(destinations=())
    d = tunnel("192.0.2.11")
    cmds = {kind: r._encode_op(IPVSOp(kind, s, d), {})[0] for kind in K}
    assert cmds == {
        K.ADD_SERVICE: 1,
        K.EDIT_SERVICE: 2,
        K.DEL_SERVICE: 3,
        K.ADD_DEST: 5,
        K.EDIT_DEST: 6,
        K.DEL_DEST: 7,
    }


def test_ops_the_kernel_could_never_take_fail_alone_without_a_socket() -> None:
    bad = [
        IPVSOp(K.ADD_SERVICE, tcp(flags=("no-such-flag",))),
        IPVSOp(K.ADD_DEST, tcp(), tunnel("192.0.2.11")._replace(forward="fullnat")),
        IPVSOp(K.ADD_DEST, tcp(), tunnel("not-an-address")),
    ]
    failures = r.NetlinkIPVS().apply(bad)
    assert [f.op for f in failures] == bad
    assert all(isinstance(f.error, InvalidArgument) for f in failures)


@pytest.mark.skipif(os.path.exists("/proc/net/ip_vs"), reason="this kernel has IPVS loaded")
def test_missing_ip_vs_is_kernel_unavailable_with_the_fix() -> None:
    with pytest.raises(KernelUnavailable, match="modprobe ip_vs"):
        r.NetlinkIPVS().probe()


def test_missing_netns_is_not_found_and_not_created() -> None:
    name = f"lvs-no-such-ns-{os.getpid()}"
    with pytest.raises(NotFound, match=name):
        r.NetlinkIPVS(name).dump()
    assert not os.path.exists(f"/run/netns/{name}")


def _kernel_dest_message(d, active: int, inactive: int, persistent: int, af: int = 2) -> memoryview:  # type: ignore[no-untyped-def]
    """A destination nest in the order Linux 6.1's ip_vs_genl_fill_dest writes it (16-byte
    address, stats blocks included)."""
    full = r._nested(memoryview(r._dest_full(d))[4:])
    raw = {k: bytes(v) for k, v in full.items()}
    addr = raw[r.DEST_ADDR].ljust(16, b"\0")
    parts = [
        r._nla(r.DEST_ADDR, addr),
        r._nla(r.DEST_PORT, raw[r.DEST_PORT]),
        r._nla(r.DEST_FWD_METHOD, raw[r.DEST_FWD_METHOD]),
        r._nla(r.DEST_WEIGHT, raw[r.DEST_WEIGHT]),
        r._nla(r.DEST_TUN_TYPE, raw[r.DEST_TUN_TYPE]),
        r._nla(r.DEST_TUN_PORT, raw[r.DEST_TUN_PORT]),
        r._nla(r.DEST_TUN_FLAGS, raw[r.DEST_TUN_FLAGS]),
        r._nla(r.DEST_U_THRESH, raw[r.DEST_U_THRESH]),
        r._nla(r.DEST_L_THRESH, raw[r.DEST_L_THRESH]),
        r._u32(r.DEST_ACTIVE_CONNS, active),
        r._u32(r.DEST_INACT_CONNS, inactive),
        r._u32(r.DEST_PERSIST_CONNS, persistent),
        r._nla(r.DEST_ADDR_FAMILY, raw[r.DEST_ADDR_FAMILY]),
        r._nla(10, b"\0" * 88),  # IPVS_DEST_ATTR_STATS (nested, not read)
        r._nla(12, b"\0" * 120),  # IPVS_DEST_ATTR_STATS64
    ]
    return memoryview(b"".join(parts))


def test_fast_destination_decoder_agrees_with_the_generic_one() -> None:
    decoder = r._DestDecoder()
    dests = [d for s in mixed_table() for d in s.destinations]
    for n, d in enumerate(dests * 2):  # the second round uses the learned layout
        nest = _kernel_dest_message(d, n, n + 1, n + 2)
        live = decoder.decode(nest, 2)
        assert live == r._decode_dest(r._nested(nest), 2)
        assert live.dest == dest_attributes(d)
        assert (live.active_conns, live.inactive_conns, live.persistent_conns) == (n, n + 1, n + 2)
    assert decoder._layouts and all(layout is not None for layout in decoder._layouts.values())


def test_fast_destination_decoder_falls_back_on_an_unexpected_layout() -> None:
    decoder = r._DestDecoder()
    d = mixed_table()[0].destinations[0]._replace(upper_threshold=70, lower_threshold=7)
    decoder.decode(_kernel_dest_message(d, 1, 2, 3), 2)  # learn the 6.1 order
    moved = bytes(_kernel_dest_message(d, 1, 2, 3))
    u, low = r._u32(r.DEST_U_THRESH, 70), r._u32(r.DEST_L_THRESH, 7)
    assert u + low in moved
    swapped = memoryview(moved.replace(u + low, low + u))  # same size, other order
    live = decoder.decode(swapped, 2)
    assert (live.dest.upper_threshold, live.dest.lower_threshold) == (70, 7)
    assert live == r._decode_dest(r._nested(swapped), 2)


def test_malformed_messages_are_kernel_errors() -> None:
    with pytest.raises(KernelError, match="destination"):
        r._decode_dest(r._nested(memoryview(r._u32(r.DEST_WEIGHT, 1))), 2)
