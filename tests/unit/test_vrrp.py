"""VRRP mode (agent/vrrp.py): the keepalived.conf rendered from a node plan, its errors, and
the supervisor's process handling against a fake popen/kill and a fake /proc (no keepalived
runs here; tests/vm/test_vrrp.py runs the real one)."""

from __future__ import annotations

import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lvs_operator.agent.vrrp import (
    QUICK_EXIT,
    KeepalivedError,
    KeepalivedSupervisor,
    VRRPDriver,
    instance_name,
    keepalived_config,
)
from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import (
    DirectorPlan,
    HighAvailabilityPlan,
    NodePlan,
    VIPAddress,
)
from tests.unit.builders import node, vs

# --------------------------------------------------------------------------- rendering


def vrrp_vip(address: str = "192.0.2.10", vrid: int = 51, *, owner: str = "default/web",
             prefix: int = 32, interface: str = "", **ha: Any) -> VIPAddress:
    group = f"lvs-ha-{address.replace(':', '-')}"
    return VIPAddress(address, prefix, interface, (owner,), "VRRP",
                      HighAvailabilityPlan("VRRP", group, virtual_router_id=vrid, **ha))


def plan(*vips: VIPAddress) -> NodePlan:
    return NodePlan("dir-a", DirectorPlan(vips=vips))


def render(p: NodePlan, passwords: dict[str, str] | None = None, device: str | None = "eth0",
           own: Sequence[str] = ()) -> str | None:
    return keepalived_config(
        p,
        router_id="dir-a",
        device_for=lambda v: v.interface or device,
        password_for=(passwords or {}).get,
        own_addresses=own,
    )


def block(text: str, name: str) -> str:
    start = text.index(f"vrrp_instance {name} {{")
    return text[start:text.index("\n}\n", start) + 3]


def test_no_vrrp_vip_no_configuration() -> None:
    assert render(plan()) is None
    lease = VIPAddress("192.0.2.10", 32, "", ("default/web",), "Lease",
                       HighAvailabilityPlan("Lease", "lvs-ha-192.0.2.10"))
    plain = VIPAddress("192.0.2.11", 32)
    assert render(plan(lease, plain)) is None


def test_a_vrrp_vip_becomes_a_backup_instance_with_auth_and_unicast_peers() -> None:
    vip = vrrp_vip(priority=150, advert_interval=2, auth_secret_ref="default/vrrp-pass",
                   unicast_peers=("192.0.2.2", "192.0.2.3"))
    text = render(plan(vip), {"default/vrrp-pass": "sup3r-secret-long"}, own=["192.0.2.2"])
    assert text is not None
    assert block(text, "lvs-ha-192.0.2.10") == (
        "vrrp_instance lvs-ha-192.0.2.10 {\n"
        "    # default/web\n"
        "    state BACKUP\n"
        "    interface eth0\n"
        "    virtual_router_id 51\n"
        "    priority 150\n"
        "    advert_int 2\n"
        "    authentication {\n"
        "        auth_type PASS\n"
        "        auth_pass sup3r-se\n"  # the 8 characters keepalived would keep
        "    }\n"
        "    unicast_peer {\n"
        "        192.0.2.3\n"  # not ourselves: keepalived warns on every advert it sends us
        "    }\n"
        "    check_unicast_src\n"
        "    virtual_ipaddress {\n"
        "        192.0.2.10/32 dev eth0\n"
        "    }\n"
        "}\n"
    )
    lines = text.splitlines()
    assert "instance dir-a" in lines  # pid/.data file names: one keepalived per netns
    globals_ = text[text.index("global_defs {"):text.index("}\n")]
    for line in ("router_id dir-a", "dynamic_interfaces", "vrrp_garp_master_delay 1",
                 "vrrp_garp_master_repeat 3", "vrrp_higher_prio_send_advert true"):
        assert f"    {line}\n" in globals_, line
    for absent in ("lvs_sync_daemon", "virtual_server", "enable_snmp", "enable_dbus",
                   "vrrp_strict", "notify"):
        assert absent not in text, absent


def test_minimal_instance_and_ipv6() -> None:
    text = render(plan(vrrp_vip(), vrrp_vip("2001:db8::10", 51, owner="default/web6",
                                            prefix=128)))
    assert text is not None
    assert block(text, "lvs-ha-192.0.2.10") == (
        "vrrp_instance lvs-ha-192.0.2.10 {\n    # default/web\n    state BACKUP\n"
        "    interface eth0\n    virtual_router_id 51\n    priority 100\n    advert_int 1\n"
        "    virtual_ipaddress {\n        192.0.2.10/32 dev eth0\n    }\n}\n"
    )
    six = block(text, "lvs-ha-2001-db8--10")
    assert "    native_ipv6\n" in six  # VRRPv3; the same VRID as the IPv4 one is fine
    assert "        2001:db8::10/128 dev eth0\n" in six
    assert "authentication" not in six


def test_rendering_is_deterministic_and_order_free() -> None:
    a, b = vrrp_vip("192.0.2.10", 10), vrrp_vip("192.0.2.11", 11, owner="default/api")
    assert render(plan(a, b)) == render(plan(b, a))
    text = render(plan(b, a))
    assert text is not None
    assert text.index("lvs-ha-192.0.2.10 {") < text.index("lvs-ha-192.0.2.11 {")


def test_the_vips_interface_wins_over_the_route_device() -> None:
    text = render(plan(vrrp_vip(interface="bond0")), device="eth0")
    assert text is not None
    assert "    interface bond0\n" in text and "192.0.2.10/32 dev bond0" in text


def test_from_the_compiler() -> None:
    docs = [node("d1", **{"lvs.dev/director": "true"}),
            vs("web", "192.0.2.10", ha={"mode": "VRRP", "vrrp": {
                "virtualRouterID": 51, "priority": 150, "authSecretRef": "vrrp-pass",
                "unicastPeers": ["192.0.2.3", "192.0.2.2"]}})]  # fmt: skip
    result = compile_cluster([o for o in (parse_manifest(d) for d in docs) if o is not None])
    asked: list[str] = []

    def password(ref: str) -> str:
        asked.append(ref)
        return "pw"

    text = keepalived_config(result.plans["d1"], router_id="d1", device_for=lambda v: "eth0",
                             password_for=password, own_addresses=["192.0.2.2"])
    assert text is not None
    assert asked == ["default/vrrp-pass"]
    assert "vrrp_instance lvs-ha-192.0.2.10 {" in text
    assert "        auth_pass pw\n" in text and "        192.0.2.3\n" in text


def test_missing_secret_says_which_and_how_to_fix() -> None:
    vip = vrrp_vip(auth_secret_ref="shop/vrrp-pass", owner="shop/web")
    with pytest.raises(ValueError) as err:
        render(plan(vip), {})
    msg = str(err.value)
    assert msg.startswith("VirtualService shop/web: spec.ha.vrrp.authSecretRef 'vrrp-pass'")
    assert "Secret vrrp-pass in namespace shop" in msg
    assert "kubectl -n shop create secret generic vrrp-pass --from-literal=password=" in msg


@pytest.mark.parametrize("password", ["", "ab#cd", "two words", "a{b}", 'q"uote'])
def test_passwords_keepalived_would_misread_are_refused(password: str) -> None:
    with pytest.raises(ValueError, match="must start with 1-8 characters from letters"):
        render(plan(vrrp_vip(auth_secret_ref="default/p")), {"default/p": password})


def test_only_the_first_eight_characters_count() -> None:
    text = render(plan(vrrp_vip(auth_secret_ref="default/p")), {"default/p": "abcdefgh #!{"})
    assert text is not None and "auth_pass abcdefgh\n" in text


def test_the_same_vrid_twice_on_one_device_is_an_error() -> None:
    a = vrrp_vip("192.0.2.10", 7, owner="default/web")
    b = vrrp_vip("192.0.2.11", 7, owner="shop/api")
    with pytest.raises(ValueError) as err:
        render(plan(a, b))
    assert str(err.value) == (
        "VirtualService shop/api: spec.ha.vrrp.virtualRouterID 7 on device eth0 is already "
        "used by VirtualService default/web (VIP 192.0.2.10); each VRRP VIP on a device needs "
        "its own virtualRouterID (1-255)"
    )
    # on different devices the same VRID is two separate virtual routers
    assert render(plan(a, b._replace(interface="eth1"))) is not None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"virtual_router_id": 0}, r"spec\.ha\.vrrp\.virtualRouterID 0 is out of range"),
        ({"priority": 255}, r"spec\.ha\.vrrp\.priority 255 is out of range 1-254"),
        ({"advert_interval": 0}, r"spec\.ha\.vrrp\.advertIntervalSeconds 0 is out of range"),
        ({"unicast_peers": ("peer-b",)}, r"spec\.ha\.vrrp\.unicastPeers: 'peer-b' is not an IP address"),
        ({"unicast_peers": ("2001:db8::3",)}, r"spec\.ha\.vrrp\.unicastPeers: 2001:db8::3 is IPv6 but the VIP is IPv4"),
    ],
)
def test_bad_settings_name_object_field_and_value(change: dict[str, Any], match: str) -> None:
    vip = vrrp_vip()
    assert vip.ha is not None
    bad = vip._replace(ha=vip.ha._replace(**change))
    with pytest.raises(ValueError, match=rf"^VirtualService default/web: {match}"):
        render(plan(bad))


def test_no_device_and_ipv6_auth_are_errors() -> None:
    with pytest.raises(ValueError, match=r"no route toward it .* set spec\.directors\.interface"):
        render(plan(vrrp_vip()), device=None)
    six = vrrp_vip("2001:db8::10", prefix=128, auth_secret_ref="default/p")
    with pytest.raises(ValueError, match="IPv6 is version 3, which has no authentication"):
        render(plan(six), {"default/p": "pw"})


def test_vips_of_one_group_share_an_instance_and_must_agree() -> None:
    a = vrrp_vip("192.0.2.10", 9)
    assert a.ha is not None
    b = VIPAddress("192.0.2.20", 32, "", ("default/other",), "VRRP", a.ha)
    text = render(plan(a, b))
    assert text is not None and text.count("vrrp_instance ") == 1
    assert "192.0.2.10/32 dev eth0\n        192.0.2.20/32 dev eth0\n" in text
    with pytest.raises(ValueError, match="VIPs of one group must share their VRRP settings"):
        render(plan(a, b._replace(ha=a.ha._replace(priority=7))))


def test_instance_names_are_safe_tokens() -> None:
    assert instance_name("lvs-ha-192.0.2.10") == "lvs-ha-192.0.2.10"
    odd = instance_name("a b{c}")
    assert odd.startswith("a_b_c_-") and " " not in odd and odd != instance_name("a_b_c_")


# --------------------------------------------------------------------------- supervisor

CONF = render(plan(vrrp_vip())) or ""
CONF2 = render(plan(vrrp_vip(priority=150))) or ""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeHost:
    """popen, kill, `ip` and /proc for the supervisor: processes that write keepalived's pid
    files and first log line, and die on SIGTERM unless told to ignore it."""

    def __init__(self, tmp: Path) -> None:
        self.proc_root = tmp / "proc"
        self.proc_root.mkdir()
        self.procs: dict[int, FakeProc] = {}
        self.next_pid = 4000
        self.started: list[tuple[list[str], dict[str, Any]]] = []
        self.signals: list[tuple[int, int]] = []
        self.commands: list[list[str]] = []
        self.ignore_term = False
        self.ready = True  # write the VRRP child's pid file at once
        self.missing = False

    def popen(self, argv: list[str], **kwargs: Any) -> FakeProc:
        if self.missing:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        self.started.append((argv, kwargs))
        pid, self.next_pid = self.next_pid, self.next_pid + 2
        proc = self.procs[pid] = FakeProc(pid)
        opts = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        Path(opts["--pid"]).write_text(f"{pid}\n")
        if self.ready:
            Path(opts["--vrrp_pid"]).write_text(f"{pid + 1}\n")
        kwargs["stdout"].write(b"Thu Dec  3 12:00:00 2026: Starting Keepalived v2.2.7\n")
        kwargs["stdout"].flush()
        return proc

    def kill(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))
        proc = self.procs.get(abs(pid))
        if proc is None or proc.returncode is not None:
            raise ProcessLookupError(pid)
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.ignore_term):
            proc.returncode = 0 if sig == signal.SIGTERM else -signal.SIGKILL

    def run(self, argv: Sequence[str]) -> int:
        self.commands.append(list(argv))
        return 0

    def orphan(self, pid: int, argv: list[str], state: str = "S") -> None:
        """A process only /proc knows about (one a previous agent started)."""
        d = self.proc_root / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "stat").write_text(f"{pid} (keepalived) {state} 1 {pid} {pid} 0 -1\n")


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def supervisor(host: FakeHost, tmp_path: Path, clock: Clock | None = None,
               netns: str | None = "lab-a") -> KeepalivedSupervisor:
    clock = clock or Clock()
    return KeepalivedSupervisor(
        tmp_path / "run", netns=netns, popen=host.popen, kill=host.kill, run=host.run,
        proc_root=host.proc_root, clock=clock, sleep=clock.sleep, stop_timeout=2.0,
    )


def log(sup: KeepalivedSupervisor, *lines: str) -> None:
    with open(sup.log_path, "a") as f:
        for line in lines:
            f.write(f"Thu Dec  3 12:00:01 2026: {line}\n")


def test_starts_keepalived_vrrp_only_in_the_foreground_in_its_netns(
    host: FakeHost, tmp_path: Path
) -> None:
    sup = supervisor(host, tmp_path)
    events = sup.apply(CONF)
    assert events == ["keepalived: started pid 4000 in netns lab-a"]
    ((argv, kwargs),) = host.started
    run = tmp_path / "run"
    assert argv == ["keepalived", "--vrrp", "--dont-fork", "--log-console", "--no-syslog",
                    f"--use-file={run}/keepalived.conf", f"--pid={run}/keepalived.pid",
                    f"--vrrp_pid={run}/vrrp.pid", "--namespace=lab-a"]
    assert kwargs["start_new_session"] is True  # the agent's signals do not reach it
    assert kwargs["stderr"] == subprocess.STDOUT and kwargs["stdin"] == subprocess.DEVNULL
    assert sup.config_path.read_text() == CONF
    assert stat.S_IMODE(sup.config_path.stat().st_mode) == 0o600  # it holds the password
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert sup.pid == 4000 and sup.running()
    assert sup.apply(CONF) == [] and host.signals == []  # nothing changed: nothing done
    assert "--namespace" not in " ".join(KeepalivedSupervisor(tmp_path / "x").argv())


def test_a_changed_configuration_is_written_and_reloaded(host: FakeHost, tmp_path: Path) -> None:
    sup = supervisor(host, tmp_path)
    sup.apply(CONF)
    assert sup.apply(CONF2) == ["keepalived (pid 4000): reloaded its configuration"]
    assert host.signals == [(4000, signal.SIGHUP)]
    assert sup.config_path.read_text() == CONF2
    assert len(host.started) == 1


def test_no_sighup_before_keepalived_has_started_its_vrrp_child(
    host: FakeHost, tmp_path: Path
) -> None:
    """SIGHUP's default action kills a keepalived that has no handler yet."""
    host.ready = False
    sup = supervisor(host, tmp_path)
    sup.apply(CONF)
    assert sup.apply(CONF2) == [] and host.signals == []
    assert sup.config_path.read_text() == CONF2
    sup.vrrp_pid_path.write_text("4001\n")
    assert sup.apply(CONF2) == ["keepalived (pid 4000): reloaded its configuration"]
    assert host.signals == [(4000, signal.SIGHUP)]


def test_stops_with_sigterm_when_no_vrrp_vip_is_left(host: FakeHost, tmp_path: Path) -> None:
    sup = supervisor(host, tmp_path)
    sup.apply(CONF)
    assert sup.apply(None) == ["keepalived (pid 4000): stopped"]
    assert host.signals == [(4000, signal.SIGTERM)]
    assert not sup.config_path.exists() and not sup.pid_path.exists()
    assert host.commands == []  # keepalived removed its VIPs itself
    assert sup.apply(None) == [] and not sup.running() and sup.pid is None


def test_sigkill_after_the_bounded_wait_and_then_the_vips_go(
    host: FakeHost, tmp_path: Path
) -> None:
    clock = Clock()
    sup = supervisor(host, tmp_path, clock)
    sup.apply(CONF)
    host.ignore_term = True
    t0 = clock.t
    events = sup.stop()
    assert host.signals == [(4000, signal.SIGTERM), (-4000, signal.SIGKILL)]  # the group
    assert 2.0 <= clock.t - t0 < 3.5
    assert events[0] == "keepalived (pid 4000): did not stop within 2 s of SIGTERM; killed"
    assert host.commands == [["ip", "-n", "lab-a", "addr", "del", "192.0.2.10/32", "dev", "eth0"]]
    assert "removed VIP 192.0.2.10/32 from eth0" in events[1]


def test_a_dead_keepalived_loses_its_vips_at_once_and_is_restarted(
    host: FakeHost, tmp_path: Path
) -> None:
    clock = Clock()
    sup = supervisor(host, tmp_path, clock)
    sup.apply(CONF)
    clock.t += QUICK_EXIT + 1
    log(sup, "(lvs-ha-192.0.2.10) Entering MASTER STATE")
    host.procs[4000].returncode = -signal.SIGKILL
    events = sup.apply(CONF)
    assert events[0].startswith("keepalived (pid 4000) was killed by SIGKILL; its last log "
                                "lines: ")
    assert "Entering MASTER STATE" in events[0]
    assert host.commands == [["ip", "-n", "lab-a", "addr", "del", "192.0.2.10/32", "dev", "eth0"]]
    assert events[2] == "keepalived: started pid 4002 in netns lab-a"
    assert sup.pid == 4002 and len(host.started) == 2


def test_one_that_keeps_dying_is_restarted_with_backoff(host: FakeHost, tmp_path: Path) -> None:
    clock = Clock()
    sup = supervisor(host, tmp_path, clock)
    sup.apply(CONF)
    clock.t += 0.5
    host.procs[4000].returncode = 1
    events = sup.apply(CONF)
    assert events[0].startswith("keepalived (pid 4000) exited with status 1")
    assert events[-1] == "keepalived: it ran 0.5 s; starting it again in 1 s"
    assert len(host.started) == 1 and sup.apply(CONF) == []
    clock.t += 1
    assert sup.apply(CONF) == ["keepalived: started pid 4002 in netns lab-a"]
    clock.t += 0.5
    host.procs[4002].returncode = 1
    assert sup.apply(CONF)[-1].endswith("starting it again in 2 s")


def test_adopts_the_keepalived_a_previous_agent_left(host: FakeHost, tmp_path: Path) -> None:
    first = supervisor(host, tmp_path)
    first.apply(CONF)
    argv = host.started[0][0]
    host.orphan(4000, argv)  # the previous agent is gone; /proc still shows its keepalived
    del host.procs[4000]
    host.procs[4000] = FakeProc(4000)  # so kill() finds it
    log(first, "(lvs-ha-192.0.2.10) Entering BACKUP STATE (init)")

    sup = supervisor(host, tmp_path)
    assert sup.apply(CONF) == [
        "keepalived: adopted pid 4000, left running by a previous agent",
        "keepalived: vrrp_instance lvs-ha-192.0.2.10 is BACKUP",
    ]
    assert len(host.started) == 1 and sup.pid == 4000
    assert sup.state() == {"lvs-ha-192.0.2.10": "BACKUP"}
    assert sup.apply(CONF2) == ["keepalived (pid 4000): reloaded its configuration"]
    assert host.signals == [(4000, signal.SIGHUP)]
    # it dies: /proc forgets it, and the supervisor starts its own
    (host.proc_root / "4000" / "stat").write_text("4000 (keepalived) Z 1 4000 4000 0 -1\n")
    events = sup.apply(CONF2)
    assert events[0].startswith("keepalived (pid 4000) exited; its last log lines: ")
    assert events[0].endswith("(lvs-ha-192.0.2.10) Entering BACKUP STATE (init)")
    assert events[-1] == "keepalived: started pid 4002 in netns lab-a"


def test_a_reused_pid_is_not_adopted(host: FakeHost, tmp_path: Path) -> None:
    sup = supervisor(host, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "keepalived.pid").write_text("777\n")
    (run / "keepalived.conf").write_text(CONF)
    host.orphan(777, ["/usr/bin/sleep", "1000"])
    events = sup.apply(CONF)
    assert events[0] == (f"keepalived: pid file {run}/keepalived.pid names pid 777, which is "
                         "not our keepalived (any more)")
    assert host.commands == [["ip", "-n", "lab-a", "addr", "del", "192.0.2.10/32", "dev", "eth0"]]
    assert events[-1] == "keepalived: started pid 4000 in netns lab-a"
    assert host.signals == []  # never signal a stranger


def test_state_follows_keepalived_log(host: FakeHost, tmp_path: Path) -> None:
    sup = supervisor(host, tmp_path)
    assert sup.state() == {}
    sup.apply(CONF)
    assert sup.state() == {}
    log(sup, "(lvs-ha-192.0.2.10) Entering BACKUP STATE (init)",
        "(lvs-ha-192.0.2.10) Receive advertisement timeout",
        "(lvs-ha-192.0.2.10) Entering MASTER STATE",
        "(lvs-ha-gone) Entering FAULT STATE")
    with open(sup.log_path, "a") as f:
        f.write("Thu Dec  3 12:00:02 2026: (lvs-ha-192.0.2.10) Entering FAU")  # half a line
    assert sup.state() == {"lvs-ha-192.0.2.10": "MASTER"}  # only instances it runs
    assert sup.apply(CONF) == [
        "keepalived: vrrp_instance lvs-ha-192.0.2.10 is BACKUP",
        "keepalived: vrrp_instance lvs-ha-192.0.2.10 is MASTER",
        "keepalived: vrrp_instance lvs-ha-gone is FAULT",
    ]
    with open(sup.log_path, "a") as f:
        f.write("LT STATE\n")
    assert sup.state() == {"lvs-ha-192.0.2.10": "FAULT"}
    sup.stop()
    assert sup.state() == {}


def test_keepalived_not_installed_says_so(host: FakeHost, tmp_path: Path) -> None:
    host.missing = True
    with pytest.raises(KeepalivedError, match="keepalived not found: VRRP mode runs keepalived"):
        supervisor(host, tmp_path).apply(CONF)


def test_an_orphaned_vrrp_child_is_given_a_moment_then_killed(
    host: FakeHost, tmp_path: Path
) -> None:
    """Parent SIGKILLed alone: its VRRP child gets SIGTERM from the kernel and normally
    stops by itself; one that does not must not run beside the next keepalived."""
    clock = Clock()
    sup = supervisor(host, tmp_path, clock)
    sup.apply(CONF)
    argv = host.started[0][0]
    host.orphan(4001, argv)  # the child, still running
    host.procs[4001] = FakeProc(4001)
    clock.t += QUICK_EXIT + 1
    host.procs[4000].returncode = -signal.SIGKILL
    t0 = clock.t
    events = sup.apply(CONF)
    assert (4001, signal.SIGKILL) in host.signals
    assert 3.0 <= clock.t - t0 < 3.5
    assert events[1] == ("keepalived: killed its VRRP child (pid 4001), still running 3 s "
                         "after its parent died")
    assert events[-1] == "keepalived: started pid 4002 in netns lab-a"


def test_stopping_one_that_died_cleans_up_without_a_restart(
    host: FakeHost, tmp_path: Path
) -> None:
    sup = supervisor(host, tmp_path)
    sup.apply(CONF)
    host.procs[4000].returncode = -signal.SIGKILL
    events = sup.apply(None)
    assert events[0].startswith("keepalived (pid 4000) was killed by SIGKILL")
    assert events[1].startswith("keepalived: removed VIP 192.0.2.10/32 from eth0")
    assert len(events) == 2 and host.signals == []
    assert not sup.config_path.exists()
    assert sup.apply(CONF) == ["keepalived: started pid 4002 in netns lab-a"]  # no backoff


# --------------------------------------------------------------------------- VRRPDriver


class RecordingSupervisor:
    """Stands in for KeepalivedSupervisor: what the driver asked it to run."""

    def __init__(self, fail: str = "") -> None:
        self.configs: list[str | None] = []
        self.stopped = False
        self.fail = fail

    def apply(self, config: str | None) -> list[str]:
        if self.fail:
            raise KeepalivedError(self.fail)
        self.configs.append(config)
        return ["started keepalived"] if len(self.configs) == 1 and config else []

    def stop(self) -> list[str]:
        self.stopped = True
        return ["stopped keepalived"]


def driver(sup: RecordingSupervisor, passwords: dict[str, str] | None = None) -> VRRPDriver:
    from lvs_operator.kernel.fake import FakeAddresses

    addresses = FakeAddresses("eth0")
    addresses.add_foreign("eth0", "192.0.2.2", 24)
    return VRRPDriver(sup, router_id="dir-a", addresses=addresses,  # type: ignore[arg-type]
                      password_for=(passwords or {}).get)


def test_driver_runs_the_plans_vrrp_vips_and_nothing_without_them() -> None:
    sup = RecordingSupervisor()
    d = driver(sup)
    assert d.apply(plan(vrrp_vip(unicast_peers=("192.0.2.2", "192.0.2.3")))) == []
    config = sup.configs[-1]
    assert config is not None and "interface eth0" in config
    assert "192.0.2.3" in config and "        192.0.2.2\n" not in config  # not its own address
    assert d.apply(plan()) == [] and sup.configs[-1] is None  # no VRRP VIP: no keepalived
    d.stop()
    assert sup.stopped


def test_driver_errors_are_pass_failures_naming_the_object() -> None:
    d = driver(RecordingSupervisor())
    [failure] = d.apply(plan(vrrp_vip(auth_secret_ref="shop/vrrp-pass", owner="shop/web")))
    assert failure.startswith("VRRP: VirtualService shop/web: spec.ha.vrrp.authSecretRef")
    broken = driver(RecordingSupervisor(fail="keepalived exited at once (status 1)"))
    assert broken.apply(plan(vrrp_vip())) == ["VRRP: keepalived exited at once (status 1)"]
