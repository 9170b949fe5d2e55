"""The IPSets contract: what every ipset adapter does, the in-memory fake and the netlink one.

A test module subclasses `IPSetsContract` and provides an `ipsets` fixture: a fresh adapter
over a kernel (or fake) with no sets. The expectations are the kernel's own: EEXIST on a
second create or a second add, ENOENT on what is not there, entries read back in the form
`ipset save` prints (the kernel normalises: host bits cleared, /32 dropped, tcp implied), and
a set the project does not own is never listed under the project prefix nor touched.
"""

from __future__ import annotations

import pytest

from lvs_operator.kernel.errors import (
    AlreadyExists,
    InvalidArgument,
    KernelUnavailable,
    NotFound,
)
from lvs_operator.kernel.netstate import IPSets, IPSetState

__all__ = ["PREFIX", "IPSetsContract"]

PREFIX = "lvs-"  # the project's ipset prefix (agent.reconcile.IPSET_PREFIX)
FOREIGN = "kube-foreign-set"  # somebody else's set: never listed under PREFIX, never touched


def _state(name: str, set_type: str, family: str, *entries: str) -> IPSetState:
    return IPSetState(name, set_type, family, frozenset(entries))


class IPSetsContract:
    """Subclass with an `ipsets` fixture."""

    # round trips ------------------------------------------------------------------------
    def test_created_set_lists_empty(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-ct-a", "hash:ip,port", "inet")
        assert ipsets.list(PREFIX) == {"lvs-ct-a": _state("lvs-ct-a", "hash:ip,port", "inet")}

    @pytest.mark.parametrize(
        ("set_type", "family", "entries"),
        [
            (
                "hash:ip,port",
                "inet",
                [
                    "192.0.2.50,tcp:80",
                    "192.0.2.50,tcp:443",
                    "192.0.2.51,udp:53",
                    "192.0.2.52,sctp:5060",
                ],
            ),
            (
                "hash:ip,port",
                "inet6",
                ["2001:db8::50,tcp:80", "2001:db8::50,tcp:443", "2001:db8:0:1::51,udp:53"],
            ),
            ("hash:net", "inet", ["198.51.100.0/24", "203.0.113.66", "198.18.0.0/15"]),
            ("hash:net", "inet6", ["2001:db8:1::/48", "2001:db8::5"]),
        ],
        ids=["ip,port-v4", "ip,port-v6", "net-v4", "net-v6"],
    )
    def test_round_trip(
        self, ipsets: IPSets, set_type: str, family: str, entries: list[str]
    ) -> None:
        ipsets.create("lvs-ct-rt", set_type, family)
        ipsets.add("lvs-ct-rt", entries)
        assert ipsets.list(PREFIX) == {"lvs-ct-rt": _state("lvs-ct-rt", set_type, family, *entries)}

        ipsets.delete("lvs-ct-rt", entries[:1])
        assert ipsets.list(PREFIX)["lvs-ct-rt"].entries == frozenset(entries[1:])

        ipsets.add("lvs-ct-rt", entries[:1])
        ipsets.delete("lvs-ct-rt", entries)
        assert ipsets.list(PREFIX)["lvs-ct-rt"].entries == frozenset()

        ipsets.destroy("lvs-ct-rt")
        assert ipsets.list(PREFIX) == {}

    def test_empty_batches_are_no_ops(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-ct-e", "hash:net", "inet")
        ipsets.add("lvs-ct-e", [])
        ipsets.delete("lvs-ct-e", [])
        assert ipsets.list(PREFIX)["lvs-ct-e"].entries == frozenset()

    @pytest.mark.parametrize(
        ("set_type", "family", "written", "read_back"),
        [
            ("hash:net", "inet", "203.0.113.67/32", "203.0.113.67"),
            ("hash:net", "inet", "198.51.100.77/25", "198.51.100.0/25"),
            ("hash:net", "inet6", "2001:DB8:0:0::7/128", "2001:db8::7"),
            ("hash:net", "inet6", "2001:db8:1:2::1/48", "2001:db8:1::/48"),
            ("hash:ip,port", "inet", "192.0.2.60,80", "192.0.2.60,tcp:80"),
            ("hash:ip,port", "inet6", "2001:DB8:0::7,tcp:8080", "2001:db8::7,tcp:8080"),
        ],
    )
    def test_kernel_normal_form(
        self, ipsets: IPSets, set_type: str, family: str, written: str, read_back: str
    ) -> None:
        """What the compiler must emit for a plan to equal the live state."""
        ipsets.create("lvs-ct-nf", set_type, family)
        ipsets.add("lvs-ct-nf", [written])
        assert ipsets.list(PREFIX)["lvs-ct-nf"].entries == {read_back}
        with pytest.raises(AlreadyExists):
            ipsets.add("lvs-ct-nf", [read_back])
        ipsets.delete("lvs-ct-nf", [read_back])
        assert ipsets.list(PREFIX)["lvs-ct-nf"].entries == frozenset()

    # prefix and foreign sets ----------------------------------------------------------
    def test_list_returns_only_the_prefix(self, ipsets: IPSets) -> None:
        ipsets.create(FOREIGN, "hash:net", "inet")
        ipsets.add(FOREIGN, ["203.0.113.0/24"])
        ipsets.create("lvs-ct-a", "hash:net", "inet")
        ipsets.create("lvs-ct-b", "hash:ip,port", "inet6")
        assert sorted(ipsets.list(PREFIX)) == ["lvs-ct-a", "lvs-ct-b"]
        assert sorted(ipsets.list("lvs-ct-a")) == ["lvs-ct-a"]
        assert ipsets.list("lvs-nothing-") == {}
        assert ipsets.list(FOREIGN) == {
            FOREIGN: _state(FOREIGN, "hash:net", "inet", "203.0.113.0/24")
        }

    def test_foreign_set_survives_our_churn(self, ipsets: IPSets) -> None:
        ipsets.create(FOREIGN, "hash:ip,port", "inet")
        ipsets.add(FOREIGN, ["192.0.2.99,tcp:22"])
        before = ipsets.list(FOREIGN)
        for i in range(5):
            ipsets.create("lvs-ct-churn", "hash:net", "inet")
            ipsets.add("lvs-ct-churn", [f"198.51.100.{i}", "203.0.113.0/24"])
            ipsets.delete("lvs-ct-churn", ["203.0.113.0/24"])
            ipsets.destroy("lvs-ct-churn")
        assert ipsets.list(FOREIGN) == before
        assert ipsets.list(PREFIX) == {}

    # errors ---------------------------------------------------------------------------
    def test_create_twice_is_already_exists(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-ct-dup", "hash:net", "inet")
        with pytest.raises(AlreadyExists):
            ipsets.create("lvs-ct-dup", "hash:net", "inet")
        with pytest.raises(AlreadyExists):  # whatever the type: the name is taken
            ipsets.create("lvs-ct-dup", "hash:ip,port", "inet6")

    def test_missing_set_is_not_found(self, ipsets: IPSets) -> None:
        with pytest.raises(NotFound):
            ipsets.destroy("lvs-ct-missing")
        with pytest.raises(NotFound):
            ipsets.add("lvs-ct-missing", ["198.51.100.1"])
        with pytest.raises(NotFound):
            ipsets.delete("lvs-ct-missing", ["198.51.100.1"])

    def test_entry_twice_is_already_exists(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-ct-x", "hash:ip,port", "inet")
        ipsets.add("lvs-ct-x", ["192.0.2.50,tcp:80"])
        with pytest.raises(AlreadyExists):
            ipsets.add("lvs-ct-x", ["192.0.2.50,tcp:80"])
        assert ipsets.list(PREFIX)["lvs-ct-x"].entries == {"192.0.2.50,tcp:80"}

    def test_deleting_absent_entry_is_not_found(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-ct-x", "hash:net", "inet")
        ipsets.add("lvs-ct-x", ["198.51.100.0/24"])
        with pytest.raises(NotFound):
            ipsets.delete("lvs-ct-x", ["198.51.100.7"])  # inside the /24, but not an entry
        assert ipsets.list(PREFIX)["lvs-ct-x"].entries == {"198.51.100.0/24"}

    def test_unknown_set_type_is_unavailable(self, ipsets: IPSets) -> None:
        with pytest.raises(KernelUnavailable, match="hash:nonsense"):
            ipsets.create("lvs-ct-t", "hash:nonsense", "inet")
        assert ipsets.list(PREFIX) == {}

    def test_name_length_limit(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-" + "x" * 27, "hash:net", "inet")  # 31: the kernel's maximum
        with pytest.raises(InvalidArgument):
            ipsets.create("lvs-" + "y" * 28, "hash:net", "inet")

    def test_entry_of_the_wrong_family_is_invalid(self, ipsets: IPSets) -> None:
        ipsets.create("lvs-ct-v6", "hash:ip,port", "inet6")
        with pytest.raises(InvalidArgument):
            ipsets.add("lvs-ct-v6", ["192.0.2.50,tcp:80"])
        ipsets.create("lvs-ct-v4", "hash:net", "inet")
        with pytest.raises(InvalidArgument):
            ipsets.add("lvs-ct-v4", ["2001:db8::/64"])
        assert all(not s.entries for s in ipsets.list(PREFIX).values())

    def test_an_unreferenced_set_is_destroyed_with_its_entries(self, ipsets: IPSets) -> None:
        """(The in-use case, a set a rule matches, is in the chains contract.)"""
        ipsets.create("lvs-ct-d", "hash:net", "inet")
        ipsets.add("lvs-ct-d", ["198.51.100.0/24"])
        ipsets.destroy("lvs-ct-d")
        assert ipsets.list(PREFIX) == {}
