"""The owned-chains contract against IptablesChains on this host's kernel, in a fresh
namespace, once per iptables flavour installed (nft and legacy), plus what only the real
iptables shows: `canonical_rule` against iptables-save for more than the compiler emits,
drift repair, the jump's place, flavour detection, namespaces, failures.

FULLNAT's real SNAT rules match `-m ipvs` (xt_ipvs), which needs IPVS: absent on this host,
so here they must fail as KernelUnavailable, and their round trip runs where IPVS exists
(the VM tier: `python -m tests.harness.vm run -- .venv/bin/python -m pytest -q
-p no:cacheprovider tests/kernel/test_real_chains.py -k ipvs`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvs_operator.compiler.plan import SNATRule
from lvs_operator.compiler.render import MARK_CHAIN, SNAT_CHAIN, snat_rule_args
from lvs_operator.kernel.errors import KernelError, KernelUnavailable, NotFound
from lvs_operator.kernel.netstate import ChainSpec
from lvs_operator.kernel.real_chains import (
    IptablesChains,
    _run,
    canonical_rule,
    detect_flavour,
    jump_args,
)
from lvs_operator.kernel.real_ipset import NetlinkIPSets
from tests.contract.chains_contract import RULE_A, ChainsContract, make_sets, mark_spec
from tests.kernel.conftest import IptablesForeign, available_flavours, require, run

FLAVOURS = available_flavours() or [
    pytest.param(
        "none",
        marks=pytest.mark.skip(
            reason="missing iptables-{nft,legacy}-{save,restore}: apt-get install iptables"
        ),
    )
]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    require("ip")
    return str(request.param)


@pytest.fixture
def ipsets(netns: str) -> NetlinkIPSets:
    return NetlinkIPSets(netns)


_UNUSABLE: dict[str, str] = {}  # flavour -> why this kernel cannot run it (probed once)


@pytest.fixture
def chains(netns: str, flavour: str) -> Iterator[IptablesChains]:
    adapter = IptablesChains(netns, flavour=flavour)
    if flavour not in _UNUSABLE:
        _UNUSABLE[flavour] = ""
        for family in (4, 6):
            for table in ("mangle", "nat"):
                try:
                    adapter.read(family, table, MARK_CHAIN)
                except KernelUnavailable as exc:  # e.g. no ip6_tables module (the VM)
                    _UNUSABLE[flavour] = f"{flavour} IPv{family} {table} unusable here: {exc}"
    if _UNUSABLE[flavour]:
        pytest.skip(_UNUSABLE[flavour])
    yield adapter
    # Every rule written in a test read back as canonical_rule() predicted, without the
    # learned fallback: the rewrite alone is right for this iptables.
    assert adapter.rewrite_misses == {}


@pytest.fixture
def foreign(netns: str, flavour: str) -> IptablesForeign:
    return IptablesForeign(netns, flavour)


class TestIptablesChains(ChainsContract):
    pass


# --- canonical form -----------------------------------------------------------------------

CANONICAL_CASES = [
    (4, "mangle", ("-d", "198.51.100.7", "-j", "MARK", "--set-mark", "1")),
    (4, "mangle", ("-p", "tcp", "--dport", "80", "-d", "198.51.100.7", "-s", "203.0.113.0/24", "-j", "MARK", "--set-xmark", "5")),
    (4, "mangle", ("-i", "lo", "!", "-s", "192.0.2.0/24", "-p", "udp", "!", "-d", "198.51.100.3", "--sport", "53", "-j", "MARK", "--set-mark", "0x10/0xf0")),
    (4, "mangle", ("-p", "6", "--destination-port", "443", "--source-port", "1024:65535", "-j", "MARK", "--set-mark", "0x1f/0x0f")),
    (4, "mangle", ("-m", "mark", "--mark", "99/0xff", "-j", "MARK", "--set-mark", "4294967295")),
    (4, "mangle", ("-m", "mark", "!", "--mark", "7", "-j", "RETURN")),
    (4, "mangle", ("-m", "comment", "--comment", "quote\"d back\\slash it's", "-j", "MARK", "--set-mark", "2")),
    (4, "mangle", ("--source", "198.51.100.77/25", "-j", "RETURN")),
    (4, "mangle", ("-p", "tcp", "-m", "set", "--match-set", "lvs-ct-dst", "dst,dst", "--dport", "80", "-j", "ACCEPT")),
    (4, "mangle", ("-p", "udp", "-m", "udp", "--dport", "54", "-m", "comment", "--comment", "x", "--sport", "53", "-j", "ACCEPT")),
    (4, "mangle", ("-m", "set", "--match-set", "lvs-ct-dst", "dst,dst", "-m", "set", "!", "--match-set", "lvs-ct-exc", "src", "-j", "MARK", "--set-mark", "99")),
    (6, "mangle", ("-d", "2001:DB8::1", "-p", "tcp", "--dport", "80", "-j", "MARK", "--set-mark", "3")),
    (6, "mangle", ("-s", "2001:db8:1:2::1/48", "-j", "RETURN")),
    (6, "mangle", ("-m", "set", "--match-set", "lvs-ct-dst6", "dst,dst", "-j", "MARK", "--set-mark", "7")),
    (4, "nat", ("-d", "198.51.100.0/24", "-m", "comment", "--comment", "lvs-operator default/api", "-j", "MASQUERADE")),
    (4, "nat", ("-d", "203.0.113.9", "-m", "mark", "--mark", "0x63", "-j", "SNAT", "--to-source", "198.51.100.1")),
    (6, "nat", ("-d", "2001:db8::9", "-j", "SNAT", "--to-source", "2001:db8::1")),
]  # fmt: skip


@pytest.mark.parametrize(("family", "table", "rule"), CANONICAL_CASES)
def test_canonical_rule_is_what_iptables_save_prints(
    chains: IptablesChains, ipsets: NetlinkIPSets, family: int, table: str, rule: tuple[str, ...]
) -> None:
    make_sets(ipsets)
    chain, hook = (MARK_CHAIN, "PREROUTING") if table == "mangle" else (SNAT_CHAIN, "POSTROUTING")
    spec = ChainSpec(family, table, chain, hook, (rule,))
    want = chains.canonical(spec)
    chains.replace(spec)
    assert chains.read(family, table, chain) == want
    assert want.rules == (canonical_rule(rule, family),)


# --- the jump -------------------------------------------------------------------------------


def test_stray_jumps_read_as_drift_and_replace_repairs_them(
    chains: IptablesChains, ipsets: NetlinkIPSets, foreign: IptablesForeign
) -> None:
    """A how-to's `iptables -A PREROUTING -j LVS-MARK` (no comment) next to ours: read says
    hook="" (differs from every plan), replace leaves exactly our one jump."""
    make_sets(ipsets)
    spec = mark_spec(4, RULE_A)
    want = chains.canonical(spec)
    chains.replace(spec)
    foreign.add_rule(4, "mangle", "PREROUTING", ("-j", MARK_CHAIN))
    foreign.add_rule(4, "mangle", "INPUT", ("-j", MARK_CHAIN))
    drifted = chains.read(4, "mangle", MARK_CHAIN)
    assert drifted is not None and drifted.hook == "" and drifted.rules == want.rules
    chains.replace(spec)
    assert chains.read(4, "mangle", MARK_CHAIN) == want
    assert foreign.jumps(4, "mangle", MARK_CHAIN) == 1


def test_a_jump_without_our_comment_is_replaced(
    chains: IptablesChains, ipsets: NetlinkIPSets, foreign: IptablesForeign
) -> None:
    foreign.add_chain(4, "mangle", MARK_CHAIN)
    foreign.add_rule(4, "mangle", "PREROUTING", ("-j", MARK_CHAIN))
    live = chains.read(4, "mangle", MARK_CHAIN)
    assert live == ChainSpec(4, "mangle", MARK_CHAIN, "", ())
    make_sets(ipsets)
    want = chains.canonical(mark_spec(4, RULE_A))
    chains.replace(mark_spec(4, RULE_A))
    assert chains.read(4, "mangle", MARK_CHAIN) == want
    assert foreign.jumps(4, "mangle", MARK_CHAIN) == 1


def test_our_jump_goes_first_and_then_keeps_its_place(
    chains: IptablesChains, ipsets: NetlinkIPSets, foreign: IptablesForeign
) -> None:
    """Inserted at the top (marks before anyone's ACCEPT); once there, a rule someone puts
    before it stays before it: replace does not re-insert a jump that is already right."""
    make_sets(ipsets)
    foreign.add_rule(4, "mangle", "PREROUTING", ("-s", "198.18.0.0/15", "-j", "RETURN"))
    chains.replace(mark_spec(4, RULE_A))
    jump = f"-A PREROUTING {' '.join(jump_args(MARK_CHAIN))}"

    def prerouting() -> list[str]:
        return [
            line
            for line in foreign.save(4, "mangle").splitlines()
            if line.startswith("-A PREROUTING")
        ]

    assert prerouting() == [jump, "-A PREROUTING -s 198.18.0.0/15 -j RETURN"]
    foreign.add_rule(4, "mangle", "PREROUTING", ("-d", "192.0.2.9/32", "-j", "RETURN"), first=True)
    for _ in range(3):
        chains.replace(mark_spec(4, RULE_A))
    assert prerouting() == [
        "-A PREROUTING -d 192.0.2.9/32 -j RETURN",
        jump,
        "-A PREROUTING -s 198.18.0.0/15 -j RETURN",
    ]


# --- flavour, namespaces, failures ------------------------------------------------------


def test_flavour_is_the_one_iptables_reports(netns: str) -> None:
    require("iptables", "ip6tables")
    version = run("iptables", "-V")
    expected = "nft" if "nf_tables" in version else "legacy"
    chains = IptablesChains(netns)
    assert chains.flavour(4) == expected == detect_flavour()
    assert chains.binary(4, "restore").startswith("iptables-")
    assert chains.binary(6, "save").startswith("ip6tables-")
    assert chains.read(4, "mangle", MARK_CHAIN) is None  # and it works with what it found


def test_backends_do_not_see_each_other(netns: str, ipsets: NetlinkIPSets) -> None:
    """Why the flavour matters: a chain written through nft is invisible to legacy's save
    (both are hooked into the kernel, so a mark set by either still applies)."""
    if len(available_flavours()) < 2:
        pytest.skip("needs both iptables-nft and iptables-legacy")
    make_sets(ipsets)
    nft = IptablesChains(netns, flavour="nft")
    nft.replace(mark_spec(4, RULE_A))
    assert not nft.other_backend_in_use
    assert IptablesChains(netns, flavour="legacy").read(4, "mangle", MARK_CHAIN) is None
    IptablesForeign(netns, "legacy").add_rule(4, "mangle", "PREROUTING", ("-j", "RETURN"))
    nft.read(4, "mangle", MARK_CHAIN)
    assert nft.other_backend_in_use  # noticed and logged: kube-proxy on legacy, say


def test_chains_stay_inside_their_namespace(
    netns: str, chains: IptablesChains, ipsets: NetlinkIPSets
) -> None:
    make_sets(ipsets)
    chains.replace(mark_spec(4, RULE_A))
    other = f"{netns}-b"
    run("ip", "netns", "add", other)
    try:
        assert IptablesChains(other, flavour=chains.flavour()).read(4, "mangle", MARK_CHAIN) is None
    finally:
        subprocess.run(
            ["ip", "netns", "delete", other], capture_output=True, timeout=30, check=False
        )


def test_a_missing_namespace_is_not_found_and_not_created() -> None:
    require("ip", "iptables")
    name = "lvs-test-does-not-exist"
    with pytest.raises(NotFound, match=name):
        IptablesChains(name).read(4, "mangle", MARK_CHAIN)
    assert not Path("/var/run/netns", name).exists()


def test_commands_time_out_and_missing_binaries_say_what_to_install() -> None:
    with pytest.raises(KernelError, match=r"sleep 5 timed out after 0.2 s"):
        _run(["sleep", "5"], timeout=0.2)
    with pytest.raises(KernelUnavailable, match=r"iptables-nonexistent.*package iptables"):
        _run(["iptables-nonexistent-save"], timeout=5)


def test_restore_errors_name_the_command_and_the_line(
    chains: IptablesChains, ipsets: NetlinkIPSets
) -> None:
    bad = ChainSpec(
        4,
        "mangle",
        MARK_CHAIN,
        "PREROUTING",
        (("-m", "set", "--match-set", "lvs-nope", "src", "-j", "ACCEPT"),),
    )
    with pytest.raises(NotFound) as info:
        chains.replace(bad)
    message = str(info.value)
    assert "restore --noflush" in message and "lvs-nope" in message
    assert "input line 3: -A LVS-MARK -m set --match-set lvs-nope src -j ACCEPT" in message


# --- FULLNAT (-m ipvs) ------------------------------------------------------------------

FULLNAT = [
    SNATRule(4, "192.0.2.40", "tcp", 443, to_source="198.51.100.1", owner="default/api-fullnat"),
    SNATRule(4, "192.0.2.41", "", 0, fwmark=99, owner="default/fw-fullnat"),
    SNATRule(6, "2001:db8::40", "udp", 53, owner="default/dns6"),
]


# Beyond what the compiler writes: the other shapes libxt_ipvs prints differently.
IPVS_EXTRA = {
    4: [
        ("-m", "ipvs", "--vaddr", "198.51.100.0/24", "-j", "MASQUERADE"),
        ("-m", "ipvs", "--ipvs", "-j", "MASQUERADE"),
        ("-m", "ipvs", "!", "--vaddr", "192.0.2.1", "--vmethod", "MASQ", "--vportctl", "21", "-j", "MASQUERADE"),
    ],
    6: [("-m", "ipvs", "--vaddr", "2001:db8::/64", "--vproto", "17", "-j", "MASQUERADE")],
}  # fmt: skip


def _ipvs_spec(family: int) -> ChainSpec:
    rules = tuple(tuple(snat_rule_args(r)) for r in FULLNAT if r.family == family)
    return ChainSpec(family, "nat", SNAT_CHAIN, "POSTROUTING", rules + tuple(IPVS_EXTRA[family]))


def _has_ipvs() -> bool:
    return Path("/proc/net/ip_vs").exists() or Path("/sys/module/xt_ipvs").exists()


def test_ipvs_snat_without_ipvs_is_kernel_unavailable(chains: IptablesChains) -> None:
    if _has_ipvs():
        pytest.skip("this kernel has IPVS: the round trip below runs instead")
    with pytest.raises(KernelUnavailable, match="ipvs"):
        chains.replace(_ipvs_spec(4))
    assert chains.read(4, "nat", SNAT_CHAIN) is None


@pytest.mark.parametrize("family", [4, 6])
def test_ipvs_snat_round_trip(chains: IptablesChains, family: int) -> None:
    """canonical_rule's -m ipvs form comes from libxt_ipvs's save code; proven where IPVS is."""
    if not _has_ipvs():
        pytest.skip("needs IPVS (xt_ipvs): runs in the VM tier, see this module's docstring")
    want = chains.canonical(_ipvs_spec(family))
    try:
        chains.replace(_ipvs_spec(family))
    except KernelUnavailable as exc:
        if "insmod" not in str(exc) and "initialize" not in str(exc):
            raise
        pytest.skip(f"{chains.flavour()} IPv{family} nat is not loaded in this kernel: {exc}")
    assert chains.read(family, "nat", SNAT_CHAIN) == want
