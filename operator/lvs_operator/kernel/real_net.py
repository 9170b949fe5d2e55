"""Real adapters for the node state around IPVS: VIP addresses (rtnetlink), sysctls
(/proc/sys) and tunnel receive devices (rtnetlink plus the generic netlink family "fou").

Each is scoped to one network namespace: None is the agent's own (hostNetwork), a name is one
under /var/run/netns (tests). Sockets are opened from inside the namespace with setns(2), so
they stay bound to it; /proc/sys/net is read and written the same way, because that tree shows
the namespace of the process that looks it up. The agent is single-threaded, which this
relies on: setns changes the calling thread.

What the kernel says is translated into `errors.py` at this boundary.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from pyroute2 import IPRoute
from pyroute2.netlink import (
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    ctrlmsg,
    genlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from ..compiler.plan import TunnelDevice
from .errors import (
    AlreadyExists,
    InvalidArgument,
    KernelError,
    KernelUnavailable,
    NotFound,
    PermissionDenied,
)
from .netns import entered
from .netstate import ADDRESS_PROTO, MAX_ADDRESS_LIFETIME, AddressEntry

__all__ = ["NetlinkAddresses", "NetlinkTunnels", "ProcSysctls"]


IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # the driver signals a carrier (operstate follows it)
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02  # IPv6: usable at once, no duplicate address detection (a VIP is shared)
RTN_LOCAL = 2
RTM_F_FIB_MATCH = 0x2000  # `ip route get fibmatch`: the FIB entry, not the resolved dst

_ERRNO_CLASSES: dict[int, type[KernelError]] = {
    errno.EEXIST: AlreadyExists,
    errno.EADDRINUSE: AlreadyExists,
    errno.ENOENT: NotFound,
    errno.ESRCH: NotFound,
    errno.ENODEV: NotFound,
    errno.EADDRNOTAVAIL: NotFound,
    errno.EPERM: PermissionDenied,
    errno.EACCES: PermissionDenied,
    errno.EINVAL: InvalidArgument,
    errno.ERANGE: InvalidArgument,
    errno.EOPNOTSUPP: KernelUnavailable,
    errno.EPROTONOSUPPORT: KernelUnavailable,
    errno.EAFNOSUPPORT: KernelUnavailable,
}


def _errno_of(exc: BaseException) -> int:
    code = getattr(exc, "code", None) if isinstance(exc, NetlinkError) else None
    if code is None:
        code = getattr(exc, "errno", None)
    return int(code or 0)


def _kernel_error(what: str, exc: BaseException) -> KernelError:
    """`exc` as the project's error, saying what was attempted; raise it `from exc`."""
    code = _errno_of(exc)
    cls = _ERRNO_CLASSES.get(code, KernelError)
    reason = os.strerror(code) if code else str(exc)
    return cls(f"{what}: {reason}")


# --- network namespaces: see netns.py ------------------------------------------------------


def _open_iproute(netns: str | None) -> Any:
    with entered(netns):
        return IPRoute()


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidArgument(f"{address!r} is not an IP address") from exc


def _check_prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix_length: int) -> None:
    if not 0 <= prefix_length <= ip.max_prefixlen:
        raise InvalidArgument(f"prefix length {prefix_length} does not fit {ip}")


class _Netlink:
    """An rtnetlink socket in one namespace, with the device name <-> index lookups.

    One socket per calling thread: pyroute2 (0.9) keeps an IPRoute's socket thread-local and
    opens a new one, in the calling thread's namespace, when another thread uses it. An
    adapter used from the HA driver's or the health server's thread would otherwise act on
    the agent's own namespace instead of the director's."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        self._ipr = _open_iproute(netns)
        # index -> name, as of `_names_at`: a director holds a thousand VIPs on one device,
        # and a link dump per address added or routed cost more than the work itself
        # (seconds under TCG). Devices come and go rarely; the map lives one second.
        self._names_cache: dict[int, str] = {}
        self._names_at = -1.0

    @property
    def _ipr(self) -> Any:
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            self._ipr = ipr = _open_iproute(self.netns)
        return ipr

    @_ipr.setter
    def _ipr(self, ipr: Any) -> None:
        self._local.ipr = ipr
        with self._opened_lock:
            self._opened.append(ipr)

    def close(self) -> None:
        """Release the sockets (and pyroute2's event loops behind them)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for ipr in opened:
            # a wrapper (tests) closes what it wraps again; a dead thread's socket may object
            with contextlib.suppress(Exception):
                ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        try:
            result = fn(*args, **kwargs)
            return [] if result is None else list(result)
        except NetlinkError as exc:
            raise _kernel_error(what, exc) from exc

    def _links(self) -> list[Any]:
        return self._call("list links", self._ipr.link, "dump")

    def _names(self) -> dict[int, str]:
        now = time.monotonic()
        if now - self._names_at >= 1.0:
            self._names_cache = {
                int(link["index"]): str(link.get("IFLA_IFNAME")) for link in self._links()
            }
            self._names_at = now
        return self._names_cache

    def _link(self, name: str) -> Any | None:
        for link in self._links():
            if link.get("IFLA_IFNAME") == name:
                return link
        return None

    def _index(self, device: str) -> int:
        for index, name in self._names().items():
            if name == device:
                return index
        self._names_at = -1.0  # maybe it is new: look again
        for index, name in self._names().items():
            if name == device:
                return index
        where = f" in network namespace {self.netns}" if self.netns else ""
        raise NotFound(f"device {device} does not exist{where}")


# --- addresses ------------------------------------------------------------------------------


class NetlinkAddresses(_Netlink):
    """VIPs as kernel addresses, added with IFA_PROTO = ADDRESS_PROTO (Linux >= 5.18) so the
    project can prove which addresses are its own and leaves every other one alone."""

    def __init__(self, netns: str | None = None) -> None:
        super().__init__(netns)
        self._proto_kept = False  # the kernel was seen to store IFA_PROTO

    def list(self) -> list[AddressEntry]:
        """Every address in the namespace; owned only where IFA_PROTO is ours."""
        names = self._names()
        out = []
        for msg in self._call("list addresses", self._ipr.addr, "dump"):
            index = int(msg["index"])
            out.append(
                AddressEntry(
                    names.get(index, f"if{index}"),
                    _local_address(msg),
                    int(msg["prefixlen"]),
                    msg.get("IFA_PROTO") == ADDRESS_PROTO,
                    _remaining(msg),
                )
            )
        return out

    def add(
        self, device: str, address: str, prefix_length: int, lifetime: int | None = None
    ) -> None:
        """Add with ADDRESS_PROTO (IPv6 with nodad); AlreadyExists if present.

        The kernel's identity of an address: IPv4 (local, prefix length) per device, so
        192.0.2.1/32 and 192.0.2.1/24 may coexist; IPv6 the address alone per device.

        With a `lifetime`, valid_lft = preferred_lft = lifetime (`ip addr add ... valid_lft N
        preferred_lft N`); if the address is there already and ours (same identity and prefix
        length) it is refreshed in place (RTM_NEWADDR with NLM_F_REPLACE, as `ip addr
        replace`): no delete, so connections to the VIP never see it go. A replace rewrites
        IFA_PROTO and the IPv6 flags too, so both are sent again; one that finds the address
        gone in the meantime (it ran out) adds it afresh."""
        ip = _parse_ip(address)
        _check_prefix(ip, prefix_length)
        _check_lifetime(lifetime)
        index = self._index(device)
        request: dict[str, Any] = {
            "index": index,
            "address": str(ip),
            "prefixlen": prefix_length,
            "proto": ADDRESS_PROTO,
        }
        if ip.version == 6:
            request["flags"] = IFA_F_NODAD
        if lifetime is not None:
            request["valid_lft"] = request["preferred_lft"] = lifetime
        what = f"add {ip}/{prefix_length} dev {device}"
        if lifetime is not None and self._ours_already(index, ip, prefix_length, what):
            self._call(
                f"refresh {ip}/{prefix_length} dev {device}", self._ipr.addr, "replace", **request
            )
            return
        self._call(what, self._ipr.addr, "add", **request)
        if not self._proto_kept:
            self._check_proto_kept(index, ip, prefix_length, what)

    def _ours_already(
        self,
        index: int,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        prefix_length: int,
        what: str,
    ) -> bool:
        """Whether the address (by the kernel's identity) is on the device and ours, so a
        refresh may replace it; AlreadyExists when it is there but foreign, or (IPv6) ours
        with another prefix length, since a replace would rewrite someone else's address
        (the kernel would then delete it when the lifetime ran out). False when absent: the
        plain add then refuses whatever appears in between."""
        for msg in self._call("list addresses", self._ipr.addr, "dump"):
            if int(msg["index"]) != index or ipaddress.ip_address(_local_address(msg)) != ip:
                continue
            have = int(msg["prefixlen"])
            if ip.version == 4 and have != prefix_length:
                continue
            if msg.get("IFA_PROTO") != ADDRESS_PROTO:
                raise AlreadyExists(
                    f"{what}: the address there is not ours (IFA_PROTO "
                    f"{msg.get('IFA_PROTO', 0)}, ours is {ADDRESS_PROTO}); left alone"
                )
            if have != prefix_length:
                raise AlreadyExists(f"{what}: ours is there as {ip}/{have}")
            return True
        return False

    def _check_proto_kept(
        self,
        index: int,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        prefix_length: int,
        what: str,
    ) -> None:
        """Before 5.18 the kernel accepts IFA_PROTO and drops it: the address would be added but
        never provably ours, so it could never be removed again. Check once, on the first add,
        and take such an address back at once (it did not exist: the add was not EEXIST)."""
        for msg in self._call("list addresses", self._ipr.addr, "dump"):
            if (
                int(msg["index"]) == index
                and int(msg["prefixlen"]) == prefix_length
                and ipaddress.ip_address(_local_address(msg)) == ip
            ):
                if msg.get("IFA_PROTO") == ADDRESS_PROTO:
                    self._proto_kept = True
                    return
                request = {"index": index, "address": str(ip), "prefixlen": prefix_length}
                self._call(f"undo {what}", self._ipr.addr, "del", **request)
                raise KernelUnavailable(
                    f"{what}: this kernel ({os.uname().release}) does not keep IFA_PROTO "
                    "(Linux >= 5.18 does), so the project could not prove the address is its "
                    "own; not added"
                )

    def delete(self, device: str, address: str, prefix_length: int) -> None:
        """Delete one of ours. NotFound when it is absent, and also when the address there is
        not ours: a foreign address is never removed, whoever asks."""
        ip = _parse_ip(address)
        index = self._index(device)
        what = f"delete {ip}/{prefix_length} dev {device}"
        on_device = [
            m
            for m in self._call("list addresses", self._ipr.addr, "dump")
            if int(m["index"]) == index
        ]
        target = next(
            (
                m
                for m in on_device
                if int(m["prefixlen"]) == prefix_length
                and ipaddress.ip_address(_local_address(m)) == ip
            ),
            None,
        )
        if target is None:
            raise NotFound(f"{what}: not on the device")
        if target.get("IFA_PROTO") != ADDRESS_PROTO:
            raise NotFound(
                f"{what}: the address there is not ours (IFA_PROTO "
                f"{target.get('IFA_PROTO', 0)}, ours is {ADDRESS_PROTO}); left alone"
            )
        if ip.version == 4:
            self._refuse_secondary_flush(device, ip, prefix_length, target, on_device, what)
        request = {"index": index, "address": str(ip), "prefixlen": prefix_length}
        self._call(what, self._ipr.addr, "del", **request)

    def _refuse_secondary_flush(
        self,
        device: str,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        prefix_length: int,
        target: Any,
        on_device: Sequence[Any],
        what: str,
    ) -> None:
        """Deleting a primary IPv4 address also deletes the secondaries of its subnet unless
        promote_secondaries is set: refuse rather than take foreign addresses with ours.
        (A /32 VIP has no secondaries: only an identical /32 could be one, and that is EEXIST.)
        """
        if _flags(target) & IFA_F_SECONDARY:
            return
        subnet = ipaddress.ip_network(f"{ip}/{prefix_length}", strict=False)
        victims = [
            f"{_local_address(m)}/{m['prefixlen']}"
            for m in on_device
            if m is not target
            and _flags(m) & IFA_F_SECONDARY
            and int(m["prefixlen"]) == prefix_length
            and ipaddress.ip_address(_local_address(m)) in subnet
        ]
        if not victims:
            return
        sysctls = ProcSysctls(self.netns)
        conf = device.replace(".", "/")
        if "1" in (
            sysctls.get("net.ipv4.conf.all.promote_secondaries"),
            sysctls.get(f"net.ipv4.conf.{conf}.promote_secondaries"),
        ):
            return
        raise KernelError(
            f"{what}: refused, the kernel would also delete the secondary addresses "
            f"{', '.join(victims)} (net.ipv4.conf.{conf}.promote_secondaries is 0)"
        )

    def link_up(self, device: str) -> bool:
        link = self._link(device)
        if link is None:
            where = f" in network namespace {self.netns}" if self.netns else ""
            raise NotFound(f"device {device} does not exist{where}")
        flags = int(link["flags"])
        return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)

    def route_device(self, address: str) -> str | None:
        """The device of the route toward `address` (`ip route get`); for a local address the
        device that holds it (`ip route get fibmatch`), not `lo`, so the answer does not change
        once the VIP has been added there. None when there is no route."""
        ip = _parse_ip(address)
        try:
            (msg,) = list(self._ipr.route("get", dst=str(ip)))
            if msg["type"] == RTN_LOCAL:
                (msg,) = list(self._ipr.route("get", dst=str(ip), flags=RTM_F_FIB_MATCH))
        except NetlinkError as exc:
            code = _errno_of(exc)
            if code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL):
                return None  # no route, unreachable, prohibit, blackhole
            raise _kernel_error(f"route get {ip}", exc) from exc
        oif = msg.get("RTA_OIF")
        return self._names().get(int(oif)) if oif else None


def _local_address(msg: Any) -> str:
    """IFA_LOCAL is the address itself (IFA_ADDRESS is the peer on point-to-point links);
    IPv6 sends IFA_LOCAL only when a peer is set."""
    raw = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    return str(ipaddress.ip_address(raw))


def _flags(msg: Any) -> int:
    return int(msg.get("IFA_FLAGS") or msg["flags"])


INFINITY_LIFE_TIME = 0xFFFFFFFF


def _remaining(msg: Any) -> int | None:
    """IFA_CACHEINFO ifa_valid: the valid lifetime last set minus the whole seconds since
    (both families), 0xFFFFFFFF for forever."""
    cacheinfo = msg.get("IFA_CACHEINFO")
    if cacheinfo is None:
        return None
    valid = int(cacheinfo["ifa_valid"])
    return None if valid == INFINITY_LIFE_TIME else valid


def _check_lifetime(lifetime: int | None) -> None:
    """The kernel refuses a valid lifetime of 0 (EINVAL) and reads 0xFFFFFFFF as forever."""
    if lifetime is not None and not 1 <= lifetime <= MAX_ADDRESS_LIFETIME:
        raise InvalidArgument(
            f"address lifetime {lifetime} is out of range (1..{MAX_ADDRESS_LIFETIME} seconds)"
        )


# --- sysctls --------------------------------------------------------------------------------

# key prefix, module, a path under /proc/sys that exists once the module is loaded
_SYSCTL_MODULES = (
    ("net.ipv4.vs.", "ip_vs", "net/ipv4/vs"),
    ("net.netfilter.nf_conntrack_", "nf_conntrack", "net/netfilter/nf_conntrack_max"),
    ("net.bridge.bridge-nf-", "br_netfilter", "net/bridge"),
    ("net.ipv6.", "ipv6", "net/ipv6"),
)
_TUNNEL_MODULES = {"tunl0": "ipip", "gre0": "ip_gre", "ip6tnl0": "ip6_tunnel", "ip6gre0": "ip6_gre"}


PROC_SYS = Path("/proc/sys")


class ProcSysctls:
    """Dotted keys (net.ipv4.ip_forward) read and written under /proc/sys, from inside the
    namespace: the net.* tree there belongs to the namespace of whoever looks it up.

    `root` is where that tree is mounted. In a container that is not privileged /proc/sys is
    read-only, so the Helm chart mounts the host's /proc/sys/net (a hostPath, as Cilium does)
    at /host/proc/sys/net and the agent gets `--proc-sys /host/proc/sys`. A bind mount of
    /proc/sys/net still resolves names in the looking task's network namespace, which is why
    the path is opened after entering `netns`, whatever the root."""

    def __init__(self, netns: str | None = None, root: Path = PROC_SYS) -> None:
        self.netns = netns
        self.root = Path(root)
        with entered(netns):  # fail now, not at the first get, if it does not exist
            pass

    def get(self, key: str) -> str | None:
        """The value with runs of whitespace as one space (`ip_local_port_range` reads back
        "32768\\t60999"), or None when the key does not exist."""
        path = _sysctl_path(key, self.root)
        with entered(self.netns):
            try:
                text = path.read_text()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise _kernel_error(f"read sysctl {key}", exc) from exc
        return " ".join(text.split())

    def set(self, key: str, value: str) -> None:
        """Write it; NotFound (naming the module or device that would provide the key) if the
        key does not exist, InvalidArgument if the kernel rejects the value."""
        path = _sysctl_path(key, self.root)
        with entered(self.netns):
            try:
                fd = os.open(path, os.O_WRONLY)  # no O_CREAT: /proc/sys has what it has
            except FileNotFoundError as exc:
                raise NotFound(_missing_sysctl(key, self.root)) from exc
            except OSError as exc:
                if exc.errno == errno.EROFS:
                    raise PermissionDenied(_read_only_sysctl(key, path, self.root)) from exc
                raise _kernel_error(f"open sysctl {key}", exc) from exc
            try:
                os.write(fd, f"{value}\n".encode())
            except OSError as exc:
                raise _kernel_error(f"sysctl {key}={value}", exc) from exc
            finally:
                os.close(fd)


def _sysctl_path(key: str, root: Path = PROC_SYS) -> Path:
    """net.ipv4.conf.eth0/100.rp_filter -> /proc/sys/net/ipv4/conf/eth0.100/rp_filter (as in
    sysctl(8), a '/' in a dotted key stands for a '.' in a device name), under `root`."""
    parts = [p.replace("/", ".") for p in key.split(".")]
    if not key or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"{key!r} is not a sysctl key")
    return Path(root, *parts)


def _read_only_sysctl(key: str, path: Path, root: Path) -> str:
    """EROFS: the usual cause is a container, whose /proc/sys is mounted read-only."""
    chart = (
        "the Helm chart mounts the host's /proc/sys/net read-write at /host/proc/sys/net "
        "(a hostPath)"
    )
    if Path(root) == PROC_SYS:
        advice = f"{chart}; start lvs-agent with --proc-sys /host/proc/sys"
    else:
        advice = f"--proc-sys {root} is mounted read-only; {chart}"
    return (
        f"sysctl {key}: {path} is on a read-only file system (as /proc/sys is in a container "
        f"that is not privileged): {advice}"
    )


def _missing_sysctl(key: str, root: Path = PROC_SYS) -> str:
    """Why a key is missing, as far as its name tells."""
    parts = key.split(".")
    top = Path(root, parts[0])
    if Path(root) != PROC_SYS and not top.is_dir():  # a wrong --proc-sys, or no hostPath
        return (
            f"sysctl {key} does not exist: there is no {top} (is the host's /proc/sys/"
            f"{parts[0]} mounted under {root}? see --proc-sys)"
        )
    if len(parts) >= 5 and parts[0] == "net" and parts[2] == "conf":
        device = parts[3].replace("/", ".")
        if (
            device not in ("all", "default")
            and not Path(root, parts[0], parts[1], "conf", device).exists()
        ):
            module = _TUNNEL_MODULES.get(device)
            made_by = f" (made by the {module} module's tunnel device)" if module else ""
            return f"sysctl {key} does not exist: no device {device} here{made_by}"
    for prefix, module, probe in _SYSCTL_MODULES:
        if key.startswith(prefix) and not Path(root, probe).exists():
            return (
                f"sysctl {key} does not exist: it comes from the {module} module, "
                "which is not loaded"
            )
    return f"sysctl {key} does not exist in this kernel"


# --- tunnels --------------------------------------------------------------------------------


class _Fallback(NamedTuple):
    kind: str  # rtnetlink link kind (IFLA_INFO_KIND), also the module alias rtnl-link-<kind>
    module: str
    family: int  # the family a GUE port for it listens on
    gue: bool  # GUE (fou) can carry its packets: IPVS --tun-type gue is IP-in-IP in UDP


_FALLBACKS = {
    "tunl0": _Fallback("ipip", "ipip", socket.AF_INET, True),
    "gre0": _Fallback("gre", "ip_gre", socket.AF_INET, False),
    "ip6tnl0": _Fallback("ip6tnl", "ip6_tunnel", socket.AF_INET6, True),
    "ip6gre0": _Fallback("ip6gre", "ip6_gre", socket.AF_INET6, False),
}

FOU_GENL_NAME = "fou"
FOU_CMD_ADD, FOU_CMD_DEL, FOU_CMD_GET = 1, 2, 3
FOU_ENCAP_GUE = 2


class _FouMsg(genlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    """include/uapi/linux/fou.h; pyroute2 0.9.7 has no FOU support of its own."""

    prefix = "FOU_ATTR_"
    nla_map = (
        ("FOU_ATTR_UNSPEC", "none"),
        ("FOU_ATTR_PORT", "be16"),
        ("FOU_ATTR_AF", "uint8"),
        ("FOU_ATTR_IPPROTO", "uint8"),
        ("FOU_ATTR_TYPE", "uint8"),
        ("FOU_ATTR_REMCSUM_NOPARTIAL", "flag"),
        ("FOU_ATTR_LOCAL_V4", "ip4addr"),
        ("FOU_ATTR_LOCAL_V6", "ip6addr"),
        ("FOU_ATTR_PEER_V4", "ip4addr"),
        ("FOU_ATTR_PEER_V6", "ip6addr"),
        ("FOU_ATTR_PEER_PORT", "be16"),
        ("FOU_ATTR_IFINDEX", "int32"),
    )


def _fallback(device: TunnelDevice) -> _Fallback:
    spec = _FALLBACKS.get(device.name)
    if spec is None or spec.kind != device.kind:
        known = ", ".join(f"{n} ({s.kind})" for n, s in _FALLBACKS.items())
        raise InvalidArgument(
            f"tunnel {device.name} ({device.kind}) is not a kernel fallback device: {known}"
        )
    if device.fou_port and not spec.gue:
        raise InvalidArgument(f"tunnel {device.name}: a GUE port needs ipip or ip6tnl")
    if not 0 <= device.fou_port <= 0xFFFF:
        raise InvalidArgument(f"tunnel {device.name}: port {device.fou_port} is out of range")
    return spec


class NetlinkTunnels(_Netlink):
    """The kernel's fallback receive devices (tunl0, gre0, ip6tnl0, ip6gre0) up, and GUE ports.

    The agent has NET_ADMIN but not SYS_MODULE, so it never runs modprobe: asking rtnetlink for
    a link of an unknown kind makes the kernel itself call request_module("rtnl-link-<kind>")
    (every tunnel driver declares that alias). fou is the exception: resolving its generic
    netlink family would request "net-pf-16-proto-16-family-fou", but fou declares no such
    alias (checked on Debian 6.1), so GUE needs fou loaded on the node. Loading ipip creates
    tunl0 in every namespace (unless net.core.fb_tunnels_only_for_init_net says otherwise, in
    which case the add below creates a key-less, address-less device of that name, which
    receives the same packets)."""

    def __init__(self, netns: str | None = None) -> None:
        super().__init__(netns)
        self._fou: Any | None = None
        self._ensured_port: dict[str, int] = {}  # name -> fou port last ensured by this process

    def close(self) -> None:
        """Release the sockets."""
        if self._fou is not None:
            self._fou.close()
            self._fou = None
        super().close()

    def list_up(self) -> list[TunnelDevice]:
        """Fallback devices that are up, with a GUE port of their family. fou ports carry no
        owner: a device reports the port this adapter last ensured for it while that is still
        there (0 included), else the lowest GUE port of its family; gre devices never have one.
        """
        ports = self._gue_ports(load=False)
        out = []
        for link in self._links():
            name = link.get("IFLA_IFNAME")
            spec = _FALLBACKS.get(name)
            if spec is None or not link["flags"] & IFF_UP or _kind(link) != spec.kind:
                continue
            port = 0
            if spec.gue:
                have = ports.get(spec.family, [])
                mine = self._ensured_port.get(name)
                port = (
                    mine
                    if mine is not None and (mine == 0 or mine in have)
                    else min(have, default=0)
                )
            out.append(TunnelDevice(name, spec.kind, port))
        return sorted(out)

    def ensure(self, device: TunnelDevice) -> None:
        """Make the device exist and be up, and its GUE port (if any) listen; idempotent."""
        spec = _fallback(device)
        index = self._ensure_link(device, spec)
        self._call(f"set {device.name} up", self._ipr.link, "set", index=index, state="up")
        if device.fou_port and device.fou_port not in self._gue_ports(load=True).get(
            spec.family, []
        ):
            self._fou_request(FOU_CMD_ADD, device.fou_port, spec.family, device.name)
        self._ensured_port[device.name] = device.fou_port

    def release(self, device: TunnelDevice) -> None:
        """Drop its GUE port and set it down (fallback devices cannot be deleted); absent is
        fine. Never loads a module."""
        spec = _fallback(device)
        self._ensured_port.pop(device.name, None)
        if device.fou_port and device.fou_port in self._gue_ports(load=False).get(spec.family, []):
            self._fou_request(FOU_CMD_DEL, device.fou_port, spec.family, device.name)
        link = self._link(device.name)
        if link is not None and link["flags"] & IFF_UP:
            self._call(
                f"set {device.name} down", self._ipr.link, "set", index=link["index"], state="down"
            )

    def _ensure_link(self, device: TunnelDevice, spec: _Fallback) -> int:
        link = self._link(device.name)
        if link is None:
            try:
                # Loads the module if needed; its per-namespace init then creates the fallback
                # device and this add fails with EEXIST. Where fallbacks are disabled it
                # creates a device of that name instead.
                self._ipr.link("add", ifname=device.name, kind=spec.kind)
            except NetlinkError as exc:
                if _errno_of(exc) == errno.EOPNOTSUPP:
                    raise KernelUnavailable(
                        f"cannot make {device.name}: this kernel has no {spec.kind} tunnels "
                        f"(the {spec.module} module is missing; rtnetlink's "
                        f"request_module(rtnl-link-{spec.kind}) found nothing)"
                    ) from exc
                if _errno_of(exc) != errno.EEXIST:
                    raise _kernel_error(f"add {device.name} ({spec.kind})", exc) from exc
            link = self._link(device.name)
            if link is None:
                raise KernelUnavailable(f"{device.name} did not appear after loading {spec.module}")
        if _kind(link) != spec.kind:
            raise AlreadyExists(
                f"{device.name} exists but is a {_kind(link) or 'plain'} device, not {spec.kind}"
            )
        return int(link["index"])

    # fou (generic netlink) -----------------------------------------------------------------

    def _fou_socket(self, load: bool) -> Any | None:
        """The "fou" generic netlink socket; with load=False None when fou is not loaded
        (resolving the family by name would load it, and list/release must not)."""
        if self._fou is not None:
            return self._fou
        with entered(self.netns):
            if not load and FOU_GENL_NAME not in _genl_families():
                return None
            sock = GenericNetlinkSocket()
            sock.asyncore.module_err_level = "debug"  # a missing fou is reported below
            try:
                sock.bind(FOU_GENL_NAME, _FouMsg)
            except NetlinkError as exc:
                sock.close()
                if _errno_of(exc) == errno.ENOENT:
                    raise KernelUnavailable(
                        "GUE needs the fou module, which is not loaded, and the kernel does "
                        "not load it on request (fou declares no module alias, unlike the "
                        "tunnel drivers): load it on the node (modprobe fou, or list it in "
                        "/etc/modules-load.d/)"
                    ) from exc
                raise _kernel_error("resolve generic netlink family fou", exc) from exc
        self._fou = sock
        return sock

    def _gue_ports(self, load: bool) -> dict[int, list[int]]:
        """{address family: sorted GUE ports} in this namespace."""
        sock = self._fou_socket(load)
        if sock is None:
            return {}
        msg = _FouMsg()
        msg["cmd"] = FOU_CMD_GET
        msg["version"] = 1
        try:
            replies = list(
                sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
            )
        except NetlinkError as exc:
            raise _kernel_error("list fou ports", exc) from exc
        out: dict[int, list[int]] = {}
        for reply in replies:
            if reply.get("FOU_ATTR_TYPE") == FOU_ENCAP_GUE:
                family = int(reply.get("FOU_ATTR_AF") or socket.AF_INET)
                out.setdefault(family, []).append(int(reply.get("FOU_ATTR_PORT")))
        return {family: sorted(ports) for family, ports in out.items()}

    def _fou_request(self, cmd: int, port: int, family: int, name: str) -> None:
        sock = self._fou_socket(load=True)
        assert sock is not None
        msg = _FouMsg()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = [
            ("FOU_ATTR_PORT", port),
            ("FOU_ATTR_AF", family),
            ("FOU_ATTR_TYPE", FOU_ENCAP_GUE),
        ]
        verb = "add" if cmd == FOU_CMD_ADD else "del"
        inet = "-6 " if family == socket.AF_INET6 else ""
        what = f"{name}: ip fou {verb} port {port} gue {inet}".rstrip()
        try:
            list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        except NetlinkError as exc:
            if _errno_of(exc) == errno.EADDRINUSE:
                raise AlreadyExists(f"{what}: UDP port {port} is taken by another socket") from exc
            raise _kernel_error(what, exc) from exc


def _kind(link: Any) -> str | None:
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind is not None else None


def _genl_families() -> set[str]:
    """Names of the generic netlink families registered now (a dump loads nothing)."""
    sock = GenericNetlinkSocket()
    try:
        sock.marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        replies = sock.nlm_request(msg, msg_type=GENL_ID_CTRL, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
        return {str(r.get("CTRL_ATTR_FAMILY_NAME")) for r in replies}
    except NetlinkError as exc:
        raise _kernel_error("list generic netlink families", exc) from exc
    finally:
        sock.close()
