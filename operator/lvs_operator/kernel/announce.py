"""Announcing a VIP that this director has just taken over (HA failover).

IPv4: gratuitous ARP, both kinds, as keepalived and `arping -U`/`-A` send them: a request and
a reply whose sender and target IP are the VIP, sender MAC the device's, to broadcast. IPv6:
an unsolicited neighbour advertisement (RFC 4861 7.2.6) to ff02::1 with the override flag and
the target link-layer address option.

What a receiving Linux does with them (net/ipv4/arp.c `arp_process`, net/ipv6/ndisc.c):
- an EXISTING neighbour entry for the VIP is overwritten by a gratuitous ARP (even within
  `locktime`), whatever `arp_accept` says; a gratuitous *reply* only counts when its target
  MAC equals its sender MAC, which is why `garp_frame` fills it so;
- a host WITHOUT an entry creates one only with `net.ipv4.conf.*.arp_accept=1`;
- an unsolicited NA with the override flag overwrites an existing IPv6 entry (and moves it
  to STALE); it creates none unless `accept_untracked_na` allows it (Linux >= 6.0).

The frames are built here by pure functions (exact bytes, unit-tested); `real_announce.py`
sends them, `fake_announce.py` records them.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Protocol

from .errors import InvalidArgument

__all__ = [
    "ARPOP_REPLY",
    "ARPOP_REQUEST",
    "BROADCAST",
    "ETH_P_ARP",
    "ETH_P_IPV6",
    "Announcer",
    "ArpPacket",
    "arp_frame",
    "checked_announcement",
    "format_mac",
    "garp_frame",
    "multicast_mac",
    "parse_arp",
    "parse_mac",
    "unsolicited_na",
]

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LINKADDR = 2
ALL_NODES = ipaddress.IPv6Address("ff02::1")


class Announcer(Protocol):
    """Tells the segment that `address` now lives at `device`'s MAC."""

    def announce(self, device: str, address: str, count: int = 3, interval: float = 0.2) -> None:
        """Send `count` rounds `interval` seconds apart (no wait after the last): for IPv4 a
        gratuitous ARP request and reply each round, for IPv6 one unsolicited NA.
        NotFound if the device is missing, InvalidArgument for a bad address, count or a
        device without an Ethernet address, PermissionDenied without CAP_NET_RAW."""
        ...


# --- helpers ------------------------------------------------------------------------------


def checked_announcement(
    device: str, address: str, count: int, interval: float
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address to announce, or InvalidArgument: one rule for the real and fake kind."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidArgument(f"{address!r} is not an IP address") from exc
    if count < 1:
        raise InvalidArgument(f"announce {ip} on {device}: count must be >= 1, not {count}")
    if interval < 0:
        raise InvalidArgument(f"announce {ip} on {device}: interval {interval} < 0")
    if ip.is_multicast or ip.is_unspecified:
        raise InvalidArgument(f"{ip} is not a unicast address: there is nothing to announce")
    return ip


def parse_mac(text: str) -> bytes:
    """"02:00:00:00:00:0a" -> 6 bytes."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise InvalidArgument(f"{text!r} is not a MAC address")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError as exc:
        raise InvalidArgument(f"{text!r} is not a MAC address") from exc


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _mac(mac: bytes) -> bytes:
    if len(mac) != 6:
        raise InvalidArgument(f"a MAC address has 6 bytes, not {len(mac)}")
    return bytes(mac)


def _ipv4(ip: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(ip)
    except ValueError as exc:
        raise InvalidArgument(f"{ip!r} is not an IPv4 address") from exc


def _ipv6(ip: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(ip)
    except ValueError as exc:
        raise InvalidArgument(f"{ip!r} is not an IPv6 address") from exc


# --- ARP ------------------------------------------------------------------------------------


def arp_frame(
    op: int,
    sender_mac: bytes,
    sender_ip: str,
    target_mac: bytes,
    target_ip: str,
    destination: bytes = BROADCAST,
) -> bytes:
    """An Ethernet II frame carrying one ARP packet (IPv4 over Ethernet, RFC 826); 42 bytes,
    the NIC pads it to 60."""
    if op not in (ARPOP_REQUEST, ARPOP_REPLY):
        raise InvalidArgument(f"ARP operation {op} is neither request (1) nor reply (2)")
    sender_mac = _mac(sender_mac)
    ether = _mac(destination) + sender_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", ARPHRD_ETHER, ETH_P_IP, 6, 4, op)
    arp += sender_mac + _ipv4(sender_ip).packed + _mac(target_mac) + _ipv4(target_ip).packed
    return ether + arp


def garp_frame(mac: bytes, ip: str, op: int) -> bytes:
    """A gratuitous ARP for `ip` at `mac`, broadcast. A request carries a zero target MAC (as
    Linux's own arp_notify sends it, RFC 5227 "ARP announcement"); a reply carries the sender
    MAC as target MAC, which Linux requires before it treats a reply as gratuitous."""
    target_mac = ZERO_MAC if op == ARPOP_REQUEST else mac
    return arp_frame(op, mac, ip, target_mac, ip)


class ArpPacket(NamedTuple):
    op: int
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str
    source: str  # the Ethernet source MAC
    destination: str  # the Ethernet destination MAC

    @property
    def gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def parse_arp(frame: bytes) -> ArpPacket | None:
    """The ARP packet in an Ethernet frame (IPv4 over Ethernet only), None for anything else."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    hrd, pro, hln, pln, op = struct.unpack_from("!HHBBH", frame, 14)
    if (hrd, pro, hln, pln) != (ARPHRD_ETHER, ETH_P_IP, 6, 4):
        return None
    body = frame[22:42]
    return ArpPacket(
        op=op,
        sender_mac=format_mac(body[0:6]),
        sender_ip=str(ipaddress.IPv4Address(body[6:10])),
        target_mac=format_mac(body[10:16]),
        target_ip=str(ipaddress.IPv4Address(body[16:20])),
        source=format_mac(frame[6:12]),
        destination=format_mac(frame[0:6]),
    )


# --- IPv6 neighbour advertisement -----------------------------------------------------------


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    """33:33 and the group's low 32 bits (RFC 2464 section 7)."""
    return b"\x33\x33" + group.packed[12:]


def unsolicited_na(mac: bytes, ip: str, *, router: bool = False) -> bytes:
    """An Ethernet frame carrying an unsolicited neighbour advertisement for `ip` at `mac`:
    to ff02::1 (33:33:00:00:00:01), hop limit 255, flags override (and router if asked, never
    solicited), option 2 (target link-layer address). The source address is the target itself,
    as Linux's own unsolicited NA (ndisc_send_unsol_na) does."""
    mac = _mac(mac)
    target = _ipv6(ip)
    if target.is_multicast:
        raise InvalidArgument(f"{ip} is a multicast address and has no neighbour entry")
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_ROUTER if router else 0)
    option = struct.pack("!BB", ND_OPT_TARGET_LINKADDR, 1) + mac
    body = struct.pack("!I", flags) + target.packed + option
    length = 4 + len(body)  # type, code, checksum
    pseudo = target.packed + ALL_NODES.packed + struct.pack("!I3xB", length, IPPROTO_ICMPV6)
    checksum = _checksum(pseudo + struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, 0) + body)
    icmp = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, checksum) + body
    ipv6 = struct.pack("!IHBB", 6 << 28, length, IPPROTO_ICMPV6, 255)
    ipv6 += target.packed + ALL_NODES.packed
    ether = multicast_mac(ALL_NODES) + mac + struct.pack("!H", ETH_P_IPV6)
    return ether + ipv6 + icmp
