"""Address lifetimes on the real kernel, beyond the contract (tests/contract/net_contract.py):
the dead-man switch itself, and what a refresh keeps. Each test in a fresh namespace with the
`eth0` of tests/kernel/test_real_net.py.

Kernel facts these rely on (Linux 6.x, both families alike): IFA_CACHEINFO ifa_valid and
ifa_prefered read back as the lifetime last set minus the whole seconds since (0xFFFFFFFF
for forever); the address is deleted once all of it has passed (about 1.05 s for a lifetime of
1 here); RTM_NEWADDR with NLM_F_REPLACE rewrites the lifetimes, IFA_PROTO (to 0 if it is not
sent) and, for IPv6, the nodad flag, in place (the creation stamp stays).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvs_operator.kernel.netstate import AddressEntry
from lvs_operator.kernel.real_net import NetlinkAddresses
from tests.kernel.test_real_net import ip
from tests.kernel.test_real_net import netns_device as netns_device  # the fixture

REPO = Path(__file__).resolve().parents[2]
VIP4, VIP6 = "203.0.113.10", "2001:db8::10"


def _gone_within(netns: str, addresses: set[str], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    with NetlinkAddresses(netns) as reader:
        while time.monotonic() < deadline:
            if not addresses & {a.address for a in reader.list()}:
                return True
            time.sleep(0.05)
    return False


def test_a_killed_agent_loses_its_vips(netns: str, netns_device: str) -> None:
    """The dead-man switch: the process that added the VIPs dies by SIGKILL (no cleanup runs)
    and the kernel still removes them when their lifetime runs out."""
    script = (
        "import os, signal\n"
        "from lvs_operator.kernel.real_net import NetlinkAddresses\n"
        f"a = NetlinkAddresses({netns!r})\n"
        f"a.add({netns_device!r}, {VIP4!r}, 32, lifetime=2)\n"
        f"a.add('lo', {VIP6!r}, 128, lifetime=2)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    with NetlinkAddresses(netns) as reader:
        live = reader.list()
    assert {(a.address, a.owned) for a in live} >= {(VIP4, True), (VIP6, True)}
    assert _gone_within(netns, {VIP4, VIP6}, 5.0)


def test_a_refresh_changes_the_address_in_place_and_keeps_it_ours(
    netns: str, netns_device: str
) -> None:
    from pyroute2 import IPRoute

    def stamps() -> dict[str, tuple[int, int]]:
        ipr = IPRoute(netns=netns)
        try:
            return {
                str(m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")): (
                    int(m.get("IFA_CACHEINFO")["cstamp"]),
                    int(m.get("IFA_PROTO") or 0),
                )
                for m in ipr.addr("dump")
            }
        finally:
            ipr.close()

    with NetlinkAddresses(netns) as addresses:
        addresses.add(netns_device, VIP4, 32, lifetime=10)
        addresses.add(netns_device, VIP6, 128, lifetime=10)
        before = stamps()
        time.sleep(1.1)
        addresses.add(netns_device, VIP4, 32, lifetime=20)
        addresses.add(netns_device, VIP6, 128, lifetime=20)
        after = stamps()
        live = addresses.list()
    for vip in (VIP4, VIP6):
        assert after[vip] == before[vip]  # same creation stamp, IFA_PROTO still ours
    assert AddressEntry(netns_device, VIP4, 32, True, 20) in live
    assert AddressEntry(netns_device, VIP6, 128, True, 20) in live
    shown = ip(netns, "addr", "show", "dev", netns_device)
    assert shown.count("valid_lft 20sec preferred_lft 20sec") == 2, shown
    v6 = next(line for line in shown.splitlines() if VIP6 in line)
    assert "nodad" in v6 and "dynamic" in v6 and "tentative" not in v6, v6


@pytest.mark.parametrize(("address", "prefix_length"), [(VIP4, 32), (VIP6, 128)])
def test_remaining_lifetime_counts_whole_seconds(
    netns: str, netns_device: str, address: str, prefix_length: int
) -> None:
    with NetlinkAddresses(netns) as addresses:
        addresses.add(netns_device, address, prefix_length, lifetime=5)
        time.sleep(0.5)
        assert AddressEntry(netns_device, address, prefix_length, True, 5) in addresses.list()
        time.sleep(1.0)
        assert AddressEntry(netns_device, address, prefix_length, True, 4) in addresses.list()
