"""The IPVS contract: what every IPVSTable does, the in-memory fake and the netlink adapter.

A test module subclasses `IPVSContract` and provides two fixtures:

* `ipvs`: a fresh IPVSTable with no services, whose IPv4 and IPv6 destinations from the
  documentation ranges count as unicast (a real namespace needs an address and a route);
* `open_connection(service, dest)`: leaves at least one connection entry on `dest`, which
  must be the service's only destination (the real kernel: one TCP SYN from inside the
  namespace to the VIP, dropped by a dummy device; the fake: `set_connections`).

The expectations are the kernel's (Linux 6.1, ip_vs_ctl.c): a service added from a plan reads
back as `service_attributes(plan)` and each destination as `dest_attributes(plan_dest)`;
EEXIST on a second add, ESRCH/ENOENT on what is not there, ERANGE/EINVAL on values the kernel
refuses; edits happen in place; ops apply in order and a failure stops nothing after it.
Counters start at 0 and `zero` resets them (ESRCH for an unknown service) without touching the
configuration or the connection counts; the connection table lists what `open_connection` left.
Counters that move need real traffic: tests/vm/test_lvsctl_ops.py.

Sync daemons (start_sync_thread, Linux 6.1): one per state, listed with the kernel's defaults
filled in (`daemon_attributes`); EEXIST for a second of a state, ESRCH stopping one that is
not running, ENODEV for an interface the namespace lacks, EINVAL for a group that is not
multicast or while a destination of the other family exists. They run on `sync_interface`
(dummy0: the real suite's namespace has it, up with an IPv4 address; the fake takes any
name). That the backup really receives the master's connections: tests/vm/test_sync_daemon.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from lvs_operator.compiler.plan import Destination, IPVSService, ServiceKey
from lvs_operator.kernel.errors import AlreadyExists, InvalidArgument, KernelError, NotFound
from lvs_operator.kernel.ipvs import (
    IPVSOp,
    IPVSOpKind,
    IPVSStats,
    IPVSTable,
    LiveDestination,
    SyncDaemon,
    daemon_attributes,
    dest_attributes,
    service_attributes,
)

__all__ = ["SCHEDULERS", "IPVSContract", "OpenConnection", "mixed_table"]

OpenConnection = Callable[[IPVSService, Destination], None]

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")
VIP4, VIP6 = "203.0.113.10", "2001:db8::10"
RS4 = tuple(f"192.0.2.{i}" for i in range(11, 31))
RS6 = tuple(f"2001:db8:1::{i:x}" for i in range(11, 31))

K = IPVSOpKind


def tcp(address: str = VIP4, port: int = 80, scheduler: str = "rr", **kw: Any) -> IPVSService:
    family = 6 if ":" in address else 4
    return IPVSService(ServiceKey(family, "tcp", address, port, 0), scheduler, **kw)


def svc(protocol: str, address: str, port: int, scheduler: str = "wlc", **kw: Any) -> IPVSService:
    family = 6 if ":" in address else 4
    return IPVSService(ServiceKey(family, protocol, address, port, 0), scheduler, **kw)


def fwmark(mark: int, family: int = 4, scheduler: str = "wlc", **kw: Any) -> IPVSService:
    return IPVSService(ServiceKey(family, "", "", 0, mark), scheduler, **kw)


def dest(
    address: str = RS4[0], port: int = 8080, forward: str = "masq", weight: int = 1, **kw: Any
) -> Destination:
    return Destination(address, port, forward, weight, **kw)


def tunnel(
    address: str, kind: str = "ipip", port: int = 0, checksum: str = "", **kw: Any
) -> Destination:
    return dest(
        address, 80, "tunnel", 1, tunnel_type=kind, tunnel_port=port, tunnel_checksum=checksum, **kw
    )


def with_dests(service: IPVSService, *dests: Destination) -> IPVSService:
    return service._replace(destinations=tuple(dests))


def add_ops(*services: IPVSService) -> list[IPVSOp]:
    """What the agent sends for new services: each service, then its destinations."""
    ops = []
    for s in services:
        ops.append(IPVSOp(K.ADD_SERVICE, s))
        ops.extend(IPVSOp(K.ADD_DEST, s, d) for d in s.destinations)
    return ops


def apply_ok(ipvs: IPVSTable, ops: Iterable[IPVSOp]) -> None:
    failures = ipvs.apply(list(ops))
    assert failures == [], [f"{f.op}: {f.error}" for f in failures]


def live_table(
    ipvs: IPVSTable,
) -> dict[ServiceKey, tuple[IPVSService, dict[tuple[str, int], LiveDestination]]]:
    out = {}
    for ls in ipvs.dump():
        dests = {ld.dest.key: ld for ld in ls.destinations}
        assert len(dests) == len(ls.destinations), ls
        assert ls.service.key not in out, ls.service.key
        out[ls.service.key] = (ls.service, dests)
    return out


def assert_table(ipvs: IPVSTable, *planned: IPVSService) -> None:
    """The live table is exactly the plan's services with their destinations (attributes the
    kernel stores only; connection counts ignored)."""
    live = {
        key: (s, {k: ld.dest for k, ld in dests.items()})
        for key, (s, dests) in live_table(ipvs).items()
    }
    want = {
        s.key: (service_attributes(s), {d.key: dest_attributes(d) for d in s.destinations})
        for s in planned
    }
    assert live == want


def mixed_table() -> list[IPVSService]:
    """One of almost everything IPVS holds (no thresholds: ipvsadm-save does not print them)."""
    return [
        with_dests(
            tcp(scheduler="wrr"), dest(RS4[0], 8080, weight=3), dest(RS4[1], 8080, weight=1)
        ),
        with_dests(
            svc("udp", "203.0.113.11", 53, "wlc", persistence_timeout=600, persistence_prefix=24),
            dest(RS4[2], 53, "route"),
            dest(RS4[3], 53, "route", weight=0),
        ),
        with_dests(svc("sctp", "203.0.113.12", 3868, "rr"), dest(RS4[4], 3868)),
        with_dests(
            svc(
                "udp",
                "203.0.113.13",
                5060,
                "rr",
                persistence_timeout=60,
                persistence_prefix=32,
                persistence_engine="sip",
                one_packet=True,
            ),
            dest(RS4[5], 5060, "route"),
        ),
        with_dests(
            tcp(
                VIP6,
                443,
                "mh",
                flags=("mh-fallback", "mh-port"),
                persistence_timeout=300,
                persistence_prefix=64,
            ),
            dest(RS6[0], 443, "route", 2),
            tunnel(RS6[1], "gue", 6080, "csum")._replace(port=443),
            tunnel(RS6[2], "gre", 0, "csum")._replace(port=443),
        ),
        with_dests(
            fwmark(7, 4, "sh", flags=("sh-fallback", "sh-port")),
            tunnel(RS4[6], "ipip")._replace(port=0),
            tunnel(RS4[7], "gue", 5555, "none")._replace(port=0),
        ),
        with_dests(
            fwmark(8, 6, "lc", persistence_timeout=900, persistence_prefix=48),
            dest(RS6[3], 0, "route"),
        ),
        with_dests(tcp("203.0.113.14", 8443, "sed"), dest(RS4[8], 443, weight=65535)),
    ]


class IPVSContract:
    """Subclass with `ipvs` and `open_connection` fixtures."""

    # round trips ------------------------------------------------------------------------
    def test_probe_and_empty_table(self, ipvs: IPVSTable) -> None:
        ipvs.probe()
        assert ipvs.dump() == []
        assert ipvs.apply([]) == []

    @pytest.mark.parametrize("scheduler", SCHEDULERS)
    def test_every_scheduler_round_trips(self, ipvs: IPVSTable, scheduler: str) -> None:
        s = with_dests(tcp(scheduler=scheduler), dest(RS4[0]), dest(RS4[1], weight=2))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    @pytest.mark.parametrize(
        ("scheduler", "flags"),
        [
            ("sh", ("sh-fallback",)),
            ("sh", ("sh-port",)),
            ("sh", ("sh-fallback", "sh-port")),
            ("mh", ("mh-fallback",)),
            ("mh", ("mh-port",)),
            ("mh", ("mh-fallback", "mh-port")),
        ],
    )
    def test_scheduler_flags_round_trip(
        self, ipvs: IPVSTable, scheduler: str, flags: tuple[str, ...]
    ) -> None:
        s = with_dests(tcp(scheduler=scheduler, flags=flags), dest())
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    @pytest.mark.parametrize("prefix", [32, 24, 16, 0])
    def test_persistence_with_netmask_v4(self, ipvs: IPVSTable, prefix: int) -> None:
        s = with_dests(tcp(persistence_timeout=600, persistence_prefix=prefix), dest())
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)
        ((live, _),) = live_table(ipvs).values()
        assert (live.persistence_timeout, live.persistence_prefix) == (600, prefix)

    @pytest.mark.parametrize("prefix", [128, 64, 48, 1])
    def test_persistence_with_prefix_v6(self, ipvs: IPVSTable, prefix: int) -> None:
        s = with_dests(tcp(VIP6, persistence_timeout=3600, persistence_prefix=prefix), dest(RS6[0]))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)
        ((live, _),) = live_table(ipvs).values()
        assert (live.persistence_timeout, live.persistence_prefix) == (3600, prefix)

    def test_plan_only_persistence_fields_are_not_stored(self, ipvs: IPVSTable) -> None:
        """Without a timeout there is no persistence: prefix and engine do not read back."""
        s = tcp(persistence_timeout=0, persistence_prefix=24, persistence_engine="sip")
        apply_ok(ipvs, add_ops(s))
        ((live, _),) = live_table(ipvs).values()
        assert (live.persistence_prefix, live.persistence_engine) == (0, "")
        assert_table(ipvs, s)

    def test_sip_persistence_engine_and_one_packet_on_udp(self, ipvs: IPVSTable) -> None:
        s = with_dests(
            svc(
                "udp",
                "203.0.113.11",
                5060,
                "rr",
                persistence_timeout=60,
                persistence_prefix=32,
                persistence_engine="sip",
                one_packet=True,
            ),
            dest(RS4[0], 5060, "route"),
        )
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    def test_one_packet_without_persistence(self, ipvs: IPVSTable) -> None:
        s = with_dests(svc("udp", "203.0.113.11", 53, "rr", one_packet=True), dest(RS4[0], 53))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    @pytest.mark.parametrize("family", [4, 6])
    def test_fwmark_service(self, ipvs: IPVSTable, family: int) -> None:
        rs = RS4 if family == 4 else RS6
        s = with_dests(
            fwmark(
                0x10 + family,
                family,
                persistence_timeout=300,
                persistence_prefix=24 if family == 4 else 64,
            ),
            dest(rs[0], 0, "route"),
            dest(rs[1], 0, "route", weight=5),
        )
        plain = with_dests(fwmark(0x20 + family, family, "rr"), dest(rs[2], 0, "masq"))
        apply_ok(ipvs, add_ops(s, plain))
        assert_table(ipvs, s, plain)

    def test_sctp_service(self, ipvs: IPVSTable) -> None:
        s = with_dests(
            svc("sctp", "203.0.113.12", 3868, "rr"), dest(RS4[0], 3868), dest(RS4[1], 3868)
        )
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    def test_same_address_and_port_on_each_protocol_are_three_services(
        self, ipvs: IPVSTable
    ) -> None:
        services = [
            with_dests(svc(p, VIP4, 5000, "rr"), dest(RS4[i], 5000))
            for i, p in enumerate(("tcp", "udp", "sctp"))
        ]
        apply_ok(ipvs, add_ops(*services))
        assert_table(ipvs, *services)

    def test_ipv6_service_and_destinations(self, ipvs: IPVSTable) -> None:
        s = with_dests(
            tcp(VIP6, 443, "wlc"),
            dest(RS6[0], 443, "masq", 2),
            dest(RS6[1], 443, "route", 3),
            tunnel(RS6[2])._replace(port=443),
        )
        u = with_dests(svc("udp", "2001:db8:ffff::53", 53, "rr"), dest("2001:db8:2::53", 53))
        apply_ok(ipvs, add_ops(s, u))
        assert_table(ipvs, s, u)

    def test_ipv6_addresses_read_back_compressed(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp("2001:db8:0:1::10", 80), dest("2001:db8:0:2::1", 80))
        apply_ok(ipvs, add_ops(s))
        ((live, dests),) = live_table(ipvs).values()
        assert live.key.address == "2001:db8:0:1::10"
        assert list(dests) == [("2001:db8:0:2::1", 80)]

    @pytest.mark.parametrize(
        "d",
        [
            dest(RS4[0], 8080, "masq"),
            dest(RS4[0], 80, "route"),
            tunnel(RS4[0], "ipip"),
            tunnel(RS4[0], "gue", 6080, "none"),
            tunnel(RS4[0], "gue", 6080, "csum"),
            tunnel(RS4[0], "gue", 65535, "remcsum"),
            tunnel(RS4[0], "gre", 0, "none"),
            tunnel(RS4[0], "gre", 0, "csum"),  # remcsum is gue only (ipvsadm refuses it)
        ],
        ids=[
            "masq",
            "route",
            "ipip",
            "gue",
            "gue-csum",
            "gue-remcsum",
            "gre",
            "gre-csum",
        ],
    )
    @pytest.mark.parametrize("family", [4, 6])
    def test_forwarding_method(self, ipvs: IPVSTable, d: Destination, family: int) -> None:
        vip, address = (VIP4, d.address) if family == 4 else (VIP6, RS6[0])
        s = with_dests(tcp(vip, 80), d._replace(address=address))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    def test_ipv4_tunnel_destination_in_an_ipv6_service(self, ipvs: IPVSTable) -> None:
        """Mixed families are allowed for tunnelling only."""
        s = with_dests(tcp(VIP6, 80), tunnel(RS4[0], "ipip"))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    @pytest.mark.parametrize("weight", [0, 1, 100, 65535])
    def test_weights(self, ipvs: IPVSTable, weight: int) -> None:
        s = with_dests(tcp(scheduler="wrr"), dest(weight=weight))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    @pytest.mark.parametrize(("upper", "lower"), [(1000, 100), (50, 0), (7, 7), (65535, 1)])
    def test_thresholds(self, ipvs: IPVSTable, upper: int, lower: int) -> None:
        s = with_dests(tcp(), dest(upper_threshold=upper, lower_threshold=lower))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    def test_plan_only_destination_fields_are_not_stored(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(), dest(weight=0, draining=True, source="default/rs-1"))
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)
        ((_, dests),) = live_table(ipvs).values()
        (live,) = dests.values()
        assert (live.dest.draining, live.dest.source) == (False, "")

    def test_dump_holds_many_services(self, ipvs: IPVSTable) -> None:
        """More services than one netlink dump message carries."""
        services = [
            with_dests(tcp(f"198.18.{i // 250}.{i % 250 + 1}", 80 + i % 3), dest(RS4[i % 20], 80))
            for i in range(300)
        ]
        apply_ok(ipvs, add_ops(*services))
        assert_table(ipvs, *services)

    def test_dump_holds_many_destinations(self, ipvs: IPVSTable) -> None:
        """More destinations of one service than one netlink dump message carries."""
        dests = [dest(f"198.18.{1 + i // 250}.{i % 250 + 1}", 80, "route") for i in range(400)]
        s = with_dests(tcp(), *dests)
        apply_ok(ipvs, add_ops(s))
        assert_table(ipvs, s)

    # refusals -----------------------------------------------------------------------------
    def test_second_add_of_a_service_is_already_exists(self, ipvs: IPVSTable) -> None:
        s = tcp()
        apply_ok(ipvs, add_ops(s))
        (failure,) = ipvs.apply([IPVSOp(K.ADD_SERVICE, s._replace(scheduler="wrr"))])
        assert isinstance(failure.error, AlreadyExists)
        assert_table(ipvs, s)

    def test_second_add_of_a_destination_is_already_exists(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(), dest())
        apply_ok(ipvs, add_ops(s))
        (failure,) = ipvs.apply([IPVSOp(K.ADD_DEST, s, dest(weight=9))])
        assert isinstance(failure.error, AlreadyExists)
        assert_table(ipvs, s)

    @pytest.mark.parametrize(
        "kind", [K.EDIT_SERVICE, K.DEL_SERVICE, K.ADD_DEST, K.EDIT_DEST, K.DEL_DEST]
    )
    def test_ops_on_a_missing_service_are_not_found(
        self, ipvs: IPVSTable, kind: IPVSOpKind
    ) -> None:
        other = tcp(port=81)
        apply_ok(ipvs, add_ops(other))
        d = None if kind in (K.EDIT_SERVICE, K.DEL_SERVICE) else dest()
        (failure,) = ipvs.apply([IPVSOp(kind, tcp(port=80), d)])
        assert isinstance(failure.error, NotFound), failure
        assert_table(ipvs, other)

    @pytest.mark.parametrize("kind", [K.EDIT_DEST, K.DEL_DEST])
    def test_edit_or_delete_of_a_missing_destination_is_not_found(
        self, ipvs: IPVSTable, kind: IPVSOpKind
    ) -> None:
        s = with_dests(tcp(), dest(RS4[0]))
        apply_ok(ipvs, add_ops(s))
        for missing in (dest(RS4[1]), dest(RS4[0], port=8081)):
            (failure,) = ipvs.apply([IPVSOp(kind, s, missing)])
            assert isinstance(failure.error, NotFound), failure
        assert_table(ipvs, s)

    def test_unknown_scheduler_is_invalid(self, ipvs: IPVSTable) -> None:
        (failure,) = ipvs.apply([IPVSOp(K.ADD_SERVICE, tcp(scheduler="nosuch"))])
        assert isinstance(failure.error, InvalidArgument), failure
        apply_ok(ipvs, add_ops(tcp()))
        (failure,) = ipvs.apply([IPVSOp(K.EDIT_SERVICE, tcp(scheduler="nosuch"))])
        assert isinstance(failure.error, InvalidArgument), failure
        assert_table(ipvs, tcp())

    def test_lower_threshold_above_upper_is_invalid(self, ipvs: IPVSTable) -> None:
        """ip_vs_add_dest/ip_vs_edit_dest: ERANGE, even when the upper threshold is 0."""
        s = with_dests(tcp(), dest(RS4[0]))
        apply_ok(ipvs, add_ops(s))
        failures = ipvs.apply(
            [
                IPVSOp(K.ADD_DEST, s, dest(RS4[1], upper_threshold=10, lower_threshold=11)),
                IPVSOp(K.ADD_DEST, s, dest(RS4[2], upper_threshold=0, lower_threshold=1)),
                IPVSOp(K.EDIT_DEST, s, dest(RS4[0], upper_threshold=1, lower_threshold=2)),
            ]
        )
        assert [type(f.error) for f in failures] == [InvalidArgument] * 3, failures
        assert_table(ipvs, s)

    @pytest.mark.parametrize("kind", [K.ADD_DEST, K.EDIT_DEST])
    def test_gue_without_a_port_is_invalid(self, ipvs: IPVSTable, kind: IPVSOpKind) -> None:
        s = with_dests(tcp(), tunnel(RS4[0], "ipip"))
        apply_ok(ipvs, add_ops(s))
        address = RS4[1] if kind is K.ADD_DEST else RS4[0]
        (failure,) = ipvs.apply([IPVSOp(kind, s, tunnel(address, "gue", 0, "none"))])
        assert isinstance(failure.error, InvalidArgument), failure
        assert_table(ipvs, s)

    def test_destination_of_the_other_family_needs_a_tunnel(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(), dest(RS4[0]))
        apply_ok(ipvs, add_ops(s))
        (failure,) = ipvs.apply([IPVSOp(K.ADD_DEST, s, dest(RS6[0], forward="route"))])
        assert isinstance(failure.error, InvalidArgument), failure
        assert_table(ipvs, s)

    # edits ------------------------------------------------------------------------------
    def test_edit_service_in_place_keeps_destinations(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(scheduler="rr"), dest(RS4[0]), dest(RS4[1]))
        apply_ok(ipvs, add_ops(s))
        edited = s._replace(
            scheduler="sh",
            flags=("sh-port",),
            persistence_timeout=900,
            persistence_prefix=24,
            one_packet=True,
        )
        apply_ok(ipvs, [IPVSOp(K.EDIT_SERVICE, edited)])
        assert_table(ipvs, edited)
        back = s._replace(scheduler="wlc")  # persistence and flags cleared again
        apply_ok(ipvs, [IPVSOp(K.EDIT_SERVICE, back)])
        assert_table(ipvs, back)

    def test_edit_service_changes_the_persistence_engine(self, ipvs: IPVSTable) -> None:
        s = with_dests(
            svc("udp", VIP4, 5060, "rr", persistence_timeout=60, persistence_prefix=32),
            dest(RS4[0], 5060),
        )
        apply_ok(ipvs, add_ops(s))
        with_sip = s._replace(persistence_engine="sip")
        apply_ok(ipvs, [IPVSOp(K.EDIT_SERVICE, with_sip)])
        assert_table(ipvs, with_sip)
        apply_ok(ipvs, [IPVSOp(K.EDIT_SERVICE, s)])
        assert_table(ipvs, s)

    def test_edit_destination_in_place(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(), dest(RS4[0], weight=1), dest(RS4[1], weight=2))
        apply_ok(ipvs, add_ops(s))
        changes = [
            dest(RS4[0], weight=0),
            dest(RS4[0], weight=65535, upper_threshold=300, lower_threshold=30),
            dest(RS4[0], forward="route"),
            tunnel(RS4[0], "gue", 6080, "remcsum")._replace(port=8080),
            tunnel(RS4[0], "gre", 0, "csum")._replace(port=8080),
            dest(RS4[0], weight=4),
        ]
        for new in changes:
            apply_ok(ipvs, [IPVSOp(K.EDIT_DEST, s, new)])
            assert_table(ipvs, with_dests(s, new, s.destinations[1]))

    def test_edit_destination_keeps_its_connections(
        self, ipvs: IPVSTable, open_connection: OpenConnection
    ) -> None:
        """An edit is connection-count safe: the kernel object stays (never delete + add)."""
        d = dest(RS4[0], 80, weight=5)
        s = with_dests(tcp(scheduler="rr"), d)
        apply_ok(ipvs, add_ops(s))
        open_connection(s, d)

        def conns() -> int:
            ((_, dests),) = live_table(ipvs).values()
            live = dests[d.key]
            return live.active_conns + live.inactive_conns

        before = conns()
        assert before >= 1
        apply_ok(ipvs, [IPVSOp(K.EDIT_DEST, s, d._replace(weight=0, upper_threshold=10))])
        assert conns() == before
        apply_ok(ipvs, [IPVSOp(K.EDIT_SERVICE, s._replace(scheduler="wrr"))])
        assert conns() == before
        assert_table(
            ipvs, with_dests(s._replace(scheduler="wrr"), d._replace(weight=0, upper_threshold=10))
        )

    # deletes ----------------------------------------------------------------------------
    def test_delete_destination(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(), dest(RS4[0]), dest(RS4[1]))
        apply_ok(ipvs, add_ops(s))
        apply_ok(ipvs, [IPVSOp(K.DEL_DEST, s, dest(RS4[0], weight=77))])  # identity only
        assert_table(ipvs, with_dests(s, dest(RS4[1])))

    def test_delete_service_removes_its_destinations(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(), dest(RS4[0]), dest(RS4[1]))
        keep = with_dests(tcp(port=443), dest(RS4[2], 443))
        apply_ok(ipvs, add_ops(s, keep))
        apply_ok(ipvs, [IPVSOp(K.DEL_SERVICE, s._replace(scheduler="wrr"))])  # identity only
        assert_table(ipvs, keep)
        apply_ok(ipvs, [IPVSOp(K.ADD_SERVICE, s)])  # comes back empty
        assert_table(ipvs, keep, with_dests(s))

    # batches ----------------------------------------------------------------------------
    def test_service_then_its_destinations_in_one_apply(self, ipvs: IPVSTable) -> None:
        services = [
            with_dests(
                tcp(f"198.18.0.{i}", 80), *(dest(f"198.18.1.{10 * i + j}", 80) for j in range(7))
            )
            for i in range(1, 21)
        ]
        ops = add_ops(*services)
        assert len(ops) == 160  # several netlink batches
        apply_ok(ipvs, ops)
        assert_table(ipvs, *services)

    def test_add_edit_delete_in_one_apply_run_in_order(self, ipvs: IPVSTable) -> None:
        s = tcp()
        d = dest()
        ops = [
            IPVSOp(K.ADD_SERVICE, s),
            IPVSOp(K.ADD_DEST, s, d),
            IPVSOp(K.EDIT_DEST, s, d._replace(weight=3)),
            IPVSOp(K.DEL_DEST, s, d),
            IPVSOp(K.ADD_DEST, s, d._replace(weight=4)),
            IPVSOp(K.EDIT_SERVICE, s._replace(scheduler="lc")),
        ]
        apply_ok(ipvs, ops)
        assert_table(ipvs, with_dests(s._replace(scheduler="lc"), d._replace(weight=4)))

    def test_apply_continues_after_a_failure_and_reports_exactly_that_op(
        self, ipvs: IPVSTable
    ) -> None:
        s = tcp()
        ops = [
            IPVSOp(K.ADD_SERVICE, s),
            IPVSOp(K.ADD_SERVICE, s),  # EEXIST
            IPVSOp(K.ADD_DEST, s, dest(RS4[0])),
            IPVSOp(K.EDIT_DEST, s, dest(RS4[5])),  # ENOENT
            IPVSOp(K.ADD_DEST, s, dest(RS4[1])),
        ]
        failures = ipvs.apply(ops)
        assert [(f.op, type(f.error)) for f in failures] == [
            (ops[1], AlreadyExists),
            (ops[3], NotFound),
        ]
        assert all(isinstance(f.error, KernelError) and str(f.error) for f in failures)
        assert_table(ipvs, with_dests(s, dest(RS4[0]), dest(RS4[1])))

    def test_failures_across_many_batches_are_matched_to_their_ops(self, ipvs: IPVSTable) -> None:
        s = tcp()
        ops = [IPVSOp(K.ADD_SERVICE, s)]
        expected_failures = []
        for i in range(300):
            d = dest(f"198.18.2.{i % 250 + 1}", 1000 + i)
            if i % 7 == 3:
                op = IPVSOp(K.EDIT_DEST, s, d)  # never added: NotFound
                expected_failures.append(op)
            else:
                op = IPVSOp(K.ADD_DEST, s, d)
            ops.append(op)
        failures = ipvs.apply(ops)
        assert [f.op for f in failures] == expected_failures
        assert all(isinstance(f.error, NotFound) for f in failures)
        added = [op.dest for op in ops[1:] if op.kind is K.ADD_DEST and op.dest is not None]
        assert_table(ipvs, with_dests(s, *added))

    def test_mixed_table_round_trips(self, ipvs: IPVSTable) -> None:
        services = mixed_table()
        apply_ok(ipvs, add_ops(*services))
        assert_table(ipvs, *services)

    # counters and the connection table ------------------------------------------------
    def test_fresh_services_have_zero_counters_and_rates(self, ipvs: IPVSTable) -> None:
        services = [
            with_dests(tcp(), dest(RS4[0]), dest(RS4[1])),
            with_dests(fwmark(9, 6, "rr"), dest(RS6[0], 0, "route")),
            tcp(port=81),  # no destinations
        ]
        apply_ok(ipvs, add_ops(*services))
        live = ipvs.dump()
        assert len(live) == 3
        for ls in live:
            assert ls.stats == IPVSStats(), ls.service.key
            assert [ld.stats for ld in ls.destinations] == [IPVSStats()] * len(ls.destinations)

    def test_zero_one_service_or_all_keeps_the_configuration(self, ipvs: IPVSTable) -> None:
        s = with_dests(tcp(scheduler="wrr"), dest(RS4[0], weight=3), dest(RS4[1]))
        empty = tcp(port=81)
        mark = with_dests(fwmark(9, 4, "rr"), dest(RS4[2], 0, "route"))
        apply_ok(ipvs, add_ops(s, empty, mark))
        ipvs.zero(s.key)
        ipvs.zero(empty.key)
        ipvs.zero(mark.key)
        ipvs.zero()
        assert_table(ipvs, s, empty, mark)
        assert all(ls.stats == IPVSStats() for ls in ipvs.dump())

    def test_zero_everything_on_an_empty_table(self, ipvs: IPVSTable) -> None:
        ipvs.zero()
        ipvs.zero(None)
        assert ipvs.dump() == []

    @pytest.mark.parametrize(
        "missing",
        [
            tcp(port=81).key,
            svc("udp", VIP4, 80).key,
            tcp(VIP6).key,
            fwmark(77).key,
            fwmark(9, 6).key,  # mark 9 exists, but for IPv4 only
        ],
        ids=["other-port", "other-protocol", "ipv6", "fwmark", "fwmark-other-family"],
    )
    def test_zero_of_an_unknown_service_is_not_found(
        self, ipvs: IPVSTable, missing: ServiceKey
    ) -> None:
        apply_ok(ipvs, add_ops(tcp(), fwmark(9, 4, "rr")))
        with pytest.raises(NotFound):
            ipvs.zero(missing)
        assert_table(ipvs, tcp(), fwmark(9, 4, "rr"))

    def test_connection_table_of_an_idle_table_is_empty(self, ipvs: IPVSTable) -> None:
        assert ipvs.connections() == []
        apply_ok(ipvs, add_ops(with_dests(tcp(), dest())))
        assert ipvs.connections() == []

    def test_an_open_connection_is_in_the_connection_table(
        self, ipvs: IPVSTable, open_connection: OpenConnection
    ) -> None:
        d = dest(RS4[0], 80, weight=5)
        s = with_dests(tcp(scheduler="rr"), d)
        apply_ok(ipvs, add_ops(s))
        open_connection(s, d)
        entries = [c for c in ipvs.connections() if (c.virtual, c.virtual_port) == (VIP4, 80)]
        assert entries, ipvs.connections()
        for c in entries:
            assert (c.protocol, c.destination, c.destination_port) == ("TCP", RS4[0], 80)
            assert c.client.count(".") == 3 and 0 < c.client_port < 65536
            assert c.state and 0 < c.expires <= 15 * 60  # the TCP timeouts are at most 15 min

        def conns() -> int:
            ((_, dests),) = live_table(ipvs).values()
            return dests[d.key].active_conns + dests[d.key].inactive_conns

        before = conns()
        ipvs.zero(s.key)  # counters, not connections
        ipvs.zero()
        assert conns() == before >= 1

    # sync daemons -----------------------------------------------------------------------
    @pytest.fixture
    def sync_interface(self) -> str:
        """An interface of the table's namespace, up, with an IPv4 address, MTU 1500."""
        return "dummy0"

    def test_no_sync_daemon_runs_at_first(self, ipvs: IPVSTable) -> None:
        assert ipvs.daemons() == []

    @pytest.mark.parametrize("state", ["master", "backup"])
    def test_start_a_sync_daemon_with_the_kernel_defaults(
        self, ipvs: IPVSTable, sync_interface: str, state: str
    ) -> None:
        d = SyncDaemon(state, sync_interface, 7)
        ipvs.start_daemon(d)
        # 224.0.0.81:8848, TTL 1, 1500-byte MTU less IPv4 and UDP headers
        assert ipvs.daemons() == [SyncDaemon(state, sync_interface, 7, 1472, "224.0.0.81", 8848, 1)]
        assert ipvs.daemons() == [daemon_attributes(d)]

    @pytest.mark.parametrize(
        ("d", "stored_maxlen"),
        [
            (SyncDaemon("master", "", 1, 1200, "239.255.0.1", 9000, 4), 1200),
            (SyncDaemon("master", "", 255, 100, "", 0, 255), 100),
            (SyncDaemon("backup", "", 0, 600, "239.1.2.3", 65535, 0), 1024),  # at least 1024
            (SyncDaemon("backup", "", 3, 65535, "", 0, 0), 65535 - 28),
            (SyncDaemon("master", "", 9, 0, "ff02::1:81", 9100, 2), 1500 - 48),  # IPv6 headers
        ],
    )
    def test_sync_daemon_settings_round_trip(
        self, ipvs: IPVSTable, sync_interface: str, d: SyncDaemon, stored_maxlen: int
    ) -> None:
        d = d._replace(interface=sync_interface)
        ipvs.start_daemon(d)
        (live,) = ipvs.daemons()
        assert live == daemon_attributes(d)
        assert live.sync_maxlen == stored_maxlen
        assert (live.state, live.interface, live.sync_id) == (d.state, d.interface, d.sync_id)

    def test_master_and_backup_run_side_by_side_and_list_master_first(
        self, ipvs: IPVSTable, sync_interface: str
    ) -> None:
        backup = SyncDaemon("backup", sync_interface, 7)
        master = SyncDaemon("master", sync_interface, 8, mcast_port=9000)
        ipvs.start_daemon(backup)
        ipvs.start_daemon(master)
        assert ipvs.daemons() == [daemon_attributes(master), daemon_attributes(backup)]

    @pytest.mark.parametrize(("stopped", "kept"), [("master", "backup"), ("backup", "master")])
    def test_stop_one_sync_daemon_keeps_the_other(
        self, ipvs: IPVSTable, sync_interface: str, stopped: str, kept: str
    ) -> None:
        for state in ("master", "backup"):
            ipvs.start_daemon(SyncDaemon(state, sync_interface, 7))
        ipvs.stop_daemon(stopped)
        assert ipvs.daemons() == [daemon_attributes(SyncDaemon(kept, sync_interface, 7))]
        ipvs.stop_daemon(kept)
        assert ipvs.daemons() == []
        ipvs.start_daemon(SyncDaemon(stopped, sync_interface, 9))  # can start again
        assert [d.sync_id for d in ipvs.daemons()] == [9]

    @pytest.mark.parametrize("state", ["master", "backup"])
    def test_second_start_of_a_state_is_already_exists(
        self, ipvs: IPVSTable, sync_interface: str, state: str
    ) -> None:
        first = SyncDaemon(state, sync_interface, 7)
        ipvs.start_daemon(first)
        for again in (first, first._replace(sync_id=8, mcast_port=9000)):
            with pytest.raises(AlreadyExists):
                ipvs.start_daemon(again)
        assert ipvs.daemons() == [daemon_attributes(first)]  # the running one is untouched

    @pytest.mark.parametrize("state", ["master", "backup"])
    def test_stop_of_a_daemon_that_is_not_running_is_not_found(
        self, ipvs: IPVSTable, sync_interface: str, state: str
    ) -> None:
        with pytest.raises(NotFound):
            ipvs.stop_daemon(state)
        other = "backup" if state == "master" else "master"
        ipvs.start_daemon(SyncDaemon(other, sync_interface, 7))
        with pytest.raises(NotFound):  # the other state's daemon does not count
            ipvs.stop_daemon(state)
        ipvs.stop_daemon(other)
        with pytest.raises(NotFound):  # nor one that was stopped
            ipvs.stop_daemon(other)

    @pytest.mark.parametrize("state", ["master", "backup"])
    @pytest.mark.parametrize("name", ["", "no/such0", "no such0", "lvs:0"])
    def test_unknown_interface_is_not_found_and_names_it(
        self, ipvs: IPVSTable, state: str, name: str
    ) -> None:
        """Names no Linux interface can have, so no namespace has them: the kernel looks
        them up and finds nothing (ENODEV). A valid name the namespace merely lacks is the
        same error: tests/vm/test_sync_daemon.py."""
        with pytest.raises(NotFound, match="interface") as info:
            ipvs.start_daemon(SyncDaemon(state, name, 7))
        assert repr(name) in str(info.value)
        assert ipvs.daemons() == []

    def test_unknown_interface_is_reported_before_a_running_daemon(
        self, ipvs: IPVSTable, sync_interface: str
    ) -> None:
        ipvs.start_daemon(SyncDaemon("master", sync_interface, 7))
        with pytest.raises(NotFound):
            ipvs.start_daemon(SyncDaemon("master", "no/such0", 7))

    @pytest.mark.parametrize(
        "bad",
        [
            SyncDaemon("primary", "", 7),
            SyncDaemon("master", "", 256),
            SyncDaemon("master", "", -1),
            SyncDaemon("backup", "", 7, mcast_group="192.0.2.1"),  # not multicast
            SyncDaemon("master", "", 7, mcast_group="2001:db8::1"),
            SyncDaemon("master", "", 7, mcast_group="not-an-address"),
            SyncDaemon("master", "", 7, mcast_port=65536),
            SyncDaemon("master", "", 7, mcast_ttl=256),
            SyncDaemon("master", "", 7, sync_maxlen=65536),
            SyncDaemon("master", "a" * 16, 7),  # IFNAMSIZ
        ],
        ids=str,
    )
    def test_values_the_kernel_refuses_are_invalid(
        self, ipvs: IPVSTable, sync_interface: str, bad: SyncDaemon
    ) -> None:
        if not bad.interface:
            bad = bad._replace(interface=sync_interface)
        with pytest.raises(InvalidArgument):
            ipvs.start_daemon(bad)
        assert ipvs.daemons() == []

    def test_stop_of_an_unknown_state_is_invalid(self, ipvs: IPVSTable) -> None:
        with pytest.raises(InvalidArgument):
            ipvs.stop_daemon("primary")

    def test_no_sync_daemon_while_a_destination_has_the_other_family(
        self, ipvs: IPVSTable, sync_interface: str
    ) -> None:
        """The sync protocol cannot carry mixed-family connections: either order is EINVAL."""
        mixed = with_dests(tcp(VIP6, 80), tunnel(RS4[0], "ipip"))
        apply_ok(ipvs, add_ops(mixed))
        with pytest.raises(InvalidArgument):
            ipvs.start_daemon(SyncDaemon("master", sync_interface, 7))
        apply_ok(ipvs, [IPVSOp(K.DEL_DEST, mixed, mixed.destinations[0])])
        ipvs.start_daemon(SyncDaemon("backup", sync_interface, 7))
        (failure,) = ipvs.apply([IPVSOp(K.ADD_DEST, mixed, tunnel(RS4[1], "ipip"))])
        assert isinstance(failure.error, InvalidArgument), failure
        apply_ok(ipvs, [IPVSOp(K.ADD_DEST, mixed, tunnel(RS6[0], "ipip"))])  # same family: fine

    @pytest.mark.parametrize("state", ["master", "backup"])
    def test_stop_right_after_start(self, ipvs: IPVSTable, sync_interface: str, state: str) -> None:
        """The kernel may stop a sync thread before it first ran (it then sends no ack)."""
        for sync_id in range(3):
            ipvs.start_daemon(SyncDaemon(state, sync_interface, sync_id))
            ipvs.stop_daemon(state)
            assert ipvs.daemons() == []
