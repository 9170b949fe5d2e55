"""Host iptables flavour detection (real_chains.detect_host_flavour) against this kernel, each
case in a fresh network namespace standing in for the host: the agent runs with hostNetwork,
so its own namespace is the host's, and the image's `iptables -V` says nothing about it."""

from __future__ import annotations

import logging

import pytest

from lvs_operator.kernel.errors import NotFound
from lvs_operator.kernel.real_chains import IptablesChains, detect_flavour, detect_host_flavour
from tests.kernel.conftest import IptablesForeign, available_flavours, require, run


@pytest.fixture(autouse=True)
def both_flavours() -> None:
    require("ip", "iptables")
    if len(available_flavours()) < 2:
        pytest.skip("needs iptables-nft and iptables-legacy (apt-get install iptables)")


def legacy_tables(netns: str) -> list[str]:
    """The legacy tables that exist in `netns` (what iptables-legacy-save without -t dumps)."""
    names = run(
        "ip",
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null || true",
    )
    return sorted(names.split())


def test_legacy_rules_only_mean_legacy(netns: str) -> None:
    IptablesForeign(netns, "legacy").add_rule(
        4, "filter", "INPUT", ("-s", "192.0.2.1", "-j", "ACCEPT")
    )
    choice = detect_host_flavour(netns)
    assert choice.flavour == "legacy"
    assert "legacy has more rules (legacy 1, nft 0" in choice.reason


def test_ipv6_legacy_rules_count(netns: str) -> None:
    legacy = IptablesForeign(netns, "legacy")
    legacy.add_rule(6, "filter", "INPUT", ("-s", "2001:db8::1", "-j", "ACCEPT"))
    legacy.add_rule(6, "filter", "INPUT", ("-s", "2001:db8::2", "-j", "ACCEPT"))
    IptablesForeign(netns, "nft").add_rule(
        4, "filter", "INPUT", ("-s", "192.0.2.1", "-j", "ACCEPT")
    )
    choice = detect_host_flavour(netns)
    assert choice.flavour == "legacy"
    assert "legacy has more rules (legacy 2, nft 1" in choice.reason


def test_kubelet_hint_in_nft_mangle_means_nft(netns: str) -> None:
    """The hint wins over counting: more legacy rules, still nft."""
    IptablesForeign(netns, "nft").add_chain(4, "mangle", "KUBE-IPTABLES-HINT")
    legacy = IptablesForeign(netns, "legacy")
    for n in range(3):
        legacy.add_rule(4, "filter", "INPUT", ("-s", f"192.0.2.{n + 1}", "-j", "ACCEPT"))
    choice = detect_host_flavour(netns)
    assert choice == ("nft", "KUBE-IPTABLES-HINT in nft mangle")


def test_kubelet_canary_in_legacy_mangle_means_legacy(netns: str) -> None:
    IptablesForeign(netns, "legacy").add_chain(6, "mangle", "KUBE-KUBELET-CANARY")
    IptablesForeign(netns, "nft").add_rule(
        4, "filter", "INPUT", ("-s", "192.0.2.1", "-j", "ACCEPT")
    )
    choice = detect_host_flavour(netns)
    assert choice == ("legacy", "KUBE-KUBELET-CANARY in legacy mangle")


def test_detection_creates_no_legacy_table(netns: str) -> None:
    """iptables-legacy-save -t mangle would instantiate the table (and then iptables-nft-save
    warns "legacy tables present" on an nft host); the detection reads legacy without -t."""
    assert legacy_tables(netns) == []
    choice = detect_host_flavour(netns)
    assert legacy_tables(netns) == []
    # an empty namespace: as many rules (none) in both, so `iptables -V` decides
    assert choice.flavour == detect_flavour()
    assert "`iptables -V` says" in choice.reason
    run("ip", "netns", "exec", netns, "iptables-legacy-save", "-t", "mangle")  # the reason why
    assert legacy_tables(netns) == ["mangle"]


def test_the_adapter_detects_once_and_logs_why(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    IptablesForeign(netns, "legacy").add_chain(4, "mangle", "KUBE-IPTABLES-HINT")
    chains = IptablesChains(netns)
    with caplog.at_level(logging.INFO, logger="lvs_operator.kernel.real_chains"):
        assert chains.flavour(4) == chains.flavour(6) == "legacy"
    assert chains.binary(6, "save") == "ip6tables-legacy-save"
    assert chains.flavour_reason == "KUBE-IPTABLES-HINT in legacy mangle"
    logged = [r.getMessage() for r in caplog.records if "iptables flavour" in r.getMessage()]
    assert logged == [
        f"iptables flavour legacy (network namespace {netns}): KUBE-IPTABLES-HINT in legacy mangle"
    ]
    assert chains.read(4, "mangle", "LVS-MARK") is None  # and it works with what it found


def test_a_given_flavour_is_not_detected(netns: str) -> None:
    IptablesForeign(netns, "legacy").add_chain(4, "mangle", "KUBE-IPTABLES-HINT")
    chains = IptablesChains(netns, flavour="nft")
    assert (chains.flavour(), chains.flavour_reason) == ("nft", "given")


def test_a_missing_namespace_is_not_found() -> None:
    name = "lvs-test-does-not-exist"
    with pytest.raises(NotFound, match=name):
        detect_host_flavour(name)
