"""The IPVS contract against real IPVS (Debian 6.1 in the VM), one fresh namespace per test.

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        tests/vm/test_real_ipvs.py

Each namespace gets lo up and a dummy device with 198.51.100.1/24, 2001:db8:ffff::1/64 and
default routes through it: IPv4 destinations must be unicast by the namespace's routing table
("address not unicast" otherwise). Packets (only the connection test sends one) end in the
dummy device. Besides the contract: ipvsadm itself agrees with our renderer and our decoder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from lvs_operator.compiler.plan import Destination, IPVSService
from lvs_operator.compiler.render import ipvsadm_save
from lvs_operator.kernel.errors import NotFound
from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind
from lvs_operator.kernel.real_ipvs import NetlinkIPVS
from tests.contract.ipvs_contract import (
    IPVSContract,
    OpenConnection,
    add_ops,
    assert_table,
    dest,
    mixed_table,
    tcp,
)
from tests.vm.netlab import Netns

IN_VM = os.environ.get("LVS_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM,
    reason="needs real IPVS: python -m tests.harness.vm run -- .venv/bin/python -m pytest -q "
    "-p no:cacheprovider tests/vm/test_real_ipvs.py",
)


@pytest.fixture(scope="module", autouse=True)
def _persistence_engine_module() -> None:
    """ip_vs_pe_sip is not preloaded by the harness; load it rather than rely on autoload."""
    subprocess.run(["modprobe", "ip_vs_pe_sip"], check=False, capture_output=True, timeout=60)


@pytest.fixture
def director(make_netns: Callable[[str], Netns]) -> Netns:
    ns = make_netns("ipvs")
    ns.ipr.link("add", ifname="dummy0", kind="dummy")
    ns.up("dummy0")
    ns.addr("dummy0", "198.51.100.1/24")
    ns.ipr.addr(
        "add", index=ns.link_index("dummy0"), address="2001:db8:ffff::1", prefixlen=64, flags=0x02
    )  # IFA_F_NODAD
    ns.ipr.route("add", dst="0.0.0.0/0", oif=ns.link_index("dummy0"))
    ns.ipr.route("add", dst="::/0", oif=ns.link_index("dummy0"), family=socket.AF_INET6)
    return ns


@pytest.fixture
def real_ipvs(director: Netns) -> Iterator[NetlinkIPVS]:
    with NetlinkIPVS(director.name) as table:
        yield table


class TestNetlinkIPVS(IPVSContract):
    @pytest.fixture
    def ipvs(self, real_ipvs: NetlinkIPVS) -> NetlinkIPVS:
        return real_ipvs

    @pytest.fixture
    def open_connection(self, director: Netns) -> Iterator[OpenConnection]:
        """A TCP SYN from inside the namespace to the VIP (local, on dummy0): IPVS schedules
        it to the service's only destination and the dummy device drops the rewritten packet,
        leaving a connection entry behind."""
        sockets: list[socket.socket] = []

        def open_one(service: IPVSService, d: Destination) -> None:
            vip, port = service.key.address, service.key.port
            with contextlib.suppress(Exception):  # a second connection to the same VIP
                director.addr("dummy0", f"{vip}/32")
            with director.entered():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((vip, port))

        yield open_one
        for sock in sockets:
            sock.close()


def test_ipvsadm_save_agrees_with_our_renderer(director: Netns, real_ipvs: NetlinkIPVS) -> None:
    """A table written through netlink prints, in ipvsadm's own words, what we render."""
    services = mixed_table()
    assert real_ipvs.apply(add_ops(*services)) == []
    saved = director.run(["ipvsadm", "-S", "-n"]).stdout.splitlines()
    assert saved == ipvsadm_save(services)


def test_table_written_by_ipvsadm_restore_reads_back_as_the_plan(
    director: Netns, real_ipvs: NetlinkIPVS
) -> None:
    """The other direction: our decoder reads what ipvsadm wrote."""
    services = mixed_table()
    rules = "\n".join(ipvsadm_save(services)) + "\n"
    subprocess.run(
        ["ip", "netns", "exec", director.name, "ipvsadm-restore"],
        input=rules,
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert_table(real_ipvs, *services)


@pytest.mark.parametrize("batch", [1, 7, 512])
def test_batch_size_does_not_change_the_outcome(director: Netns, batch: int) -> None:
    with NetlinkIPVS(director.name, batch=batch) as table:
        s = tcp()
        ops = [IPVSOp(IPVSOpKind.ADD_SERVICE, s)]
        for i in range(150):
            kind = IPVSOpKind.EDIT_DEST if i % 5 == 0 else IPVSOpKind.ADD_DEST
            ops.append(IPVSOp(kind, s, dest(f"198.18.3.{i + 1}", 80)))
        failures = table.apply(ops)
        assert [f.op for f in failures] == [op for op in ops if op.kind is IPVSOpKind.EDIT_DEST]
        assert all(isinstance(f.error, NotFound) for f in failures)
        assert len(table.dump()[0].destinations) == 120


def test_tables_are_per_namespace(
    make_netns: Callable[[str], Netns], director: Netns, real_ipvs: NetlinkIPVS
) -> None:
    assert real_ipvs.apply(add_ops(tcp())) == []
    with NetlinkIPVS(make_netns("other").name) as other:
        assert other.dump() == []
    with NetlinkIPVS() as root_ns:  # the VM's own namespace is untouched as well
        assert all(ls.service.key != tcp().key for ls in root_ns.dump())
