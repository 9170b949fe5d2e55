"""The real ipset adapter: netlink (pyroute2 `IPSet`) inside a named network namespace.

Entries cross this boundary in `ipset save` text form, exactly as the compiler writes them
(`192.0.2.50,tcp:80`, `198.51.100.0/24`, a bare host for /32 and /128), so a diff between the
plan and `list()` compares like with like. The kernel normalises what it stores (a network's
host bits are cleared, `/32` is dropped, a port without protocol means tcp); `list()` reports
the normalised form, which is why the compiler must emit it too.

pyroute2's `IPSet` has no netns argument: the socket is opened after `setns()` into the
target namespace and keeps talking to that namespace after we switch back. Adds and deletes
are exclusive (NLM_F_EXCL), as the `ipset` CLI without `-exist`: a second add is
AlreadyExists, deleting an absent entry is NotFound, like the fake.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from pyroute2 import IPSet
from pyroute2.ipset import PortEntry, PortRange
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.ipset import (
    IPSET_ERR_BUSY,
    IPSET_ERR_EXIST,
    IPSET_ERR_FIND_TYPE,
    IPSET_ERR_INVALID_CIDR,
    IPSET_ERR_INVALID_FAMILY,
    IPSET_ERR_IPADDR_IPV4,
    IPSET_ERR_IPADDR_IPV6,
    IPSET_ERR_PROTOCOL,
    IPSET_ERR_TYPE_SPECIFIC,
    IPSET_FLAG_LIST_SETNAME,
)

from .errors import (
    AlreadyExists,
    InvalidArgument,
    KernelError,
    KernelUnavailable,
    NotFound,
    PermissionDenied,
)
from .netns import entered
from .netstate import IPSetState

__all__ = ["MAX_NAME_LENGTH", "NetlinkIPSets", "ipset_module"]

MAX_NAME_LENGTH = 31  # IPSET_MAXNAMELEN (32) including the terminating NUL

_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
_FAMILY_NAMES = {v: k for k, v in _FAMILIES.items()}
_HOST_BITS = {"inet": 32, "inet6": 128}
# The protocols `ipset save` prints by name in a port dimension (its print_proto_port).
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136}
_PROTOCOL_NAMES = {v: k for k, v in _PROTOCOLS.items()}


def ipset_module(set_type: str) -> str:
    """The kernel module that implements `set_type` (hash:ip,port -> ip_set_hash_ipport)."""
    return "ip_set_" + set_type.replace(":", "_").replace(",", "")


class NetlinkIPSets:
    """`IPSets` over netlink. One short-lived socket per call: pyroute2 sockets are not
    thread-safe, and an ipset call is rare next to the cost of the work it does."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    # IPSets ---------------------------------------------------------------------------
    def list(self, prefix: str) -> dict[str, IPSetState]:
        """Sets whose names start with `prefix`. Names first, then only those sets' entries:
        a CNI's sets next to ours may hold tens of thousands. A large set arrives in several
        dump messages, merged here."""
        headers: dict[str, tuple[str, str]] = {}
        entries: dict[str, set[str]] = {}
        messages: list[Any] = []
        with self._socket() as ipset:
            names = self._call(
                "list ipset names", lambda: list(ipset.list(flags=IPSET_FLAG_LIST_SETNAME))
            )
            for msg in names:
                name = msg.get_attr("IPSET_ATTR_SETNAME")
                if isinstance(name, str) and name.startswith(prefix):
                    try:
                        messages += self._call(
                            f"list ipset {name}", lambda n=name: list(ipset.list(n)), name=name
                        )
                    except NotFound:  # destroyed since the names were listed
                        continue
        for msg in messages:
            name = msg.get_attr("IPSET_ATTR_SETNAME")
            if not isinstance(name, str) or not name.startswith(prefix):
                continue
            if name not in headers:  # continuation messages carry only the name and entries
                set_type = str(msg.get_attr("IPSET_ATTR_TYPENAME"))
                headers[name] = (
                    set_type,
                    _FAMILY_NAMES.get(msg.get_attr("IPSET_ATTR_FAMILY"), "inet"),
                )
            set_type, family = headers[name]
            found = entries.setdefault(name, set())
            adt = msg.get_attr("IPSET_ATTR_ADT")
            if adt is not None:
                for data in adt.get_attrs("IPSET_ATTR_DATA"):
                    found.add(_format_entry(set_type, family, data))
        return {
            name: IPSetState(name, set_type, family, frozenset(entries[name]))
            for name, (set_type, family) in sorted(headers.items())
        }

    def create(self, name: str, set_type: str, family: str) -> None:
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                f"ipset name {name!r} is longer than {MAX_NAME_LENGTH} characters"
            )
        if family not in _FAMILIES:
            raise InvalidArgument(f"ipset {name}: family {family!r} is not inet or inet6")
        with self._socket() as ipset:
            self._call(
                f"create ipset {name} {set_type} family {family}",
                lambda: ipset.create(name, stype=set_type, family=_FAMILIES[family]),
                name=name,
                set_type=set_type,
            )

    def destroy(self, name: str) -> None:
        with self._socket() as ipset:
            self._call(f"destroy ipset {name}", lambda: ipset.destroy(name), name=name)

    def add(self, name: str, entries: Iterable[str]) -> None:
        self._change(name, entries, adding=True)

    def delete(self, name: str, entries: Iterable[str]) -> None:
        self._change(name, entries, adding=False)

    # internals ------------------------------------------------------------------------
    def _change(self, name: str, entries: Iterable[str], adding: bool) -> None:
        """Entries one by one, in order; the first failure stops the batch (those before it
        stay applied, as with `ipset add` line by line)."""
        todo = list(entries)
        if not todo:
            return
        verb = "add to" if adding else "delete from"
        with self._socket() as ipset:
            set_type, family = self._header(ipset, name)
            op = ipset.add if adding else ipset.delete
            for entry in todo:
                value, etype = _parse_entry(name, set_type, family, entry)
                call = functools.partial(op, name, value, family=_FAMILIES[family], etype=etype)
                self._call(
                    f"{verb} ipset {name} entry {entry}",
                    call,
                    name=name,
                    entry=entry,
                    adding=adding,
                )

    def _header(self, ipset: Any, name: str) -> tuple[str, str]:
        """(set type, family) of an existing set; NotFound if there is none."""
        messages = self._call(f"read ipset {name}", lambda: list(ipset.headers(name)), name=name)
        for msg in messages:
            set_type = msg.get_attr("IPSET_ATTR_TYPENAME")
            if set_type:
                return str(set_type), _FAMILY_NAMES.get(msg.get_attr("IPSET_ATTR_FAMILY"), "inet")
        raise NotFound(f"ipset {name} does not exist")

    @contextlib.contextmanager
    def _socket(self) -> Iterator[Any]:
        """A netfilter netlink socket opened inside `self.netns` (or the current one)."""
        try:
            ipset = IPSet() if self.netns is None else self._open_in_netns(self.netns)
        except NetlinkError as exc:
            raise _translate(exc, "open an ipset netlink socket") from exc
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise PermissionDenied(f"ipset: {exc} (needs CAP_NET_ADMIN)") from exc
            raise KernelUnavailable(
                f"ipset netlink is not available (kernel module ip_set): {exc}"
            ) from exc
        try:
            yield ipset
        finally:
            ipset.close()

    @staticmethod
    def _open_in_netns(netns: str) -> Any:
        with entered(netns):
            return IPSet()

    @staticmethod
    def _call(
        what: str,
        fn: Any,
        *,
        name: str = "",
        set_type: str = "",
        entry: str = "",
        adding: bool = True,
    ) -> Any:
        try:
            return fn()
        except NetlinkError as exc:
            raise _translate(exc, what, name, set_type, entry, adding) from exc


def _translate(
    exc: NetlinkError,
    what: str,
    name: str = "",
    set_type: str = "",
    entry: str = "",
    adding: bool = True,
) -> KernelError:
    """pyroute2/kernel ipset errors as the project's exceptions, with what was attempted."""
    code = exc.code
    reason = exc.args[1] if len(exc.args) > 1 and exc.args[1] else None
    if reason is None:
        reason = os.strerror(code) if code < 4096 else f"ipset error {code}"
    text = f"{what}: {reason}"
    if code == IPSET_ERR_EXIST:  # element level: already there (add) / not there (del)
        if adding:
            return AlreadyExists(f"ipset {name}: entry {entry} is already in the set")
        return NotFound(f"ipset {name}: entry {entry} is not in the set")
    if code == errno.EEXIST:
        return AlreadyExists(f"ipset {name} exists")
    if code in (errno.ENOENT, errno.ESRCH):
        return NotFound(f"ipset {name} does not exist" if name else text)
    if code == IPSET_ERR_BUSY:
        return KernelError(
            f"ipset {name} is in use by a kernel component (an iptables rule references it)"
        )
    if code == IPSET_ERR_FIND_TYPE:
        return KernelUnavailable(
            f"ipset type {set_type} is not available in this kernel "
            f"(module {ipset_module(set_type)})"
        )
    if code in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"{text} (needs CAP_NET_ADMIN)")
    if code in (
        errno.EINVAL,
        IPSET_ERR_PROTOCOL,
        IPSET_ERR_INVALID_CIDR,
        IPSET_ERR_INVALID_FAMILY,
        IPSET_ERR_IPADDR_IPV4,
        IPSET_ERR_IPADDR_IPV6,
    ):
        return InvalidArgument(text)
    if code == IPSET_ERR_TYPE_SPECIFIC:  # hash types: the set is full (maxelem)
        return KernelError(f"{what}: ipset {name} is full (maxelem reached)")
    return KernelError(text)


def _dimensions(set_type: str) -> list[str]:
    """hash:ip,port -> ["ip", "port"]."""
    return set_type.partition(":")[2].split(",")


def _parse_entry(name: str, set_type: str, family: str, entry: str) -> tuple[Any, str]:
    """`ipset save` text -> (pyroute2 entry, etype), checked against the set's family."""
    dims = _dimensions(set_type)
    parts = entry.split(",")
    if len(parts) != len(dims):
        raise InvalidArgument(f"ipset {name} ({set_type}): entry {entry!r} needs {len(dims)} parts")
    values: list[Any] = []
    etypes: list[str] = []
    for dim, part in zip(dims, parts, strict=True):
        if dim in ("ip", "net"):
            values.append(_parse_address(name, family, entry, part))
            etypes.append("net" if "/" in part else dim)  # pyroute2 sends a CIDR only for net
        elif dim == "port":
            values.append(_parse_port(name, entry, part))
            etypes.append("port")
        else:
            raise InvalidArgument(f"ipset {name}: {set_type} entries are not supported here")
    return (values[0] if len(values) == 1 else tuple(values)), ",".join(etypes)


def _parse_address(name: str, family: str, entry: str, part: str) -> str:
    try:
        net = ipaddress.ip_network(part, strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"ipset {name}: {entry!r}: {exc}") from exc
    if (net.version == 4) != (family == "inet"):
        raise InvalidArgument(f"ipset {name} is family {family}; {entry!r} is not")
    return part


def _parse_port(name: str, entry: str, part: str) -> PortEntry | PortRange:
    proto_name, _, port = part.rpartition(":")
    proto = _PROTOCOLS.get(proto_name or "tcp")
    try:
        low, _, high = port.partition("-")
        begin, end = int(low), int(high or low)
    except ValueError:
        begin = end = -1
    if proto is None or not (0 <= begin <= end <= 65535):
        raise InvalidArgument(f"ipset {name}: {entry!r}: port must be [tcp|udp|sctp|udplite:]N[-M]")
    if begin == end:
        return PortEntry(begin, protocol=proto)
    return PortRange(begin, end, protocol=proto)


def _format_entry(set_type: str, family: str, data: Any) -> str:
    """One kernel element as `ipset save` prints it."""
    out: list[str] = []
    ip_index = 0
    for dim in _dimensions(set_type):
        if dim in ("ip", "net"):
            ip_index += 1
            addr_attr, cidr_attr = (
                ("IPSET_ATTR_IP_FROM", "IPSET_ATTR_CIDR")
                if ip_index == 1
                else ("IPSET_ATTR_IP2", "IPSET_ATTR_CIDR2")
            )
            nested = data.get_attr(addr_attr)
            address = ""
            if nested is not None:
                address = str(
                    nested.get_attr("IPSET_ATTR_IPADDR_IPV4")
                    or nested.get_attr("IPSET_ATTR_IPADDR_IPV6")
                )
            cidr = data.get_attr(cidr_attr)
            if cidr is not None and cidr != _HOST_BITS[family]:
                address += f"/{cidr}"
            out.append(address)
        elif dim == "port":
            port = data.get_attr("IPSET_ATTR_PORT_FROM")
            if port is None:
                port = data.get_attr("IPSET_ATTR_PORT")
            proto = data.get_attr("IPSET_ATTR_PROTO")
            pname = _PROTOCOL_NAMES.get(proto, str(proto)) if proto is not None else "tcp"
            out.append(f"{pname}:{port}")
        else:  # not a type this project creates; show the raw value rather than fail a list
            out.append(str(data.get_attr(f"IPSET_ATTR_{dim.upper()}")))
    return ",".join(out)
