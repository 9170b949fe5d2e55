"""The ipset and owned-chains contracts against the in-memory fakes (the kernel tier runs the
same suites against the real adapters in a throwaway network namespace)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lvs_operator.kernel.errors import KernelUnavailable
from lvs_operator.kernel.fake import FakeChains, FakeIPSets
from lvs_operator.kernel.netstate import IPSets, OwnedChains
from lvs_operator.kernel.real_chains import restore_line
from tests.contract.chains_contract import ChainsContract
from tests.contract.ipset_contract import IPSetsContract

# compile-time checks that the fakes satisfy the Protocols
_IPSETS: type[IPSets] = FakeIPSets
_CHAINS: type[OwnedChains] = FakeChains


class FakeForeignTables:
    """Foreign rules next to a FakeChains: kept in `foreign_rules`, which the fake never
    touches; jumps come from the chains the fake holds (it always has exactly one)."""

    def __init__(self, chains: FakeChains) -> None:
        self.chains = chains
        self.declared: list[tuple[int, str, str]] = []

    def add_chain(self, family: int, table: str, chain: str) -> None:
        self.declared.append((family, table, chain))

    def add_rule(
        self, family: int, table: str, chain: str, args: Sequence[str], first: bool = False
    ) -> None:
        rule = (family, table, chain, tuple(args))
        if first:
            self.chains.foreign_rules.insert(0, rule)
        else:
            self.chains.foreign_rules.append(rule)

    def snapshot(self, family: int, table: str, owned: str) -> list[str]:
        lines = [f":{c}" for f, t, c in self.declared if (f, t) == (family, table)]
        lines += [
            f"-A {c} {restore_line(args)}"
            for f, t, c, args in self.chains.foreign_rules
            if (f, t) == (family, table)
        ]
        return lines

    def jumps(self, family: int, table: str, chain: str) -> int:
        return int((family, table, chain) in self.chains.chains)


class TestFakeIPSets(IPSetsContract):
    @pytest.fixture
    def ipsets(self) -> FakeIPSets:
        return FakeIPSets()


class TestFakeChains(ChainsContract):
    @pytest.fixture
    def ipsets(self) -> FakeIPSets:
        return FakeIPSets()

    @pytest.fixture
    def chains(self, ipsets: FakeIPSets) -> FakeChains:
        return FakeChains(ipsets)

    @pytest.fixture
    def foreign(self, chains: FakeChains) -> FakeForeignTables:
        return FakeForeignTables(chains)


def test_fake_can_lack_a_set_type() -> None:
    """Like this host's kernel (no hash:ip,mark), for agent tests of that condition."""
    ipsets = FakeIPSets(unavailable_types=["hash:ip,mark"])
    with pytest.raises(KernelUnavailable, match="hash:ip,mark"):
        ipsets.create("lvs-m", "hash:ip,mark", "inet")
