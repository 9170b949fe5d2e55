"""Contract suites for the Addresses, Sysctls and Tunnels adapters.

One suite per adapter, run against the in-memory fakes (tests/unit/test_fake_net.py), the real
adapters on the host kernel (tests/kernel/test_real_net.py) and, for what the host kernel lacks
(tunnel modules), inside the Debian VM (tests/vm/test_real_tunnels.py). A subclass provides the
fixtures each class names; the suites hold what the real kernel does, so a fake that passes
them does not let code rely on something the kernel would refuse.

Addresses are documentation/benchmark ranges only; nothing is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lvs_operator.compiler.plan import TunnelDevice
from lvs_operator.kernel.errors import AlreadyExists, InvalidArgument, NotFound
from lvs_operator.kernel.netstate import AddressEntry, Addresses, Sysctls, Tunnels

__all__ = ["AddressesContract", "SysctlsContract", "TunnelsContract"]

AddForeign = Callable[[str, str, int], None]
Elapse = Callable[[float], None]

VIP4, OTHER4 = "203.0.113.10", "203.0.113.11"
VIP6, OTHER6 = "2001:db8::10", "2001:db8::11"
MISSING_DEVICE = "nosuch0"
FAMILIES = [pytest.param(VIP4, 32, id="v4"), pytest.param(VIP6, 128, id="v6")]


def _keys(addresses: Addresses) -> dict[tuple[str, str, int], bool]:
    return {(a.device, a.address, a.prefix_length): a.owned for a in addresses.list()}


class AddressesContract:
    """Fixtures: `addresses` (the adapter), `device` (an ordinary device, not lo, that holds
    198.18.0.2/24 and the default route) and `add_foreign_address(device, address,
    prefix_length)`, which adds an address the way another program would (no IFA_PROTO).
    `elapse(seconds)` lets time pass for the adapter's lifetimes: it sleeps unless a subclass
    whose adapter runs on a fake clock overrides it to advance that clock."""

    @pytest.fixture
    def elapse(self) -> Elapse:
        return time.sleep

    @pytest.mark.parametrize("on_lo", [True, False], ids=["lo", "device"])
    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_add_list_delete_round_trip(
        self, addresses: Addresses, device: str, on_lo: bool, address: str, prefix_length: int
    ) -> None:
        dev = "lo" if on_lo else device
        addresses.add(dev, address, prefix_length)
        assert AddressEntry(dev, address, prefix_length, True) in addresses.list()
        addresses.delete(dev, address, prefix_length)
        assert (dev, address, prefix_length) not in _keys(addresses)

    def test_owned_only_for_what_we_added(
        self, addresses: Addresses, device: str, add_foreign_address: AddForeign
    ) -> None:
        addresses.add(device, VIP4, 32)
        addresses.add("lo", VIP6, 128)
        add_foreign_address(device, OTHER4, 32)
        add_foreign_address("lo", OTHER6, 128)
        live = _keys(addresses)
        assert live[(device, VIP4, 32)] is True
        assert live[("lo", VIP6, 128)] is True
        assert live[(device, OTHER4, 32)] is False
        assert live[("lo", OTHER6, 128)] is False
        assert live[(device, "198.18.0.2", 24)] is False

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_second_add_already_exists(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        addresses.add(device, address, prefix_length)
        with pytest.raises(AlreadyExists):
            addresses.add(device, address, prefix_length)

    def test_adding_over_a_foreign_address_already_exists_and_leaves_it_foreign(
        self, addresses: Addresses, device: str, add_foreign_address: AddForeign
    ) -> None:
        add_foreign_address(device, VIP4, 32)
        with pytest.raises(AlreadyExists):
            addresses.add(device, VIP4, 32)
        assert _keys(addresses)[(device, VIP4, 32)] is False

    def test_ipv6_identity_is_the_address_alone(self, addresses: Addresses, device: str) -> None:
        addresses.add(device, VIP6, 128)
        with pytest.raises(AlreadyExists):
            addresses.add(device, VIP6, 64)

    def test_ipv4_same_address_with_another_prefix_is_another_address(
        self, addresses: Addresses, device: str
    ) -> None:
        addresses.add(device, VIP4, 32)
        addresses.add(device, VIP4, 24)
        live = _keys(addresses)
        assert live[(device, VIP4, 32)] and live[(device, VIP4, 24)]
        addresses.delete(device, VIP4, 24)
        assert (device, VIP4, 32) in _keys(addresses)

    def test_ipv6_text_is_canonical(self, addresses: Addresses, device: str) -> None:
        addresses.add(device, "2001:DB8:0:0::0010", 128)
        assert AddressEntry(device, VIP6, 128, True) in addresses.list()
        addresses.delete(device, VIP6, 128)
        assert (device, VIP6, 128) not in _keys(addresses)

    @pytest.mark.parametrize(
        ("address", "prefix_length"),
        [("203.0.113.300", 32), ("vip", 32), (VIP4, 33), (VIP6, 129)],
    )
    def test_invalid_address_or_prefix(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        with pytest.raises(InvalidArgument):
            addresses.add(device, address, prefix_length)

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_add_to_a_missing_device_not_found(
        self, addresses: Addresses, address: str, prefix_length: int
    ) -> None:
        with pytest.raises(NotFound):
            addresses.add(MISSING_DEVICE, address, prefix_length)

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_delete_absent_not_found(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        with pytest.raises(NotFound):
            addresses.delete(device, address, prefix_length)
        with pytest.raises(NotFound):
            addresses.delete(MISSING_DEVICE, address, prefix_length)

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_delete_with_another_prefix_not_found(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        addresses.add(device, address, prefix_length)
        with pytest.raises(NotFound):
            addresses.delete(device, address, prefix_length - 8)
        assert (device, address, prefix_length) in _keys(addresses)

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_delete_of_a_foreign_address_not_found_and_kept(
        self,
        addresses: Addresses,
        device: str,
        add_foreign_address: AddForeign,
        address: str,
        prefix_length: int,
    ) -> None:
        add_foreign_address(device, address, prefix_length)
        with pytest.raises(NotFound):
            addresses.delete(device, address, prefix_length)
        assert _keys(addresses)[(device, address, prefix_length)] is False

    def test_deleting_ours_keeps_foreign_addresses_on_the_same_device(
        self, addresses: Addresses, device: str, add_foreign_address: AddForeign
    ) -> None:
        foreign = [
            (device, "203.0.113.1", 24),  # a subnet holding the VIP
            (device, OTHER4, 32),
            (device, OTHER6, 128),
            ("lo", "203.0.113.12", 32),
        ]
        for dev, address, prefix_length in foreign:
            add_foreign_address(dev, address, prefix_length)
        ours = [(device, VIP4, 32), (device, VIP6, 128), ("lo", "203.0.113.13", 32)]
        for dev, address, prefix_length in ours:
            addresses.add(dev, address, prefix_length)
        for dev, address, prefix_length in ours:
            addresses.delete(dev, address, prefix_length)
        live = _keys(addresses)
        assert all(live[key] is False for key in foreign), live
        assert not set(ours) & set(live)
        assert live[(device, "198.18.0.2", 24)] is False

    # --- lifetimes (an HA VIP's dead-man switch) ---------------------------------------------

    def test_forever_addresses_report_no_lifetime(
        self, addresses: Addresses, device: str, add_foreign_address: AddForeign
    ) -> None:
        addresses.add(device, VIP4, 32)
        addresses.add("lo", VIP6, 128)
        add_foreign_address(device, OTHER4, 32)
        live = {(a.device, a.address): a for a in addresses.list()}
        assert live[(device, VIP4)].lifetime is None
        assert live[("lo", VIP6)].lifetime is None
        assert live[(device, OTHER4)].lifetime is None
        assert live[(device, "198.18.0.2")].lifetime is None

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_add_with_a_lifetime_lists_it(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        addresses.add(device, address, prefix_length, lifetime=30)
        assert AddressEntry(device, address, prefix_length, True, 30) in addresses.list()
        addresses.delete(device, address, prefix_length)
        assert (device, address, prefix_length) not in _keys(addresses)

    def test_adding_ours_again_with_a_lifetime_refreshes_it(
        self, addresses: Addresses, device: str, elapse: Elapse
    ) -> None:
        ours = [(device, VIP4, 32), ("lo", VIP6, 128)]
        for dev, address, prefix_length in ours:
            addresses.add(dev, address, prefix_length, lifetime=3)
        elapse(1.5)
        lifetimes = {(a.device, a.address, a.prefix_length): a.lifetime for a in addresses.list()}
        assert all(lifetimes[key] in (1, 2) for key in ours), lifetimes
        for dev, address, prefix_length in ours:
            addresses.add(dev, address, prefix_length, lifetime=3)
        live = addresses.list()
        for dev, address, prefix_length in ours:
            assert AddressEntry(dev, address, prefix_length, True, 3) in live

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_a_lifetime_makes_a_forever_address_of_ours_expire(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        addresses.add(device, address, prefix_length)
        addresses.add(device, address, prefix_length, lifetime=30)
        assert AddressEntry(device, address, prefix_length, True, 30) in addresses.list()

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_adding_again_without_a_lifetime_still_already_exists(
        self, addresses: Addresses, device: str, address: str, prefix_length: int
    ) -> None:
        addresses.add(device, address, prefix_length, lifetime=30)
        with pytest.raises(AlreadyExists):
            addresses.add(device, address, prefix_length)
        assert AddressEntry(device, address, prefix_length, True, 30) in addresses.list()

    @pytest.mark.parametrize(("address", "prefix_length"), FAMILIES)
    def test_a_lifetime_never_refreshes_a_foreign_address(
        self,
        addresses: Addresses,
        device: str,
        add_foreign_address: AddForeign,
        address: str,
        prefix_length: int,
    ) -> None:
        """A replace would make it ours and let the kernel delete it when the lifetime ran out."""
        add_foreign_address(device, address, prefix_length)
        with pytest.raises(AlreadyExists):
            addresses.add(device, address, prefix_length, lifetime=30)
        assert AddressEntry(device, address, prefix_length, False) in addresses.list()

    def test_a_lifetime_does_not_refresh_ipv6_ours_under_another_prefix(
        self, addresses: Addresses, device: str
    ) -> None:
        addresses.add(device, VIP6, 128, lifetime=30)
        with pytest.raises(AlreadyExists):
            addresses.add(device, VIP6, 64, lifetime=30)
        assert AddressEntry(device, VIP6, 128, True, 30) in addresses.list()

    def test_ipv4_lifetime_belongs_to_one_prefix_length(
        self, addresses: Addresses, device: str
    ) -> None:
        addresses.add(device, VIP4, 32)
        addresses.add(device, VIP4, 24, lifetime=30)
        live = addresses.list()
        assert AddressEntry(device, VIP4, 32, True) in live
        assert AddressEntry(device, VIP4, 24, True, 30) in live

    def test_an_address_is_gone_when_its_lifetime_runs_out(
        self, addresses: Addresses, device: str, elapse: Elapse
    ) -> None:
        """Whatever the agent does meanwhile: the kernel deletes it (within about a second of
        the lifetime; bounded here at four)."""
        addresses.add(device, VIP4, 32, lifetime=1)
        addresses.add("lo", VIP6, 128, lifetime=1)
        addresses.add(device, OTHER4, 32)
        for _ in range(40):
            if not {VIP4, VIP6} & {a.address for a in addresses.list()}:
                break
            elapse(0.1)
        live = _keys(addresses)
        assert (device, VIP4, 32) not in live and ("lo", VIP6, 128) not in live, live
        assert live[(device, OTHER4, 32)] is True
        with pytest.raises(NotFound):
            addresses.delete(device, VIP4, 32)
        addresses.add(device, VIP4, 32, lifetime=1)  # and can be added afresh
        assert (device, VIP4, 32) in _keys(addresses)

    @pytest.mark.parametrize("lifetime", [0, -1, 0xFFFFFFFF])
    def test_lifetime_out_of_range(self, addresses: Addresses, device: str, lifetime: int) -> None:
        with pytest.raises(InvalidArgument):
            addresses.add(device, VIP4, 32, lifetime=lifetime)
        assert (device, VIP4, 32) not in _keys(addresses)

    def test_lo_is_up_with_a_carrier(self, addresses: Addresses) -> None:
        assert addresses.link_up("lo") is True

    def test_link_state_of_a_missing_device_not_found(self, addresses: Addresses) -> None:
        with pytest.raises(NotFound, match=MISSING_DEVICE):
            addresses.link_up(MISSING_DEVICE)

    @pytest.mark.parametrize("target", ["198.18.0.77", "192.0.2.55"], ids=["onlink", "gateway"])
    def test_route_device_of_a_routed_address(
        self, addresses: Addresses, device: str, target: str
    ) -> None:
        assert addresses.route_device(target) == device

    def test_route_device_of_a_local_address_is_the_device_holding_it(
        self, addresses: Addresses, device: str
    ) -> None:
        """Not `lo`: the answer must not change once the agent has added the VIP there."""
        addresses.add(device, VIP4, 32)
        addresses.add(device, VIP6, 128)
        addresses.add("lo", OTHER4, 32)
        addresses.add("lo", OTHER6, 128)
        assert addresses.route_device(VIP4) == device
        assert addresses.route_device(VIP6) == device
        assert addresses.route_device(OTHER4) == "lo"
        assert addresses.route_device(OTHER6) == "lo"


class SysctlsContract:
    """Fixture: `sysctls` (the adapter), where net.ipv4.ip_forward and
    net.ipv4.conf.lo.arp_ignore exist and no device nosuch0 does."""

    def test_get_existing_key(self, sysctls: Sysctls) -> None:
        assert sysctls.get("net.ipv4.ip_forward") in ("0", "1")

    def test_set_then_get(self, sysctls: Sysctls) -> None:
        key = "net.ipv4.conf.lo.arp_ignore"
        original = sysctls.get(key)
        assert original is not None
        for value in ("1", "2", original):
            sysctls.set(key, value)
            assert sysctls.get(key) == value

    @pytest.mark.parametrize(
        "key",
        ["net.ipv4.no_such_key", f"net.ipv4.conf.{MISSING_DEVICE}.rp_filter", "net.ipv4.vs.nope"],
    )
    def test_missing_key(self, sysctls: Sysctls, key: str) -> None:
        assert sysctls.get(key) is None
        with pytest.raises(NotFound):
            sysctls.set(key, "1")
        assert sysctls.get(key) is None


class TunnelsContract:
    """Fixtures: `tunnels` (the adapter, in a namespace where nothing is up yet), `tunnel` (a
    TunnelDevice this kernel can make) and `gue_tunnel` (one with a fou port)."""

    def test_nothing_is_up_at_first(self, tunnels: Tunnels, tunnel: TunnelDevice) -> None:
        assert tunnel.name not in {t.name for t in tunnels.list_up()}

    def test_ensure_is_idempotent_and_listed(self, tunnels: Tunnels, tunnel: TunnelDevice) -> None:
        tunnels.ensure(tunnel)
        tunnels.ensure(tunnel)
        assert [t for t in tunnels.list_up() if t.name == tunnel.name] == [tunnel]

    def test_release_sets_it_down_and_is_idempotent(
        self, tunnels: Tunnels, tunnel: TunnelDevice
    ) -> None:
        tunnels.ensure(tunnel)
        tunnels.release(tunnel)
        assert tunnel.name not in {t.name for t in tunnels.list_up()}
        tunnels.release(tunnel)
        tunnels.ensure(tunnel)
        assert tunnel in tunnels.list_up()

    def test_release_of_what_was_never_ensured_is_fine(
        self, tunnels: Tunnels, tunnel: TunnelDevice
    ) -> None:
        tunnels.release(tunnel)
        assert tunnel.name not in {t.name for t in tunnels.list_up()}

    def test_gue_port_round_trip(self, tunnels: Tunnels, gue_tunnel: TunnelDevice) -> None:
        tunnels.ensure(gue_tunnel)
        tunnels.ensure(gue_tunnel)
        assert [t for t in tunnels.list_up() if t.name == gue_tunnel.name] == [gue_tunnel]
        tunnels.release(gue_tunnel)
        assert gue_tunnel.name not in {t.name for t in tunnels.list_up()}
        plain = gue_tunnel._replace(fou_port=0)
        tunnels.ensure(plain)  # the port went with the release
        assert [t for t in tunnels.list_up() if t.name == plain.name] == [plain]

    def test_changing_the_gue_port_lists_the_new_one(
        self, tunnels: Tunnels, gue_tunnel: TunnelDevice
    ) -> None:
        moved = gue_tunnel._replace(fou_port=gue_tunnel.fou_port + 1)
        tunnels.ensure(gue_tunnel)
        tunnels.ensure(moved)
        assert [t for t in tunnels.list_up() if t.name == moved.name] == [moved]
        tunnels.release(gue_tunnel)  # the old port; the device goes down with it
        tunnels.release(moved)
        assert moved.name not in {t.name for t in tunnels.list_up()}

    @pytest.mark.parametrize(
        "device",
        [
            TunnelDevice("tunl0", "gre"),
            TunnelDevice("tunl9", "ipip"),
            TunnelDevice("gre0", "gre", 5555),
            TunnelDevice("tunl0", "ipip", 70000),
        ],
        ids=["kind-mismatch", "not-a-fallback", "gre-with-gue", "port-range"],
    )
    def test_invalid_devices(self, tunnels: Tunnels, device: TunnelDevice) -> None:
        with pytest.raises(InvalidArgument):
            tunnels.ensure(device)
