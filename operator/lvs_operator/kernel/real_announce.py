"""The real Announcer: gratuitous ARP and unsolicited NA written to the wire through an
AF_PACKET raw socket (what keepalived does), which needs CAP_NET_RAW and nothing else.

The socket is opened from inside the adapter's network namespace (`netns.entered`) and stays
bound to it. The device's MAC and link type come from the bound socket itself
(getsockname() of a packet socket is its sockaddr_ll), not from /sys/class/net, which shows the
devices of the namespace sysfs was mounted in rather than the caller's. The socket is bound
with protocol 0, so it receives nothing and only sends. What the kernel says is translated
into `errors.py` here.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

from .announce import (
    ARPHRD_ETHER,
    ARPOP_REPLY,
    ARPOP_REQUEST,
    Announcer,
    checked_announcement,
    garp_frame,
    unsolicited_na,
)
from .errors import (
    InvalidArgument,
    KernelError,
    KernelUnavailable,
    NotFound,
    PermissionDenied,
)
from .netns import entered

__all__ = ["PacketAnnouncer"]

_ERRNO_CLASSES: dict[int, type[KernelError]] = {
    errno.ENODEV: NotFound,
    errno.ENXIO: NotFound,
    errno.ENOENT: NotFound,
    errno.EPERM: PermissionDenied,
    errno.EACCES: PermissionDenied,
    errno.EINVAL: InvalidArgument,
    errno.EAFNOSUPPORT: KernelUnavailable,
    errno.EPROTONOSUPPORT: KernelUnavailable,
    errno.ESOCKTNOSUPPORT: KernelUnavailable,
}

_HINTS = {
    errno.EPERM: " (raw packet sockets need CAP_NET_RAW)",
    errno.EACCES: " (raw packet sockets need CAP_NET_RAW)",
    errno.ENETDOWN: " (the device is down)",
}


def _kernel_error(what: str, exc: OSError) -> KernelError:
    code = exc.errno or 0
    cls = _ERRNO_CLASSES.get(code, KernelError)
    reason = os.strerror(code) if code else str(exc)
    return cls(f"{what}: {reason}{_HINTS.get(code, '')}")


class PacketAnnouncer:
    """Announces VIPs on Ethernet devices of one network namespace (None: the agent's own)."""

    def __init__(
        self, netns: str | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.netns = netns
        self._sleep = sleep

    def announce(self, device: str, address: str, count: int = 3, interval: float = 0.2) -> None:
        ip = checked_announcement(device, address, count, interval)
        what = f"announce {ip} on {self._where(device)}"
        sock = self._open(device, what)
        try:
            mac = self._ethernet_address(sock, device)
            if ip.version == 4:
                frames = [garp_frame(mac, str(ip), op) for op in (ARPOP_REQUEST, ARPOP_REPLY)]
            else:
                frames = [unsolicited_na(mac, str(ip))]
            for round_ in range(count):
                if round_:
                    self._sleep(interval)
                for frame in frames:
                    try:
                        sock.send(frame)
                    except OSError as exc:
                        raise _kernel_error(what, exc) from exc
        finally:
            sock.close()

    def _where(self, device: str) -> str:
        return f"{device} in network namespace {self.netns}" if self.netns else device

    def _open(self, device: str, what: str) -> socket.socket:
        with entered(self.netns):
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            except OSError as exc:
                raise _kernel_error(f"{what}: open a packet socket", exc) from exc
            try:
                sock.bind((device, 0))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.ENODEV:
                    raise NotFound(f"{what}: device {device} does not exist") from exc
                raise _kernel_error(what, exc) from exc
            return sock

    def _ethernet_address(self, sock: socket.socket, device: str) -> bytes:
        _name, _proto, _pkttype, hatype, mac = sock.getsockname()
        if hatype != ARPHRD_ETHER or len(mac) != 6:
            raise InvalidArgument(
                f"{self._where(device)} is not an Ethernet device (link type {hatype}): "
                "there is no MAC to announce"
            )
        return bytes(mac)


_: type[Announcer] = PacketAnnouncer  # compile-time check: it fits the Protocol
