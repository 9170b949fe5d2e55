"""The announcement frames byte for byte (kernel/announce.py), and the fake announcer.

The bytes were checked against a real kernel too: tests/vm/test_announce.py sends them and a
client's neighbour table takes them (a wrong ICMPv6 checksum or hop limit would be dropped).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

import pytest

from lvs_operator.kernel.announce import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    Announcer,
    ArpPacket,
    arp_frame,
    format_mac,
    garp_frame,
    multicast_mac,
    parse_arp,
    parse_mac,
    unsolicited_na,
)
from lvs_operator.kernel.errors import InvalidArgument, NotFound
from lvs_operator.kernel.fake_announce import FakeAnnouncer
from lvs_operator.kernel.real_announce import PacketAnnouncer

MAC = bytes.fromhex("02000000 0a01")
VIP = "192.0.2.10"  # c000020a
VIP6 = "2001:db8::10"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


GARP_REQUEST = h(
    "ffffffffffff 020000000a01 0806"  # Ethernet: broadcast, from MAC, ARP
    "0001 0800 06 04 0001"  # Ethernet/IPv4, 6/4 byte addresses, request
    "020000000a01 c000020a"  # sender MAC, sender IP = VIP
    "000000000000 c000020a"  # target MAC zero, target IP = VIP
)
GARP_REPLY = h(
    "ffffffffffff 020000000a01 0806"
    "0001 0800 06 04 0002"  # reply
    "020000000a01 c000020a"
    "020000000a01 c000020a"  # target MAC = sender MAC: what Linux calls a gratuitous reply
)
NA = h(
    "333300000001 020000000a01 86dd"  # Ethernet: all-nodes multicast, from MAC, IPv6
    "60000000 0020 3a ff"  # version 6, payload 32 bytes, ICMPv6, hop limit 255
    "20010db8000000000000000000000010"  # source = the target (as Linux sends it)
    "ff020000000000000000000000000001"  # destination ff02::1
    "88 00 ef0c"  # type 136 neighbour advertisement, code 0, checksum
    "20000000"  # flags: override only (not router, never solicited)
    "20010db8000000000000000000000010"  # target
    "02 01 020000000a01"  # option: target link-layer address, 8 bytes
)


def _fold(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize(
    ("desc", "op", "want"),
    [
        ("request: zero target MAC (RFC 5227 announcement)", ARPOP_REQUEST, GARP_REQUEST),
        ("reply: target MAC = sender MAC", ARPOP_REPLY, GARP_REPLY),
    ],
)
def test_garp_frame_bytes(desc: str, op: int, want: bytes) -> None:
    assert garp_frame(MAC, VIP, op) == want, desc


def test_unsolicited_na_bytes() -> None:
    frame = unsolicited_na(MAC, VIP6)
    assert frame == NA
    assert len(frame) == 14 + 40 + 32


def test_unsolicited_na_checksum_sums_to_all_ones() -> None:
    """Independent of the literal above: pseudo-header + message fold to 0xffff."""
    for ip in (VIP6, "2001:db8:ffff::1", "2001:db8::"):
        frame = unsolicited_na(MAC, ip)
        ipv6, icmp = frame[14:54], frame[54:]
        pseudo = ipv6[8:40] + struct.pack("!I3xB", len(icmp), 58)
        assert _fold(pseudo + icmp) == 0xFFFF, ip


def test_unsolicited_na_router_flag_and_canonical_target() -> None:
    frame = unsolicited_na(MAC, "2001:DB8:0:0::10", router=True)
    assert frame[58:62] == h("a0000000")  # router + override
    assert frame[62:78] == NA[62:78]


def test_arp_request_for_a_responder_check() -> None:
    frame = arp_frame(ARPOP_REQUEST, MAC, "192.0.2.100", bytes(6), VIP)
    assert frame == h(
        "ffffffffffff 020000000a01 0806 0001 0800 06 04 0001"
        "020000000a01 c0000264 000000000000 c000020a"
    )


def test_parse_round_trips_and_knows_gratuitous() -> None:
    packet = parse_arp(GARP_REPLY + bytes(18))  # with the NIC's padding to 60 bytes
    assert packet == ArpPacket(
        op=ARPOP_REPLY,
        sender_mac="02:00:00:00:0a:01",
        sender_ip=VIP,
        target_mac="02:00:00:00:0a:01",
        target_ip=VIP,
        source="02:00:00:00:0a:01",
        destination="ff:ff:ff:ff:ff:ff",
    )
    assert packet.gratuitous
    asked = parse_arp(arp_frame(ARPOP_REQUEST, MAC, "192.0.2.100", bytes(6), VIP))
    assert asked is not None and not asked.gratuitous


@pytest.mark.parametrize(
    ("desc", "frame"),
    [
        ("too short", GARP_REQUEST[:41]),
        ("IPv6, not ARP", NA),
        ("ARP over something other than Ethernet/IPv4", GARP_REQUEST[:14] + h("0006") +
         GARP_REQUEST[16:]),
    ],
)
def test_parse_arp_ignores_other_frames(desc: str, frame: bytes) -> None:
    assert parse_arp(frame) is None, desc


def test_macs() -> None:
    assert parse_mac("02:00:00:00:0A:01") == MAC
    assert format_mac(MAC) == "02:00:00:00:0a:01"
    assert multicast_mac(ipaddress.IPv6Address("ff02::1:ff00:10")) == h(
        "3333ff000010"
    )
    for bad in ("02:00:00:00:0a", "02:00:00:00:0a:zz", "0200.0000.0a01"):
        with pytest.raises(InvalidArgument):
            parse_mac(bad)


@pytest.mark.parametrize(
    ("desc", "call"),
    [
        ("short MAC", lambda: garp_frame(MAC[:5], VIP, ARPOP_REQUEST)),
        ("IPv6 in ARP", lambda: garp_frame(MAC, VIP6, ARPOP_REQUEST)),
        ("not an address", lambda: garp_frame(MAC, "192.0.2.300", ARPOP_REPLY)),
        ("ARP op 3", lambda: garp_frame(MAC, VIP, 3)),
        ("IPv4 in an NA", lambda: unsolicited_na(MAC, VIP)),
        ("multicast target", lambda: unsolicited_na(MAC, "ff02::1")),
    ],
)
def test_frames_refuse_nonsense(desc: str, call: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidArgument):
        call()


# --- the fake -------------------------------------------------------------------------------


def test_fake_records_canonical_announcements() -> None:
    fake = FakeAnnouncer()
    fake.announce("eth0", VIP)
    fake.announce("eth1", "2001:DB8:0::10", count=5, interval=0)
    assert fake.announcements == [("eth0", VIP, 3), ("eth1", VIP6, 5)]


@pytest.mark.parametrize(
    ("desc", "device", "address", "count", "error"),
    [
        ("unknown device", "eth9", VIP, 3, NotFound),
        ("bad address", "eth0", "192.0.2.300", 3, InvalidArgument),
        ("no rounds", "eth0", VIP, 0, InvalidArgument),
        ("multicast", "eth0", "224.0.0.1", 3, InvalidArgument),
        ("unspecified", "eth0", "::", 3, InvalidArgument),
    ],
)
def test_fake_refuses_what_the_real_one_refuses(
    desc: str, device: str, address: str, count: int, error: type[Exception]
) -> None:
    fake = FakeAnnouncer(devices=["eth0"])
    with pytest.raises(error):
        fake.announce(device, address, count=count)
    assert fake.announcements == [], desc
    if error is InvalidArgument:  # the real one checks these before it opens any socket
        with pytest.raises(InvalidArgument):
            PacketAnnouncer("lvs-unit-no-such-netns").announce(device, address, count=count)


def test_both_fit_the_protocol() -> None:
    announcers: list[Announcer] = [FakeAnnouncer(), PacketAnnouncer(None)]
    assert len(announcers) == 2
