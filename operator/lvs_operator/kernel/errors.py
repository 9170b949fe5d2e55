"""One exception tree for everything the kernel can say; pyroute2 and subprocess errors are
translated into these at the adapter boundary (`raise ... from exc`)."""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "InvalidArgument",
    "KernelError",
    "KernelUnavailable",
    "NotFound",
    "PermissionDenied",
]


class KernelError(Exception):
    """Something the kernel refused; the message says what was attempted and why."""


class KernelUnavailable(KernelError):
    """A kernel feature is missing (no ip_vs module, no ipset type, no xt_ipvs match)."""


class AlreadyExists(KernelError):
    """EEXIST: the object is there already."""


class NotFound(KernelError):
    """ENOENT/ESRCH: the object is not there."""


class PermissionDenied(KernelError):
    """EPERM/EACCES: the agent lacks a capability (NET_ADMIN, NET_RAW)."""


class InvalidArgument(KernelError):
    """EINVAL: the kernel rejected the values (e.g. an unknown scheduler module)."""
