"""An Announcer that records what it would have sent, refusing what the real one refuses."""

from __future__ import annotations

from collections.abc import Iterable

from .announce import Announcer, checked_announcement
from .errors import NotFound

__all__ = ["FakeAnnouncer"]


class FakeAnnouncer:
    """`announcements` lists (device, canonical address, count) in order. With `devices`
    given, any other device is NotFound (None: every device exists)."""

    def __init__(self, devices: Iterable[str] | None = None) -> None:
        self.announcements: list[tuple[str, str, int]] = []
        self._devices = None if devices is None else set(devices)

    def announce(self, device: str, address: str, count: int = 3, interval: float = 0.2) -> None:
        ip = checked_announcement(device, address, count, interval)
        if self._devices is not None and device not in self._devices:
            raise NotFound(f"announce {ip} on {device}: device {device} does not exist")
        self.announcements.append((device, str(ip), count))


_: type[Announcer] = FakeAnnouncer  # compile-time check: the fake fits the Protocol
