"""The address and sysctl contracts against the real adapters on the host kernel, each test in
a fresh network namespace (`netns` in tests/kernel/conftest.py), plus what only a real kernel
shows. `netns_device` below gives the namespace an ordinary device:

    eth0 (dummy; a veth end where the kernel has no dummy driver, as on this host)
         198.18.0.2/24, default via 198.18.0.1 (never resolved: nothing is sent)

Tunnels: this host's kernel has no tunnel modules at all (no ipip, ip_gre, ip6_tunnel, fou), so
their contract runs in the VM (tests/vm/test_real_tunnels.py); here only the "module missing"
answer is checked.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lvs_operator.compiler.plan import TunnelDevice
from lvs_operator.kernel.errors import InvalidArgument, KernelError, KernelUnavailable, NotFound
from lvs_operator.kernel.netstate import ADDRESS_PROTO, AddressEntry
from lvs_operator.kernel.real_net import NetlinkAddresses, NetlinkTunnels, ProcSysctls
from tests.contract.net_contract import AddressesContract, SysctlsContract


def ip(netns: str, *argv: str) -> str:
    """iproute2 inside `netns`: changes made "by other means" than the adapters."""
    return subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True,
                          text=True, timeout=30).stdout


NETNS_DEVICE = "eth0"


@pytest.fixture
def netns_device(netns: str) -> str:
    """The ordinary device in `netns` (see the module docstring); goes with the namespace."""
    try:
        ip(netns, "link", "add", NETNS_DEVICE, "type", "dummy")
    except subprocess.CalledProcessError:  # no CONFIG_DUMMY on this host's kernel
        ip(netns, "link", "add", NETNS_DEVICE, "type", "veth", "peer", "name", "eth0-peer")
        ip(netns, "link", "set", "eth0-peer", "up")
    ip(netns, "addr", "add", "198.18.0.2/24", "dev", NETNS_DEVICE)
    ip(netns, "link", "set", NETNS_DEVICE, "up")
    ip(netns, "route", "add", "default", "via", "198.18.0.1", "dev", NETNS_DEVICE)
    return NETNS_DEVICE


def add_foreign(netns: str) -> Callable[[str, str, int], None]:
    def add(device: str, address: str, prefix_length: int) -> None:
        extra = ["nodad"] if ":" in address else []
        ip(netns, "addr", "add", f"{address}/{prefix_length}", "dev", device, *extra)
    return add


class TestNetlinkAddresses(AddressesContract):
    @pytest.fixture
    def addresses(self, netns: str, netns_device: str) -> Iterator[NetlinkAddresses]:
        with NetlinkAddresses(netns) as adapter:
            yield adapter

    @pytest.fixture
    def device(self, netns_device: str) -> str:
        return netns_device

    @pytest.fixture
    def add_foreign_address(self, netns: str) -> Callable[[str, str, int], None]:
        return add_foreign(netns)


class TestProcSysctls(SysctlsContract):
    @pytest.fixture
    def sysctls(self, netns: str) -> ProcSysctls:
        return ProcSysctls(netns)


# --- what only the real kernel shows ------------------------------------------------------


def test_ownership_is_in_the_kernel_not_in_the_process(netns: str, netns_device: str) -> None:
    """A restarted agent still proves which addresses are its own: IFA_PROTO is kernel state."""
    with NetlinkAddresses(netns) as first:
        first.add(netns_device, "203.0.113.10", 32)
    with NetlinkAddresses(netns) as second:
        assert AddressEntry(netns_device, "203.0.113.10", 32, True) in second.list()
    assert "203.0.113.10/32 scope global" in ip(netns, "addr", "show", "dev", netns_device)


class _ForgetfulIPRoute:
    """An rtnetlink socket that drops IFA_PROTO on the way, like a kernel before 5.18."""

    def __init__(self, ipr: object) -> None:
        self._ipr = ipr

    def addr(self, command: str, **kwargs: object) -> object:
        kwargs.pop("proto", None)
        return self._ipr.addr(command, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._ipr, name)


def test_a_kernel_that_drops_ifa_proto_gets_no_unprovable_address(netns: str,
                                                                 netns_device: str) -> None:
    with NetlinkAddresses(netns) as addresses:
        addresses._ipr = _ForgetfulIPRoute(addresses._ipr)
        with pytest.raises(KernelUnavailable, match="IFA_PROTO"):
            addresses.add(netns_device, "203.0.113.10", 32)
        assert "203.0.113.10" not in {a.address for a in addresses.list()}


def test_an_address_with_another_projects_proto_is_not_owned(netns: str,
                                                            netns_device: str) -> None:
    from pyroute2 import IPRoute

    ipr = IPRoute(netns=netns)
    try:
        (index,) = ipr.link_lookup(ifname=netns_device)
        ipr.addr("add", index=index, address="203.0.113.20", prefixlen=32, proto=0x10)
        ipr.addr("add", index=index, address="203.0.113.21", prefixlen=32, proto=ADDRESS_PROTO)
    finally:
        ipr.close()
    with NetlinkAddresses(netns) as addresses:
        live = {(a.address, a.owned) for a in addresses.list()}
        assert ("203.0.113.20", False) in live
        assert ("203.0.113.21", True) in live  # the proto is the proof, whoever set it
        with pytest.raises(NotFound):
            addresses.delete(netns_device, "203.0.113.20", 32)


def test_ipv6_vip_is_usable_at_once(netns: str, netns_device: str) -> None:
    """nodad: no tentative phase, so a server can bind the VIP straight after the add."""
    from pyroute2 import netns as pyroute2_netns

    with NetlinkAddresses(netns) as addresses:
        addresses.add(netns_device, "2001:db8::10", 128)
        addresses.add("lo", "2001:db8::11", 128)
    vips = [line for line in ip(netns, "-6", "addr", "show").splitlines() if "2001:db8" in line]
    assert len(vips) == 2 and all("nodad" in v and "tentative" not in v for v in vips), vips
    pyroute2_netns.pushns(netns)
    try:
        for address in ("2001:db8::10", "2001:db8::11"):
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                sock.bind((address, 0))
    finally:
        pyroute2_netns.popns()


def test_route_device_without_a_route_is_none(netns: str, netns_device: str) -> None:
    ip(netns, "route", "add", "blackhole", "192.0.2.0/24")
    ip(netns, "route", "add", "unreachable", "198.51.100.0/24")
    ip(netns, "route", "add", "prohibit", "203.0.113.0/24")
    with NetlinkAddresses(netns) as addresses:
        assert addresses.route_device("2001:db8::99") is None  # no IPv6 route at all
        assert addresses.route_device("192.0.2.1") is None
        assert addresses.route_device("198.51.100.1") is None
        assert addresses.route_device("203.0.113.1") is None
        assert addresses.route_device("198.18.0.99") == "eth0"


def test_deleting_a_primary_refuses_to_take_foreign_secondaries(netns: str,
                                                               netns_device: str) -> None:
    """Without promote_secondaries the kernel deletes a primary's secondaries with it; a /24
    of ours that came first would take a foreign /24 in the same subnet along."""
    with NetlinkAddresses(netns) as addresses:
        addresses.add(netns_device, "203.0.113.10", 24)  # primary
        add_foreign(netns)(netns_device, "203.0.113.20", 24)  # secondary
        with pytest.raises(KernelError, match=re.escape("203.0.113.20/24")):
            addresses.delete(netns_device, "203.0.113.10", 24)
        assert AddressEntry(netns_device, "203.0.113.20", 24, False) in addresses.list()
        ProcSysctls(netns).set(f"net.ipv4.conf.{netns_device}.promote_secondaries", "1")
        addresses.delete(netns_device, "203.0.113.10", 24)
        live = addresses.list()
        assert AddressEntry(netns_device, "203.0.113.20", 24, False) in live
        assert all(a.address != "203.0.113.10" for a in live)


def test_a_missing_namespace_is_not_found_and_not_created() -> None:
    name = "lvs-test-does-not-exist"
    for make in (NetlinkAddresses, ProcSysctls, NetlinkTunnels):
        with pytest.raises(NotFound, match=name):
            make(name)
    assert not Path("/var/run/netns", name).exists()


def test_sysctls_stay_inside_the_namespace(netns: str) -> None:
    key = "net.ipv4.conf.lo.arp_announce"
    host, inside = ProcSysctls(), ProcSysctls(netns)
    before = host.get(key)
    inside.set(key, "2" if before != "2" else "1")
    assert inside.get(key) != before
    assert host.get(key) == before


def test_sysctl_values_read_back_with_single_spaces(netns: str) -> None:
    sysctls = ProcSysctls(netns)
    sysctls.set("net.ipv4.ip_local_port_range", "20000\t30000")
    assert sysctls.get("net.ipv4.ip_local_port_range") == "20000 30000"


def test_sysctl_keys_for_devices_with_dots(netns: str) -> None:
    ip(netns, "link", "add", "vip.7", "type", "veth", "peer", "name", "vip.8")
    sysctls = ProcSysctls(netns)
    sysctls.set("net.ipv4.conf.vip/7.rp_filter", "2")
    assert sysctls.get("net.ipv4.conf.vip/7.rp_filter") == "2"


def test_sysctl_rejected_value_is_invalid_argument(netns: str) -> None:
    with pytest.raises(InvalidArgument):
        ProcSysctls(netns).set("net.ipv4.conf.lo.arp_ignore", "banana")


def test_missing_sysctl_names_what_provides_it(netns: str) -> None:
    sysctls = ProcSysctls(netns)
    with pytest.raises(NotFound, match=r"tunl0.*ipip"):
        sysctls.set("net.ipv4.conf.tunl0.rp_filter", "0")
    if Path("/proc/sys/net/ipv4/vs").exists():
        pytest.skip("this kernel has ip_vs loaded; the VM tier checks the key is settable")
    with pytest.raises(NotFound, match="ip_vs module"):
        sysctls.set("net.ipv4.vs.expire_nodest_conn", "1")


def _host_has(module: str) -> bool:
    return Path("/sys/module", module).exists()


@pytest.mark.parametrize("device", [TunnelDevice("tunl0", "ipip"), TunnelDevice("gre0", "gre"),
                                    TunnelDevice("ip6tnl0", "ip6tnl"),
                                    TunnelDevice("ip6gre0", "ip6gre")], ids=lambda t: t.name)
def test_tunnel_without_its_module_is_kernel_unavailable(netns: str,
                                                        device: TunnelDevice) -> None:
    """This host's kernel has no tunnel drivers (and nothing to load); the VM tier has them."""
    module = {"ipip": "ipip", "gre": "ip_gre", "ip6tnl": "ip6_tunnel", "ip6gre": "ip6_gre"}
    if _host_has(module[device.kind]):
        pytest.skip(f"this kernel has {module[device.kind]}; see tests/vm/test_real_tunnels.py")
    with NetlinkTunnels(netns) as tunnels:
        assert tunnels.list_up() == []
        with pytest.raises(KernelUnavailable, match=module[device.kind]):
            tunnels.ensure(device)
        tunnels.release(device)  # nothing there: fine, and loads nothing
        assert tunnels.list_up() == []


def test_an_adapter_used_from_another_thread_still_acts_in_its_namespace(
        netns: str, netns_device: str) -> None:
    """pyroute2 keeps sockets per thread: the HA driver's thread must not reach the agent's
    own namespace through an adapter opened for the director's."""
    import threading

    seen: list[object] = []
    with NetlinkAddresses(netns) as addresses:
        def other_thread() -> None:
            try:
                addresses.add(netns_device, "203.0.113.30", 32, lifetime=30)
                seen.append(addresses.link_up(netns_device))
                seen.append({a.address for a in addresses.list()})
            except Exception as exc:  # reported below, in the test's thread
                seen.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(timeout=30)
        assert len(seen) == 2 and seen[0] is True, seen
        assert "203.0.113.30" in seen[1]  # type: ignore[operator]
        assert "203.0.113.30" in {a.address for a in addresses.list()}  # same namespace
