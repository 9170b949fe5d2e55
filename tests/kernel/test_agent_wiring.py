"""How lvs-agent wires the real adapters (host kernel, no namespace needed)."""

from __future__ import annotations

import pytest

from lvs_operator.agent.main import real_kernel


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_agent_uses_the_iptables_flavour_it_is_told(flavour: str) -> None:
    """In a container `iptables -V` answers for the image; --iptables names the host's."""
    chains = real_kernel(None, flavour).chains
    assert chains.flavour() == flavour  # type: ignore[attr-defined]
