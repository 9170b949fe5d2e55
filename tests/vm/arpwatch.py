"""Seeing ARP from a client's side: who answers for an address, and which gratuitous ARPs
arrived. Raw AF_PACKET sockets (root / CAP_NET_RAW) opened inside the client's namespace and
bound to one device; every loop is bounded in time and in frames read.

The frames are built and parsed with the agent's own pure functions (kernel/announce.py),
whose bytes the unit tier pins down.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import time
from types import TracebackType

from lvs_operator.kernel.announce import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    ETH_P_ARP,
    ArpPacket,
    arp_frame,
    format_mac,
    parse_arp,
)
from lvs_operator.kernel.netns import entered

__all__ = ["GarpListener", "arp_responders"]

PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of what this host sent itself
SIOCGIFADDR = 0x8915
MAX_FRAMES = 10_000  # per read loop: a bound even if the segment is flooded


def _open(netns_name: str | None, device: str) -> socket.socket:
    with entered(netns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            sock.bind((device, ETH_P_ARP))
        except OSError:
            sock.close()
            raise
    return sock


def _ipv4_of(netns_name: str | None, device: str) -> str:
    """The device's primary IPv4 address (SIOCGIFADDR), 0.0.0.0 if it has none."""
    with entered(netns_name), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            ifreq = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", device.encode()))
        except OSError:
            return "0.0.0.0"  # an ARP probe (RFC 5227): Linux answers those too
    return socket.inet_ntoa(ifreq[20:24])


def _read(sock: socket.socket, deadline: float) -> list[ArpPacket]:
    """The incoming ARP packets until `deadline` (time.monotonic()), and then whatever the
    socket buffered by then (a slow reader, e.g. Python under TCG, misses nothing)."""
    out = []
    for _ in range(MAX_FRAMES):
        remaining = deadline - time.monotonic()
        sock.settimeout(remaining if remaining > 0 else 0.0)  # 0.0: non-blocking
        try:
            data, address = sock.recvfrom(2048)
        except (TimeoutError, BlockingIOError):
            break
        if address[2] == PACKET_OUTGOING:
            continue
        packet = parse_arp(data)
        if packet is not None:
            out.append(packet)
    return out


def arp_responders(
    netns_name: str | None,
    device: str,
    target_ip: str,
    timeout: float = 0.5,
    *,
    sender_ip: str | None = None,
) -> set[str]:
    """Send ONE broadcast who-has `target_ip` from `device` and return every distinct MAC that
    answers it within `timeout` seconds. The client's kernel is bypassed: its neighbour
    table neither helps nor hides a second responder (which is how split brain shows)."""
    sock = _open(netns_name, device)
    try:
        mac = bytes(sock.getsockname()[4])
        source = sender_ip if sender_ip is not None else _ipv4_of(netns_name, device)
        sock.send(arp_frame(ARPOP_REQUEST, mac, source, b"\x00" * 6, target_ip))
        replies = _read(sock, time.monotonic() + timeout)
    finally:
        sock.close()
    ours = format_mac(mac)
    return {
        p.sender_mac
        for p in replies
        if p.op == ARPOP_REPLY and p.sender_ip == target_ip and p.target_mac == ours
    }


class GarpListener:
    """Records gratuitous ARPs (sender IP = target IP) arriving on `device`. The socket opens
    in the constructor, so what arrives before `poll` waits in its buffer; use it as a
    context manager (or call close)."""

    def __init__(self, netns_name: str | None, device: str) -> None:
        self._sock = _open(netns_name, device)
        self.seen: list[ArpPacket] = []

    def poll(self, timeout: float = 0.0) -> list[ArpPacket]:
        """Read for up to `timeout` seconds (0: only what is buffered); returns what is new."""
        new = [p for p in _read(self._sock, time.monotonic() + timeout) if p.gratuitous]
        self.seen += new
        return new

    def wait_for(self, ip: str, mac: str, timeout: float = 2.0) -> list[ArpPacket]:
        """The gratuitous ARPs for `ip` from `mac` seen so far, waiting up to `timeout`
        seconds for the first one; empty if none came."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            self.poll(0)
            found = [p for p in self.seen if p.sender_ip == ip and p.sender_mac == mac]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            self.poll(min(remaining, 0.1))
        return []

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GarpListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
