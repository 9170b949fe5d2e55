"""Adapters for the node state around IPVS: ipsets, the owned iptables chains, addresses,
sysctls and tunnel devices. Each is a Protocol; real and fake implementations live in
`real_*.py` and `fake.py`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from ..compiler.plan import TunnelDevice

__all__ = [
    "ADDRESS_PROTO",
    "MAX_ADDRESS_LIFETIME",
    "AddressEntry",
    "Addresses",
    "ChainSpec",
    "IPSetState",
    "IPSets",
    "OwnedChains",
    "Sysctls",
    "Tunnels",
]

# IFA_PROTO marks the addresses this project adds (Linux >= 5.18), so it can prove which VIPs
# are its own and never touches another address on lo or on the VIP interface.
ADDRESS_PROTO = 0x4C  # "L"


class IPSetState(NamedTuple):
    name: str
    set_type: str  # hash:ip,port | hash:net
    family: str  # inet | inet6
    entries: frozenset[str]  # in `ipset save` text form: 192.0.2.50,tcp:80  198.51.100.0/24


class IPSets(Protocol):
    def list(self, prefix: str) -> dict[str, IPSetState]:
        """Sets whose names start with `prefix` (the project's sets only)."""
        ...

    def create(self, name: str, set_type: str, family: str) -> None: ...
    def destroy(self, name: str) -> None: ...
    def add(self, name: str, entries: Iterable[str]) -> None: ...
    def delete(self, name: str, entries: Iterable[str]) -> None: ...


class ChainSpec(NamedTuple):
    """An owned chain: its rules (iptables-save argument lists, without `-A CHAIN`) and the
    built-in chain that jumps to it."""

    family: int  # 4 (iptables) | 6 (ip6tables)
    table: str  # mangle | nat
    chain: str  # LVS-MARK | LVS-SNAT
    hook: str  # PREROUTING | POSTROUTING
    rules: tuple[tuple[str, ...], ...]


class OwnedChains(Protocol):
    def read(self, family: int, table: str, chain: str) -> ChainSpec | None:
        """The chain as the kernel has it (rules in iptables-save's canonical text), or None
        when absent."""
        ...

    def replace(self, spec: ChainSpec) -> None:
        """Make the chain hold exactly `spec.rules` and be jumped to once from `spec.hook`,
        atomically (iptables-restore --noflush), touching no other chain's rules."""
        ...

    def remove(self, family: int, table: str, chain: str, hook: str) -> None:
        """Delete the jump and the chain; absent is fine."""
        ...

    def canonical(self, spec: ChainSpec) -> ChainSpec:
        """`spec` with its rules in the form `read` returns (iptables-save normalises, e.g.
        `--set-mark 99` reads back as `--set-xmark 0x63/0xffffffff`)."""
        ...


# The longest finite address lifetime: the kernel reads 0xFFFFFFFF seconds as "forever".
MAX_ADDRESS_LIFETIME = 0xFFFFFFFE


class AddressEntry(NamedTuple):
    device: str
    address: str
    prefix_length: int
    owned: bool  # carries ADDRESS_PROTO
    # Seconds the address has left (IFA_CACHEINFO ifa_valid): the lifetime last set minus
    # the whole seconds since, so 1..lifetime while it lasts (0 for the moment before the
    # kernel deletes it); None when it lasts forever.
    lifetime: int | None = None


class Addresses(Protocol):
    def list(self) -> list[AddressEntry]:
        """Every address that has not run out; owned only where it carries ADDRESS_PROTO."""
        ...

    def add(
        self, device: str, address: str, prefix_length: int, lifetime: int | None = None
    ) -> None:
        """Add with ADDRESS_PROTO; AlreadyExists if present.

        With a `lifetime` (seconds, 1..MAX_ADDRESS_LIFETIME) the address has valid_lft =
        preferred_lft = lifetime and the kernel deletes it when that runs out, whether or not
        the agent is still alive: an HA VIP is held by refreshing it. Adding an address that
        is already ours (same identity, see the implementations) with a lifetime refreshes
        it, making it expire `lifetime` seconds from now, instead of AlreadyExists; a foreign
        address is still AlreadyExists and left as it is. InvalidArgument for a lifetime out
        of range."""
        ...

    def delete(self, device: str, address: str, prefix_length: int) -> None: ...
    def link_up(self, device: str) -> bool:
        """True while `device` is up with a carrier (IFF_UP and IFF_LOWER_UP, LOWER_UP in
        `ip link`): a director whose VIP device lost its link cannot serve that VIP and must
        let a standby hold it. NotFound for a missing device."""
        ...

    def route_device(self, address: str) -> str | None:
        """The device of the route this host would use toward `address` (for VIPs whose
        interface is not set), or None."""
        ...


class Sysctls(Protocol):
    def get(self, key: str) -> str | None:
        """Value of a dotted key (net.ipv4.ip_forward), None if the key does not exist."""
        ...

    def set(self, key: str, value: str) -> None: ...


class Tunnels(Protocol):
    def list_up(self) -> list[TunnelDevice]:
        """Tunnel receive devices that exist and are up (with their fou port, if any)."""
        ...

    def ensure(self, device: TunnelDevice) -> None:
        """Make the device exist and be up (loading its module through rtnetlink)."""
        ...

    def release(self, device: TunnelDevice) -> None:
        """Set it down and drop its fou port; fallback devices cannot be deleted."""
        ...
