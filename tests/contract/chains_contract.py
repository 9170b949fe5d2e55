"""The OwnedChains contract: what every owned-chains adapter does, the fake and iptables.

A test module subclasses `ChainsContract` and provides three fixtures over one (fake or real)
kernel: `chains` (the adapter), `ipsets` (mark rules match ipsets, so both live in the same
namespace) and `foreign` (a `ForeignTables`: someone else writing iptables behind our back).

The promises: `replace` then `read` gives exactly `canonical(spec)` (computed *before* the
replace, so nothing is learned from the kernel first); replace is idempotent and swaps rule
sets atomically; `remove` takes the jump and the chain; a set a rule uses cannot be
destroyed; and foreign rules, chains and ipsets are byte-for-byte unchanged after any number
of our replace/remove cycles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import pytest

from lvs_operator.compiler.plan import MarkRule
from lvs_operator.compiler.render import MARK_CHAIN, SNAT_CHAIN, mark_rule_args
from lvs_operator.kernel.errors import InvalidArgument, KernelError, NotFound
from lvs_operator.kernel.netstate import ChainSpec, IPSets, OwnedChains

__all__ = ["ChainsContract", "ForeignTables", "make_sets", "mark_spec", "snat_spec"]


class ForeignTables(Protocol):
    """Another writer of the same tables (kube-proxy, a CNI, a human with iptables)."""

    def add_chain(self, family: int, table: str, chain: str) -> None: ...

    def add_rule(
        self, family: int, table: str, chain: str, args: Sequence[str], first: bool = False
    ) -> None:
        """Append (or insert at position 1 when `first`) a rule that is not ours."""
        ...

    def snapshot(self, family: int, table: str, owned: str) -> list[str]:
        """Every chain and rule of the table in order, except the chain `owned` and the
        rules jumping to it."""
        ...

    def jumps(self, family: int, table: str, chain: str) -> int:
        """How many rules in the table jump to `chain`."""
        ...


SETS = {
    # name: (type, family, entries)
    "lvs-ct-dst": ("hash:ip,port", "inet", ["192.0.2.50,tcp:80", "192.0.2.50,tcp:443"]),
    "lvs-ct-src": ("hash:net", "inet", ["198.51.100.0/24", "203.0.113.0/24"]),
    "lvs-ct-exc": ("hash:net", "inet", ["203.0.113.66"]),
    "lvs-ct-dst2": ("hash:ip,port", "inet", ["192.0.2.60,udp:53"]),
    "lvs-ct-dst6": ("hash:ip,port", "inet6", ["2001:db8::50,tcp:80"]),
    "lvs-ct-src6": ("hash:net", "inet6", ["2001:db8:1::/48"]),
}
FOREIGN_SET = "kube-foreign-set"


def make_sets(ipsets: IPSets) -> None:
    for name, (set_type, family, entries) in SETS.items():
        ipsets.create(name, set_type, family)
        ipsets.add(name, entries)


def mark_spec(family: int, *rules: MarkRule) -> ChainSpec:
    """The mangle chain as the agent builds it from the compiler's rules."""
    return ChainSpec(
        family, "mangle", MARK_CHAIN, "PREROUTING", tuple(tuple(mark_rule_args(r)) for r in rules)
    )


def snat_spec(*rules: tuple[str, ...]) -> ChainSpec:
    return ChainSpec(4, "nat", SNAT_CHAIN, "POSTROUTING", tuple(rules))


RULE_A = MarkRule(99, 4, "lvs-ct-dst", "lvs-ct-src", "lvs-ct-exc", "default/shop-fwmark")
RULE_B = MarkRule(100, 4, "lvs-ct-dst2", owner="default/dns-fwmark")
RULE_6 = MarkRule(7, 6, "lvs-ct-dst6", "lvs-ct-src6", owner="v6/web")
# FULLNAT's rules need `-m ipvs` (IPVS); these use what every kernel has, same chain/hook.
MASQ = ("-d", "198.51.100.0/24", "-m", "comment", "--comment", "lvs-operator default/api", "-j", "MASQUERADE")  # fmt: skip
SNAT_MARK = ("-d", "203.0.113.10", "-m", "mark", "--mark", "99", "-m", "comment", "--comment", "lvs-operator default/fw", "-j", "SNAT", "--to-source", "198.51.100.1")  # fmt: skip
FOREIGN_CHAIN = "KUBE-FOREIGN"
FOREIGN_RULE = ("-s", "198.18.0.0/15", "-m", "comment", "--comment", "kube-proxy was here", "-j", "MARK", "--set-xmark", "0x4000/0x4000")  # fmt: skip
FOREIGN_RULE_2 = ("-d", "198.18.0.1/32", "-j", FOREIGN_CHAIN)
FOREIGN_NAT = ("-s", "198.18.0.0/15", "-d", "203.0.113.0/24", "-j", "RETURN")


def _replace(chains: OwnedChains, spec: ChainSpec) -> ChainSpec:
    """Replace and return what read() must equal (canonical computed beforehand)."""
    want = chains.canonical(spec)
    chains.replace(spec)
    return want


class ChainsContract:
    """Subclass with `chains`, `ipsets` and `foreign` fixtures."""

    def test_absent_chain_reads_none(self, chains: OwnedChains) -> None:
        assert chains.read(4, "mangle", MARK_CHAIN) is None
        assert chains.read(6, "nat", SNAT_CHAIN) is None

    @pytest.mark.parametrize("family", [4, 6])
    def test_replace_then_read_is_canonical(
        self, chains: OwnedChains, ipsets: IPSets, family: int
    ) -> None:
        make_sets(ipsets)
        spec = mark_spec(4, RULE_A, RULE_B) if family == 4 else mark_spec(6, RULE_6)
        want = _replace(chains, spec)
        assert chains.read(family, "mangle", MARK_CHAIN) == want
        assert want.hook == "PREROUTING"
        assert chains.read(10 - family, "mangle", MARK_CHAIN) is None  # families are separate

    def test_canonical_mark_form(self, chains: OwnedChains) -> None:
        """The one rewrite every iptables does to the compiler's rules."""
        (rule,) = chains.canonical(mark_spec(4, RULE_A)).rules
        assert rule[-3:] == ("MARK", "--set-xmark", "0x63/0xffffffff")
        assert rule[:-2] == tuple(mark_rule_args(RULE_A))[:-2]

    def test_snat_chain_in_nat(self, chains: OwnedChains) -> None:
        want = _replace(chains, snat_spec(MASQ, SNAT_MARK))
        assert chains.read(4, "nat", SNAT_CHAIN) == want
        assert want.rules[0] == MASQ
        assert chains.read(4, "mangle", SNAT_CHAIN) is None

    def test_replace_is_idempotent(
        self, chains: OwnedChains, ipsets: IPSets, foreign: ForeignTables
    ) -> None:
        make_sets(ipsets)
        spec = mark_spec(4, RULE_A, RULE_B)
        for _ in range(3):
            want = _replace(chains, spec)
            assert chains.read(4, "mangle", MARK_CHAIN) == want
            assert foreign.jumps(4, "mangle", MARK_CHAIN) == 1

    def test_replace_swaps_rules(self, chains: OwnedChains, ipsets: IPSets) -> None:
        make_sets(ipsets)
        _replace(chains, mark_spec(4, RULE_A))
        want = _replace(chains, mark_spec(4, RULE_B))
        assert chains.read(4, "mangle", MARK_CHAIN) == want
        ipsets.destroy("lvs-ct-src")  # only RULE_A used it: the swap released it
        with pytest.raises(KernelError):
            ipsets.destroy("lvs-ct-dst2")  # RULE_B uses it

    def test_replace_with_no_rules_keeps_an_empty_chain(
        self, chains: OwnedChains, ipsets: IPSets, foreign: ForeignTables
    ) -> None:
        make_sets(ipsets)
        _replace(chains, mark_spec(4, RULE_A))
        want = _replace(chains, mark_spec(4))
        assert chains.read(4, "mangle", MARK_CHAIN) == want
        assert want.rules == ()
        assert foreign.jumps(4, "mangle", MARK_CHAIN) == 1

    def test_remove_deletes_jump_and_chain(
        self, chains: OwnedChains, ipsets: IPSets, foreign: ForeignTables
    ) -> None:
        make_sets(ipsets)
        chains.remove(4, "mangle", MARK_CHAIN, "PREROUTING")  # absent is fine
        _replace(chains, mark_spec(4, RULE_A))
        chains.remove(4, "mangle", MARK_CHAIN, "PREROUTING")
        assert chains.read(4, "mangle", MARK_CHAIN) is None
        assert foreign.jumps(4, "mangle", MARK_CHAIN) == 0
        chains.remove(4, "mangle", MARK_CHAIN, "PREROUTING")
        for name in SETS:  # nothing references them any more
            ipsets.destroy(name)

    def test_chains_are_independent(self, chains: OwnedChains, ipsets: IPSets) -> None:
        make_sets(ipsets)
        mark = _replace(chains, mark_spec(4, RULE_A))
        mark6 = _replace(chains, mark_spec(6, RULE_6))
        _replace(chains, snat_spec(MASQ))
        chains.remove(4, "nat", SNAT_CHAIN, "POSTROUTING")
        assert chains.read(4, "mangle", MARK_CHAIN) == mark
        assert chains.read(6, "mangle", MARK_CHAIN) == mark6
        chains.remove(4, "mangle", MARK_CHAIN, "PREROUTING")
        assert chains.read(6, "mangle", MARK_CHAIN) == mark6

    def test_set_in_use_cannot_be_destroyed(self, chains: OwnedChains, ipsets: IPSets) -> None:
        make_sets(ipsets)
        _replace(chains, mark_spec(4, RULE_A))
        with pytest.raises(KernelError) as info:
            ipsets.destroy("lvs-ct-exc")
        assert not isinstance(info.value, NotFound)
        assert "lvs-ct-exc" in ipsets.list("lvs-ct-exc")
        chains.remove(4, "mangle", MARK_CHAIN, "PREROUTING")
        ipsets.destroy("lvs-ct-exc")

    def test_missing_set_fails_and_keeps_the_old_rules(
        self, chains: OwnedChains, ipsets: IPSets
    ) -> None:
        make_sets(ipsets)
        want = _replace(chains, mark_spec(4, RULE_A))
        broken = mark_spec(4, RULE_B, MarkRule(5, 4, "lvs-ct-missing", owner="default/x"))
        with pytest.raises(NotFound, match="lvs-ct-missing"):
            chains.replace(broken)
        assert chains.read(4, "mangle", MARK_CHAIN) == want

    def test_set_of_the_other_family_is_invalid(self, chains: OwnedChains, ipsets: IPSets) -> None:
        make_sets(ipsets)
        with pytest.raises(InvalidArgument):
            chains.replace(mark_spec(6, MarkRule(5, 6, "lvs-ct-dst", owner="default/x")))
        assert chains.read(6, "mangle", MARK_CHAIN) is None

    def test_foreign_state_survives(
        self, chains: OwnedChains, ipsets: IPSets, foreign: ForeignTables
    ) -> None:
        """kube-proxy-style neighbours: a foreign set, chain, and PREROUTING rules on both
        sides of our jump, untouched by many cycles of replace, swap and remove."""
        ipsets.create(FOREIGN_SET, "hash:net", "inet")
        ipsets.add(FOREIGN_SET, ["198.18.0.0/16"])
        make_sets(ipsets)
        foreign.add_chain(4, "mangle", FOREIGN_CHAIN)
        foreign.add_rule(4, "mangle", FOREIGN_CHAIN, FOREIGN_RULE)
        foreign.add_rule(4, "mangle", "PREROUTING", FOREIGN_RULE_2)  # before our first jump
        foreign.add_rule(4, "nat", "POSTROUTING", FOREIGN_NAT)
        _replace(chains, mark_spec(4, RULE_A))
        foreign.add_rule(4, "mangle", "PREROUTING", FOREIGN_RULE, first=True)  # before our jump
        foreign.add_rule(4, "mangle", "PREROUTING", FOREIGN_RULE_2)  # after it
        mangle = foreign.snapshot(4, "mangle", MARK_CHAIN)
        nat = foreign.snapshot(4, "nat", SNAT_CHAIN)
        sets = ipsets.list(FOREIGN_SET)
        assert any(FOREIGN_CHAIN in line for line in mangle), mangle

        for _ in range(4):
            _replace(chains, mark_spec(4, RULE_A))
            _replace(chains, mark_spec(4, RULE_B, RULE_A))
            _replace(chains, snat_spec(MASQ, SNAT_MARK))
            _replace(chains, snat_spec(MASQ))
            chains.remove(4, "mangle", MARK_CHAIN, "PREROUTING")
            chains.remove(4, "nat", SNAT_CHAIN, "POSTROUTING")
            _replace(chains, mark_spec(4, RULE_B))
            assert foreign.jumps(4, "mangle", MARK_CHAIN) == 1

        assert foreign.snapshot(4, "mangle", MARK_CHAIN) == mangle
        assert foreign.snapshot(4, "nat", SNAT_CHAIN) == nat
        assert ipsets.list(FOREIGN_SET) == sets
