"""The tunnel contract against NetlinkTunnels inside the qemu guest (Debian 6.1 kernel), which
has what this host's kernel lacks: ipip, ip_gre, ip6_tunnel, ip6_gre and fou. Since the guest
runs an older kernel than the host, the address and sysctl contracts run here too (IFA_PROTO
needs Linux >= 5.18).

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        tests/vm/test_real_tunnels.py

Module loading is checked the way the agent meets it: NET_ADMIN without SYS_MODULE, so the
kernel's own request_module() from rtnetlink / generic netlink is the only way in.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lvs_operator.compiler.plan import TunnelDevice
from lvs_operator.kernel.real_net import NetlinkAddresses, NetlinkTunnels, ProcSysctls
from tests.contract.net_contract import AddressesContract, SysctlsContract, TunnelsContract
from tests.vm.netlab import Netns

FALLBACKS = [
    TunnelDevice("tunl0", "ipip"),
    TunnelDevice("gre0", "gre"),
    TunnelDevice("ip6tnl0", "ip6tnl"),
    TunnelDevice("ip6gre0", "ip6gre"),
]
GUE = [FALLBACKS[0]._replace(fou_port=5555), FALLBACKS[2]._replace(fou_port=5556)]
MODULES = {"ipip": "ipip", "gre": "ip_gre", "ip6tnl": "ip6_tunnel", "ip6gre": "ip6_gre"}
REPO = Path(__file__).resolve().parents[2]


def loaded_modules() -> set[str]:
    with open("/proc/modules") as fh:
        return {line.split()[0] for line in fh}


def modprobe(*argv: str) -> subprocess.CompletedProcess[str]:
    """The harness's modprobe (Debian modules); only tests use it, never the adapters."""
    return subprocess.run(["modprobe", *argv], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture
def ns(make_netns: Callable[[str], Netns]) -> Netns:
    """A namespace with lo up and eth0 (dummy) holding 198.18.0.2/24 and the default route."""
    ns = make_netns("net")
    ns.ipr.link("add", ifname="eth0", kind="dummy")
    ns.addr("eth0", "198.18.0.2/24")
    ns.up("eth0")
    ns.ipr.route("add", dst="0.0.0.0/0", gateway="198.18.0.1")
    return ns


class TestNetlinkTunnelsInVM(TunnelsContract):
    @pytest.fixture
    def tunnels(self, ns: Netns) -> Iterator[NetlinkTunnels]:
        with NetlinkTunnels(ns.name) as adapter:
            yield adapter

    @pytest.fixture(params=FALLBACKS, ids=lambda t: t.name)
    def tunnel(self, request: pytest.FixtureRequest) -> TunnelDevice:
        return request.param

    @pytest.fixture(params=GUE, ids=lambda t: t.name)
    def gue_tunnel(self, request: pytest.FixtureRequest) -> TunnelDevice:
        return request.param


class TestNetlinkAddressesInVM(AddressesContract):
    @pytest.fixture
    def addresses(self, ns: Netns) -> Iterator[NetlinkAddresses]:
        with NetlinkAddresses(ns.name) as adapter:
            yield adapter

    @pytest.fixture
    def device(self) -> str:
        return "eth0"

    @pytest.fixture
    def add_foreign_address(self, ns: Netns) -> Callable[[str, str, int], None]:
        def add(device: str, address: str, prefix_length: int) -> None:
            extra = ["nodad"] if ":" in address else []
            ns.run(["ip", "addr", "add", f"{address}/{prefix_length}", "dev", device, *extra])
        return add


class TestProcSysctlsInVM(SysctlsContract):
    @pytest.fixture
    def sysctls(self, ns: Netns) -> ProcSysctls:
        return ProcSysctls(ns.name)


def test_ip_vs_sysctls_are_settable_per_namespace(ns: Netns) -> None:
    assert "ip_vs" in loaded_modules()
    sysctls = ProcSysctls(ns.name)
    sysctls.set("net.ipv4.vs.expire_nodest_conn", "1")
    assert sysctls.get("net.ipv4.vs.expire_nodest_conn") == "1"
    assert ProcSysctls().get("net.ipv4.vs.expire_nodest_conn") == "0"


def test_tunnel_sysctls_exist_once_the_device_does(ns: Netns) -> None:
    with NetlinkTunnels(ns.name) as tunnels:
        tunnels.ensure(TunnelDevice("tunl0", "ipip"))
    ProcSysctls(ns.name).set("net.ipv4.conf.tunl0.rp_filter", "0")
    assert ProcSysctls(ns.name).get("net.ipv4.conf.tunl0.rp_filter") == "0"


def test_gue_port_is_a_real_fou_port(ns: Netns) -> None:
    """`ip fou show` (iproute2, not the adapter) sees what ensure added and release removed."""
    with NetlinkTunnels(ns.name) as tunnels:
        tunnels.ensure(GUE[0])
        tunnels.ensure(GUE[1])
        shown = ns.run(["ip", "fou", "show"]).stdout
        assert "port 5555 gue" in shown and "port 5556 gue -6" in shown, shown
        tunnels.release(GUE[0])
        tunnels.release(GUE[1])
        assert ns.run(["ip", "fou", "show"]).stdout.strip() == ""


def test_a_foreign_gue_port_is_reported_only_until_ours_is_ensured(ns: Netns) -> None:
    """fou ports carry no owner. A port someone else added shows on the device (lowest first)
    until this adapter ensures its own; the foreign port is never removed."""
    ns.run(["ip", "fou", "add", "port", "4000", "gue"])
    with NetlinkTunnels(ns.name) as tunnels:
        tunnels.ensure(TunnelDevice("tunl0", "ipip"))
        assert TunnelDevice("tunl0", "ipip") in tunnels.list_up()
        tunnels.ensure(GUE[0])
        assert GUE[0] in tunnels.list_up()
    with NetlinkTunnels(ns.name) as restarted:
        assert TunnelDevice("tunl0", "ipip", 4000) in restarted.list_up()
        restarted.ensure(GUE[0])
        assert GUE[0] in restarted.list_up()
        restarted.release(GUE[0])
    assert "port 4000 gue" in ns.run(["ip", "fou", "show"]).stdout


def test_a_port_taken_by_another_socket_is_already_exists(ns: Netns) -> None:
    import socket

    from lvs_operator.kernel.errors import AlreadyExists

    with ns.entered():
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with squatter, NetlinkTunnels(ns.name) as tunnels:
        squatter.bind(("0.0.0.0", 5555))
        with pytest.raises(AlreadyExists, match="5555"):
            tunnels.ensure(GUE[0])


@contextlib.contextmanager
def fallback_tunnels_only_in_init_net() -> Iterator[None]:
    path = Path("/proc/sys/net/core/fb_tunnels_only_for_init_net")
    before = path.read_text()
    path.write_text("1\n")
    try:
        yield
    finally:
        path.write_text(before)


@pytest.mark.parametrize("device", FALLBACKS, ids=lambda t: t.name)
def test_without_fallback_devices_ensure_creates_one(
        make_netns: Callable[[str], Netns], device: TunnelDevice) -> None:
    """net.core.fb_tunnels_only_for_init_net=1: new namespaces get no tunl0 & co.; ensure makes
    a key-less, address-less device of that name, which receives what the fallback would."""
    modprobe(MODULES[device.kind])  # loaded before the namespace exists: no fallback in it
    with fallback_tunnels_only_in_init_net():
        ns = make_netns("nofb")
    assert ns.run(["ip", "link", "show", device.name], check=False).returncode != 0
    with NetlinkTunnels(ns.name) as tunnels:
        tunnels.ensure(device)
        assert device in tunnels.list_up()
        tunnels.release(device)
        assert device not in tunnels.list_up()


def test_a_foreign_device_under_a_fallback_name_is_refused(
        make_netns: Callable[[str], Netns]) -> None:
    """Where fallbacks exist the name always holds the right kind; where they do not, a dummy
    called gre0 must not pass for the GRE receive device."""
    from lvs_operator.kernel.errors import AlreadyExists

    modprobe("ip_gre")
    with fallback_tunnels_only_in_init_net():
        ns = make_netns("impostor")
    ns.ipr.link("add", ifname="gre0", kind="dummy")
    with NetlinkTunnels(ns.name) as tunnels, pytest.raises(AlreadyExists, match="dummy"):
        tunnels.ensure(TunnelDevice("gre0", "gre"))


CHILD = """
import sys
from lvs_operator.compiler.plan import TunnelDevice
from lvs_operator.kernel.errors import KernelUnavailable
from lvs_operator.kernel.real_net import NetlinkTunnels
caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0]
assert not int(caps.split()[1], 16) & (1 << 16), "CAP_SYS_MODULE is still effective"
with NetlinkTunnels(sys.argv[1]) as tunnels:
    for name, kind in (("tunl0", "ipip"), ("gre0", "gre"), ("ip6tnl0", "ip6tnl"),
                       ("ip6gre0", "ip6gre")):
        tunnels.ensure(TunnelDevice(name, kind))
    print(sorted(tunnels.list_up()))
    try:
        tunnels.ensure(TunnelDevice("tunl0", "ipip", 5555))
    except KernelUnavailable as exc:
        print(exc)
"""


def test_modules_load_through_the_kernel_without_cap_sys_module(
        make_netns: Callable[[str], Netns]) -> None:
    """With every tunnel module unloaded, a process without CAP_SYS_MODULE gets them loaded
    just by asking rtnetlink for the link kinds. fou has no module alias, so GUE then says
    what the node must do instead of failing obscurely."""
    wanted = {"ipip", "ip_gre", "ip6_tunnel", "ip6_gre"}
    modprobe("-r", "ip6_gre", "ip6_tunnel", "ip_gre", "ipip", "fou")
    if (wanted | {"fou"}) & loaded_modules():
        pytest.skip(f"cannot unload {sorted(wanted & loaded_modules())} in this guest")
    try:
        ns = make_netns("autoload")
        child = subprocess.run(
            ["setpriv", "--inh-caps=-sys_module", "--bounding-set=-sys_module",
             sys.executable, "-c", CHILD, ns.name],
            capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
        )
        assert child.returncode == 0, child.stderr
        assert wanted <= loaded_modules()
        assert "fou" not in loaded_modules()
        listed, gue_error = child.stdout.strip().splitlines()
        assert listed == repr(sorted(TunnelDevice(t.name, t.kind) for t in FALLBACKS))
        assert "modprobe fou" in gue_error, gue_error
    finally:
        modprobe("-a", "ipip", "ip_gre", "fou")  # the harness preloads these for other tests


# --- traffic: what `ensure` sets up really decapsulates ---------------------------------------

SENDER_TUNNEL = {
    "ipip": ["type", "ipip", "remote", "198.18.0.2", "local", "198.18.0.1"],
    "gre": ["type", "gre", "remote", "198.18.0.2", "local", "198.18.0.1"],
    "ip6tnl": ["type", "ip6tnl", "mode", "ip6ip6", "remote", "2001:db8:1::2",
               "local", "2001:db8:1::1"],
}


def tcp_round_trip(server_ns: Netns, client_ns: Netns, address: str, port: int) -> bytes:
    """One bounded TCP exchange: a listener in `server_ns`, a connect from `client_ns`."""
    import socket
    import threading

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with server_ns.entered():
        listener = socket.socket(family, socket.SOCK_STREAM)
    with listener:
        listener.bind((address, port))
        listener.listen(1)
        listener.settimeout(10)

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"decapsulated")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with client_ns.entered():
            client = socket.create_connection((address, port), timeout=10)
        with client:
            data = client.recv(64)
        thread.join(timeout=10)
    return data


@pytest.mark.parametrize(
    ("device", "fallbacks"),
    [
        (TunnelDevice("tunl0", "ipip"), True),
        (TunnelDevice("tunl0", "ipip"), False),
        (GUE[0], True),
        (TunnelDevice("gre0", "gre"), True),
        (TunnelDevice("gre0", "gre"), False),
        (TunnelDevice("ip6tnl0", "ip6tnl"), True),
        (TunnelDevice("ip6tnl0", "ip6tnl"), False),
    ],
    ids=["ipip", "ipip-created", "gue", "gre", "gre-created", "ip6tnl", "ip6tnl-created"],
)
def test_a_tun_real_server_accepts_encapsulated_connections(
        make_netns: Callable[[str], Netns], device: TunnelDevice, fallbacks: bool) -> None:
    """A TUN real server, set up only through the adapters (VIP on lo, receive device up,
    rp_filter off), answers a TCP connection that reaches it encapsulated, as from an IPVS
    director, and replies directly.

        director 198.18.0.1 / 2001:db8:1::1 --veth-- rs 198.18.0.2 / 2001:db8:1::2
                 tunnel tun -> rs                          VIP on lo, tunl0/gre0/ip6tnl0 up
    """
    modprobe(MODULES[device.kind])
    director = make_netns("dir")
    if fallbacks:
        rs = make_netns("rs")
    else:
        with fallback_tunnels_only_in_init_net():
            rs = make_netns("rs")
    director.ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0",
                                                                "net_ns_fd": rs.name})
    for ns, host in ((director, "1"), (rs, "2")):
        ns.run(["ip", "addr", "add", f"198.18.0.{host}/24", "dev", "eth0"])
        ns.run(["ip", "addr", "add", f"2001:db8:1::{host}/64", "dev", "eth0", "nodad"])
        ns.up("eth0")

    six = device.kind == "ip6tnl"
    vip = "2001:db8:2::10" if six else "203.0.113.10"
    with NetlinkAddresses(rs.name) as addresses:
        addresses.add("lo", vip, 128 if six else 32)
    with NetlinkTunnels(rs.name) as tunnels:
        tunnels.ensure(device)
    if not six:
        sysctls = ProcSysctls(rs.name)
        for scope in ("all", device.name):
            sysctls.set(f"net.ipv4.conf.{scope}.rp_filter", "0")

    encap = (["encap", "gue", "encap-sport", "auto", "encap-dport", str(device.fou_port)]
             if device.fou_port else [])
    director.run(["ip", "link", "add", "name", "tun", *SENDER_TUNNEL[device.kind], *encap])
    director.up("tun")
    source = "2001:db8:1::1" if six else "198.18.0.1"
    director.run(["ip", "-6" if six else "-4", "route", "add", vip, "dev", "tun", "src", source])

    assert tcp_round_trip(rs, director, vip, 8080) == b"decapsulated"
    (link,) = json.loads(rs.run(["ip", "-j", "-s", "link", "show", device.name]).stdout)
    assert link["stats64"]["rx"]["packets"] > 0, link  # it arrived through that device
