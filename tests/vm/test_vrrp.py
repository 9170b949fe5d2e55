"""Director HA in VRRP mode with the real keepalived (agent/vrrp.py): the agent's rendered
configuration, one KeepalivedSupervisor per director, and a client that asks the segment who
has the VIP (one broadcast ARP request, every answering MAC counted: two means split brain).

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        -p no:hypothesispytest tests/vm/test_vrrp.py

One Ethernet segment (a bridge in a "switch" namespace), addresses in 192.0.2.0/24:

    client .100 --+-- director A .2 (eth0)
                  +-- director B .3 (eth0)      VIP 192.0.2.10, VRRP vrid 51, advert 1 s

Both directors get the compiler's plan of one VirtualService, so both have the CRD's one
priority (100): whichever backup times out first is master, and an equal-priority director
that comes back never preempts it. A backup declares the master dead after 3 adverts plus its skew
time, (256 - priority) / 256 advert intervals (RFC 3768 Master_Down_Interval). The tests run
in order on one lab (keepalived start-up under TCG is the expensive part) and each starts
from "exactly one director answers", whichever it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lvs_operator.agent.vrrp import KeepalivedSupervisor, keepalived_config
from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import NodePlan, VIPAddress
from lvs_operator.kernel.real_net import NetlinkAddresses
from tests.unit import test_vrrp as unit
from tests.unit.builders import node, vs
from tests.vm.arpwatch import arp_responders
from tests.vm.netlab import Netns, veth

VIP, CLIENT = "192.0.2.10", "192.0.2.100"
DIRECTORS = {"dir-a": "192.0.2.2", "dir-b": "192.0.2.3"}
ADVERT, PRIORITY = 1, 100
MASTER_DOWN = 3 * ADVERT + (256 - PRIORITY) / 256 * ADVERT  # 3.61 s
SLACK = 3.0  # TCG: keepalived's timers fire late, ARP probing has 0.3 s resolution
ASK = 0.3  # seconds each ARP question waits for answers
PASSWORD = "lab-pass"


@dataclass
class Director:
    name: str
    ns: Netns
    mac: str
    sup: KeepalivedSupervisor
    config: str


@dataclass
class Lab:
    switch: Netns
    client: Netns
    directors: dict[str, Director]
    times: dict[str, float] = field(default_factory=dict)

    def by_mac(self, mac: str) -> Director:
        (d,) = [d for d in self.directors.values() if d.mac == mac]
        return d

    def other(self, d: Director) -> Director:
        (o,) = [o for o in self.directors.values() if o is not d]
        return o


def _plans() -> dict[str, NodePlan]:
    docs = [
        node("dir-a", **{"lvs.dev/director": "true"}),
        node("dir-b", **{"lvs.dev/director": "true"}),
        vs("web", VIP, ha={"mode": "VRRP", "vrrp": {
            "virtualRouterID": 51, "advertIntervalSeconds": ADVERT, "priority": PRIORITY,
            "authSecretRef": "vrrp-pass"}}),
    ]  # fmt: skip
    result = compile_cluster([o for o in (parse_manifest(d) for d in docs) if o is not None])
    assert not [str(i) for i in result.all_issues() if i.severity == "Error"]
    return {name: result.plans[name] for name in DIRECTORS}


def _holds(ns: Netns) -> bool:
    return any(
        dict(m["attrs"]).get("IFA_ADDRESS") == VIP for m in ns.ipr.get_addr(family=socket.AF_INET)
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from pyroute2 import netns

    prefix = f"lvsvrrp{os.getpid() % 10000}"
    made: list[Netns] = []

    def make(role: str) -> Netns:
        ns = Netns(f"{prefix}-{role}")
        netns.create(ns.name)
        made.append(ns)
        ns.up("lo")
        return ns

    sups: list[KeepalivedSupervisor] = []
    try:
        switch = make("switch")
        switch.ipr.link("add", ifname="br0", kind="bridge")
        switch.up("br0")
        hosts = {**DIRECTORS, "client": CLIENT}
        spaces = {}
        for name, address in hosts.items():
            ns = make(name)
            port = f"p-{name}"
            veth(ns, "eth0", switch, port)
            switch.ipr.link("set", index=switch.link_index(port),
                            master=switch.link_index("br0"))
            ns.addr("eth0", f"{address}/24")
            spaces[name] = ns
        directors = {}
        for name, p in _plans().items():
            ns = spaces[name]
            addresses = NetlinkAddresses(ns.name)

            def device_for(vip: VIPAddress, a: NetlinkAddresses = addresses) -> str | None:
                return vip.interface or a.route_device(vip.address)  # as the agent finds it

            config = keepalived_config(
                p, router_id=name, device_for=device_for,
                password_for={"default/vrrp-pass": PASSWORD}.get,
                own_addresses=[DIRECTORS[name]],
            )
            assert config is not None and "interface eth0" in config
            sup = KeepalivedSupervisor(tmp_path_factory.mktemp(name) / "run", netns=ns.name)
            sups.append(sup)
            mac = ns.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
            directors[name] = Director(name, ns, mac, sup, config)
        yield Lab(switch, spaces["client"], directors)
    finally:
        outdir = os.environ.get("LVS_VM_OUTDIR")
        for sup in sups:
            with contextlib.suppress(Exception):
                sup.stop()
            if outdir:  # keepalived's own log, for a failure's post-mortem
                with contextlib.suppress(OSError):
                    name = f"test_vrrp-{sup.run_dir.parent.name}.log"
                    shutil.copy(sup.log_path, Path(outdir) / name)
        for ns in reversed(made):
            ns.close()
            with contextlib.suppress(OSError):
                netns.remove(ns.name)


def _who(lab: Lab) -> set[str]:
    return arp_responders(lab.client.name, "eth0", VIP, ASK, sender_ip=CLIENT)


def _until_only(lab: Lab, mac: str | None, timeout: float) -> tuple[float, list[set[str]]]:
    """Ask until exactly one MAC (`mac`, or any) answers; (seconds it took, every answer
    seen on the way that had two MACs)."""
    t0 = time.monotonic()
    doubles = []
    for _ in range(1000):
        answer = _who(lab)
        if len(answer) > 1:
            doubles.append(answer)
        if len(answer) == 1 and (mac is None or answer == {mac}):
            return time.monotonic() - t0, doubles
        if time.monotonic() - t0 > timeout:
            break
    raise AssertionError(f"not only {mac or 'one MAC'} answering for {VIP} after {timeout} s "
                         f"(last answers {answer}, doubles {doubles})")


def _apply_until_running(d: Director, timeout: float = 10.0) -> list[str]:
    events: list[str] = []
    deadline = time.monotonic() + timeout
    for _ in range(100):
        events += d.sup.apply(d.config)
        if d.sup.running() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert d.sup.running(), events
    return events


def _settled(lab: Lab, timeout: float = 20.0) -> Director:
    """Both keepalived running, exactly one director answering (steady for 3 questions),
    holding the VIP and MASTER by keepalived's log; the other BACKUP and without it."""
    for d in lab.directors.values():
        _apply_until_running(d)
    deadline = time.monotonic() + timeout
    for _ in range(100):
        _until_only(lab, None, max(1.0, deadline - time.monotonic()))
        answers = [_who(lab) for _ in range(3)]
        if all(len(a) == 1 for a in answers) and len(set(map(frozenset, answers))) == 1:
            break
        assert time.monotonic() < deadline, answers
    master = lab.by_mac(next(iter(answers[0])))
    backup = lab.other(master)
    assert _holds(master.ns) and not _holds(backup.ns)
    for _ in range(20):  # the log line may trail the address by a moment
        if (master.sup.state(), backup.sup.state()) == (
            {"lvs-ha-192.0.2.10": "MASTER"}, {"lvs-ha-192.0.2.10": "BACKUP"}
        ):
            break
        time.sleep(0.25)
    assert master.sup.state() == {"lvs-ha-192.0.2.10": "MASTER"}
    assert backup.sup.state() == {"lvs-ha-192.0.2.10": "BACKUP"}
    return master


def _report(lab: Lab, capsys: pytest.CaptureFixture[str], what: str, seconds: float,
            bound: float) -> None:
    lab.times[what] = seconds
    with capsys.disabled():
        print(f"\nVRRP takeover, {what}: {seconds:.2f} s (bound {bound:.2f} s)", flush=True)


def test_exactly_one_director_holds_the_vip(lab: Lab) -> None:
    for d in lab.directors.values():
        assert f"auth_pass {PASSWORD}" in d.config
        assert d.sup.apply(d.config) == [f"keepalived: started pid {d.sup.pid} in netns "
                                         f"{d.ns.name}"]
    # Equal priorities: the backup whose Master_Down timer fires first becomes master and
    # the other accepts its adverts (a tie only goes to the higher address between masters).
    _settled(lab, timeout=MASTER_DOWN + 15)


def test_cutting_the_masters_link_moves_the_vip(lab: Lab,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    master = _settled(lab)
    backup = lab.other(master)
    port = lab.switch.link_index(f"p-{master.name}")
    lab.switch.ipr.link("set", index=port, state="down")
    try:
        bound = MASTER_DOWN + SLACK
        took, doubles = _until_only(lab, backup.mac, bound)
        _report(lab, capsys, "master's link cut", took, bound)
        assert doubles == []
        assert _holds(backup.ns)
        # without carrier keepalived puts the instance in FAULT and drops the VIP
        for _ in range(20):
            if master.sup.state() == {"lvs-ha-192.0.2.10": "FAULT"}:
                break
            time.sleep(0.25)
        assert master.sup.state() == {"lvs-ha-192.0.2.10": "FAULT"}
        assert not _holds(master.ns)
    finally:
        lab.switch.ipr.link("set", index=port, state="up")
    # back on the segment as BACKUP: an equal priority does not preempt, no flap
    for _ in range(int(3 * ADVERT / ASK)):
        assert _who(lab) == {backup.mac}
    assert _settled(lab) is backup


def test_sigterm_to_the_masters_keepalived_moves_the_vip_at_once(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    master = _settled(lab)
    backup = lab.other(master)
    pid = master.sup.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # keepalived sends priority 0: no Master_Down wait
    bound = (256 - PRIORITY) / 256 * ADVERT + SLACK
    took, doubles = _until_only(lab, backup.mac, bound)
    _report(lab, capsys, "SIGTERM to the master's keepalived", took, bound)
    assert doubles == []
    for _ in range(100):
        if not master.sup.running():
            break
        time.sleep(0.1)
    assert not _holds(master.ns)  # it released the VIP on its way out
    events = _apply_until_running(master)
    assert events[0].startswith(f"keepalived (pid {pid}) exited with status 0"), events
    assert not any("removed VIP" in e for e in events), events  # nothing was left
    assert _settled(lab) is backup


def test_sigkill_to_the_parent_alone_is_a_clean_handover(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kernel sends the VRRP child SIGTERM when its parent dies (parent-death signal):
    it sends priority 0 and removes the VIP like a normal stop."""
    master = _settled(lab)
    backup = lab.other(master)
    pid = master.sup.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    bound = (256 - PRIORITY) / 256 * ADVERT + SLACK
    took, doubles = _until_only(lab, backup.mac, bound)
    _report(lab, capsys, "SIGKILL to the master's keepalived parent only", took, bound)
    assert doubles == []
    events = _apply_until_running(master)
    assert events[0].startswith(f"keepalived (pid {pid}) was killed by SIGKILL"), events
    assert not any("removed VIP" in e for e in events), events
    assert not _holds(master.ns)
    assert _settled(lab) is backup


def test_sigkill_leaves_the_vip_behind_until_the_supervisor_looks(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL to keepalived's whole process group (OOM killer, a pod's PID namespace
    going away): nobody removes the VIP, the backup takes it over after Master_Down, and
    for as long as nothing restarts keepalived there, two MACs answer for the VIP."""
    master = _settled(lab)
    backup = lab.other(master)
    pid = master.sup.pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    bound = MASTER_DOWN + SLACK
    t0 = time.monotonic()
    for _ in range(1000):
        answer = _who(lab)
        if backup.mac in answer or time.monotonic() - t0 > bound:
            break
    took = time.monotonic() - t0
    _report(lab, capsys, "SIGKILL to the master's keepalived group", took, bound)
    assert backup.mac in answer, answer
    assert _holds(master.ns)  # left behind
    assert _who(lab) == {master.mac, backup.mac}  # split brain on the wire
    events = _apply_until_running(master)
    assert events[0].startswith(f"keepalived (pid {pid}) was killed by SIGKILL"), events
    assert any(f"removed VIP {VIP}/32 from eth0" in e for e in events), events
    t1 = time.monotonic()
    healed, _ = _until_only(lab, backup.mac, 5.0)
    assert not _holds(master.ns)
    _report(lab, capsys, "SIGKILL: supervisor pass to a single MAC again",
            time.monotonic() - t1, 5.0)
    assert healed <= 5.0
    assert _settled(lab) is backup


def test_no_vrrp_vip_left_stops_keepalived(lab: Lab) -> None:
    master = _settled(lab)
    backup = lab.other(master)
    assert master.sup.apply(None)[0].endswith("stopped")
    _until_only(lab, backup.mac, (256 - PRIORITY) / 256 * ADVERT + SLACK)
    assert not _holds(master.ns) and not master.sup.config_path.exists()
    assert backup.sup.apply(None)[0].endswith("stopped")
    assert not _holds(backup.ns)
    assert _who(lab) == set()


def test_takeover_times(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        for what, seconds in lab.times.items():
            print(f"\nVRRP takeover summary, {what}: {seconds:.2f} s", flush=True)


# The configuration checker of the keepalived the harness installed (the guest runs the host's
# binaries; the unit tier may run before it is installed on a fresh machine).
def test_keepalived_itself_accepts_the_configuration(tmp_path: Path) -> None:
    vips = (unit.vrrp_vip(auth_secret_ref="default/p", unicast_peers=("192.0.2.3",)),
            unit.vrrp_vip("2001:db8::10", 51, prefix=128))
    text = unit.render(unit.plan(*vips), {"default/p": "secret"})
    assert text is not None
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    done = subprocess.run(["keepalived", "--config-test", f"--use-file={conf}", "--vrrp"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
