"""An Announcer that records what it would have sent, refusing what the real one refuses."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .announce import Announcer
from .errors import InvalidArgument, NotFound

__all__ = ["FakeAnnouncer"]


class FakeAnnouncer:
    """`announcements` lists (device, canonical address, count) in order. With `devices`
    given, any other device is NotFound (None: every device exists)."""

    def __init__(self, devices: Iterable[str] | None = None) -> None:
        self.announcements: list[tuple[str, str, int]] = []
        self._devices = None if devices is None else set(devices)

    def announce(self, device: str, address: str, count: int = 3, interval: float = 0.2) -> None:
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
        if self._devices is not None and device not in self._devices:
            raise NotFound(f"announce {ip} on {device}: device {device} does not exist")
        self.announcements.append((device, str(ip), count))


_: type[Announcer] = FakeAnnouncer  # compile-time check: the fake fits the Protocol
