"""Two small things every harness and slow test needs: waiting for a condition with a bound,
and one process at a time in a shared cache."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = ["file_lock", "wait_until"]


def wait_until(what: str, probe: Callable[[], T], timeout: float = 60.0,
               interval: float = 0.5) -> T:
    """`probe()` until it returns something true, which is returned; AssertionError naming
    `what` and the last value after `timeout` seconds (every wait in the tests is bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout:.0f} s (last: {value!r})")
        time.sleep(interval)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing): concurrent installs into one
    cache (parallel CI jobs, a run and a shell) take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
