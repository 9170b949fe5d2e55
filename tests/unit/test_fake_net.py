"""The address, sysctl and tunnel contracts against the in-memory fakes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lvs_operator.compiler.plan import TunnelDevice
from lvs_operator.kernel.fake import FakeAddresses, FakeSysctls, FakeTunnels
from tests.contract.net_contract import AddressesContract, SysctlsContract, TunnelsContract

DEVICE = "eth0"


class TestFakeAddresses(AddressesContract):
    @pytest.fixture
    def fake(self) -> FakeAddresses:
        """Shaped like the kernel tier's namespace: lo, eth0 with 198.18.0.2/24 + default."""
        fake = FakeAddresses(route_device=DEVICE, devices=("lo", DEVICE))
        fake.add_foreign(DEVICE, "198.18.0.2", 24)
        return fake

    @pytest.fixture
    def addresses(self, fake: FakeAddresses) -> FakeAddresses:
        return fake

    @pytest.fixture
    def device(self) -> str:
        return DEVICE

    @pytest.fixture
    def add_foreign_address(self, fake: FakeAddresses) -> Callable[[str, str, int], None]:
        return fake.add_foreign


class TestFakeSysctls(SysctlsContract):
    @pytest.fixture
    def sysctls(self) -> FakeSysctls:
        return FakeSysctls({"net.ipv4.ip_forward": "0", "net.ipv4.conf.lo.arp_ignore": "0"})


FALLBACKS = [
    TunnelDevice("tunl0", "ipip"),
    TunnelDevice("gre0", "gre"),
    TunnelDevice("ip6tnl0", "ip6tnl"),
    TunnelDevice("ip6gre0", "ip6gre"),
]


class TestFakeTunnels(TunnelsContract):
    @pytest.fixture
    def tunnels(self) -> FakeTunnels:
        return FakeTunnels()

    @pytest.fixture(params=FALLBACKS, ids=lambda t: t.name)
    def tunnel(self, request: pytest.FixtureRequest) -> TunnelDevice:
        return request.param

    @pytest.fixture(params=[FALLBACKS[0]._replace(fou_port=5555),
                            FALLBACKS[2]._replace(fou_port=5556)], ids=lambda t: t.name)
    def gue_tunnel(self, request: pytest.FixtureRequest) -> TunnelDevice:
        return request.param


def test_fake_addresses_without_a_device_list_accept_any_device() -> None:
    """Unit tests that do not care about devices keep working as before."""
    fake = FakeAddresses("eth0")
    fake.add("bond0.100", "192.0.2.10", 32)
    assert fake.route_device("192.0.2.10") == "bond0.100"
    assert fake.route_device("192.0.2.99") == "eth0"
