"""Entering a named network namespace, for every adapter the same way.

pyroute2's pushns()/setns() by name *create* a missing namespace (they open it with
O_CREAT), which would hide a typo behind an empty namespace, and its push/pop stack is
process-wide. Here the namespace handle is opened first (NotFound if absent) and the thread
switches with setns on file descriptors, returning to where it was afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from pyroute2 import netns as pyroute2_netns

from .errors import KernelError, NotFound, PermissionDenied

__all__ = ["NETNS_DIR", "entered", "netns_path"]

NETNS_DIR = "/run/netns"  # where `ip netns add` and pyroute2 keep named namespaces


def netns_path(netns: str) -> str:
    return netns if "/" in netns else f"{NETNS_DIR}/{netns}"


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body inside `netns` (this thread only); None means stay where we are.
    Sockets opened inside keep working in that namespace after the body ends."""
    if netns is None:
        yield
        return
    try:
        target = os.open(netns_path(netns), os.O_RDONLY)
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {netns} does not exist ({netns_path(netns)})") from exc
    saved = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        try:
            pyroute2_netns.setns(target)
        except OSError as exc:
            cls = PermissionDenied if exc.errno in (errno.EPERM, errno.EACCES) else KernelError
            raise cls(f"enter network namespace {netns}: {exc.strerror or exc}") from exc
        try:
            yield
        finally:
            pyroute2_netns.setns(saved)
    finally:
        os.close(saved)
        os.close(target)
