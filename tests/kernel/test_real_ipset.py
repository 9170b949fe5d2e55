"""The ipset contract against NetlinkIPSets on this host's kernel, in a fresh namespace, plus
what only a real kernel shows: the text equals `ipset save`, big dumps span messages, types
this kernel lacks, namespace isolation."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvs_operator.kernel.errors import KernelUnavailable, NotFound
from lvs_operator.kernel.real_ipset import NetlinkIPSets
from tests.contract.ipset_contract import PREFIX, IPSetsContract
from tests.kernel.conftest import require, run


@pytest.fixture
def ipsets(netns: str) -> Iterator[NetlinkIPSets]:
    adapter = NetlinkIPSets(netns)
    try:
        adapter.list("")
    except KernelUnavailable as exc:
        pytest.skip(f"no ipset in this kernel: {exc}")
    yield adapter


class TestNetlinkIPSets(IPSetsContract):
    pass


def _saved_entries(netns: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in run("ip", "netns", "exec", netns, "ipset", "save").splitlines():
        words = line.split()
        if words[0] == "create":
            out[words[1]] = set()
        elif words[0] == "add":
            out[words[1]].add(words[2])
    return out


def test_entries_read_back_exactly_as_ipset_save_prints_them(
    netns: str, ipsets: NetlinkIPSets
) -> None:
    require("ipset")
    wanted = {
        "lvs-a": ("hash:ip,port", "inet", ["192.0.2.50,tcp:80", "192.0.2.50,udp:53", "192.0.2.51,sctp:9"]),
        "lvs-b": ("hash:net", "inet", ["198.51.100.0/24", "203.0.113.66", "198.18.0.0/15"]),
        "lvs-c": ("hash:ip,port", "inet6", ["2001:db8::1,tcp:443", "2001:db8:0:1::2,udp:53"]),
        "lvs-d": ("hash:net", "inet6", ["2001:db8:1::/48", "2001:db8::5"]),
    }  # fmt: skip
    for name, (set_type, family, entries) in wanted.items():
        ipsets.create(name, set_type, family)
        ipsets.add(name, entries)
    listed = {name: set(s.entries) for name, s in ipsets.list(PREFIX).items()}
    assert listed == {name: set(e) for name, (_, _, e) in wanted.items()}
    assert listed == _saved_entries(netns)


def test_a_large_set_spans_several_dump_messages(ipsets: NetlinkIPSets) -> None:
    entries = {f"198.18.{i // 250}.{i % 250 + 1},tcp:{1000 + i}" for i in range(3000)}
    ipsets.create("lvs-big", "hash:ip,port", "inet")
    ipsets.create("lvs-small", "hash:net", "inet")
    ipsets.add("lvs-small", ["203.0.113.0/24"])
    ipsets.add("lvs-big", sorted(entries))
    listed = ipsets.list(PREFIX)
    assert listed["lvs-big"].entries == entries
    assert listed["lvs-small"].entries == {"203.0.113.0/24"}


def test_a_type_this_kernel_lacks_names_type_and_module(ipsets: NetlinkIPSets) -> None:
    if Path("/sys/module/ip_set_hash_ipmark").exists():
        pytest.skip("this kernel has hash:ip,mark")
    with pytest.raises(KernelUnavailable, match=r"hash:ip,mark.*ip_set_hash_ipmark"):
        ipsets.create("lvs-m", "hash:ip,mark", "inet")


def test_sets_stay_inside_their_namespace(netns: str, ipsets: NetlinkIPSets) -> None:
    name = f"lvs-iso-{netns[-8:]}"
    ipsets.create(name, "hash:net", "inet")
    assert name not in NetlinkIPSets().list(name)  # the host's namespace
    if shutil.which("ipset"):
        assert name not in run("ipset", "list", "-n")
        assert name in run("ip", "netns", "exec", netns, "ipset", "list", "-n")


def test_a_missing_namespace_is_not_found_and_not_created() -> None:
    name = "lvs-test-does-not-exist"
    with pytest.raises(NotFound, match=name):
        NetlinkIPSets(name).list(PREFIX)
    assert not Path("/var/run/netns", name).exists()
