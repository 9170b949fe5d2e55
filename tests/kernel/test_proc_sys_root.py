"""Sysctls the way the agent's container sees them: /proc/sys read-only (a container that is not
privileged), the host's /proc/sys/net mounted read-write at /host/proc/sys/net (the Helm chart's
hostPath), and `ProcSysctls(root=/host/proc/sys)` (`lvs-agent --proc-sys /host/proc/sys`).

Each case runs in a child process in its own mount namespace (`unshare --mount`, private
propagation), so the mounts never reach the host and vanish with the child."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lvs_operator.agent.main import _parser, real_kernel
from lvs_operator.kernel.errors import NotFound
from lvs_operator.kernel.real_net import ProcSysctls
from tests.kernel.conftest import run

# Runs inside the child: argv = tmp dir, netns name ("" = the child's own), device, lo value.
CHILD = r"""
import json, subprocess, sys
from pathlib import Path
from lvs_operator.kernel.errors import KernelError
from lvs_operator.kernel.real_net import ProcSysctls

tmp, netns, device, lo_value = Path(sys.argv[1]), sys.argv[2] or None, sys.argv[3], sys.argv[4]

def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)

if netns is None:  # our own network namespace (unshare --net), like the host's with hostNetwork
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", device, "type", "veth", "peer", "name", device + "-peer")
host_net = tmp / "host" / "proc" / "sys" / "net"
host_net.mkdir(parents=True)
# the chart's layout: /proc/sys/net as a read-write hostPath, then /proc/sys read-only (a bind
# mount copies the flags of its source, so the read-write one is made first)
sh("mount", "--bind", "/proc/sys/net", str(host_net))
sh("mount", "--bind", "/proc/sys", "/proc/sys")
sh("mount", "-o", "remount,bind,ro", "/proc/sys")

key = f"net.ipv4.conf.{device}.arp_ignore"
out = {}
mounted = ProcSysctls(netns, root=tmp / "host" / "proc" / "sys")
mounted.set(key, "1")
mounted.set("net.ipv4.conf.lo.arp_ignore", lo_value)
out["mounted"] = mounted.get(key)
out["lo"] = mounted.get("net.ipv4.conf.lo.arp_ignore")
default = ProcSysctls(netns)
out["default_get"] = default.get(key)  # reading a read-only /proc/sys still works
try:
    default.set(key, "2")
except KernelError as exc:
    out["error"] = [type(exc).__name__, str(exc)]
out["after_error"] = mounted.get(key)
print(json.dumps(out))
"""


def in_container(tmp: Path, netns: str | None, device: str, lo_value: str) -> dict[str, Any]:
    """Run CHILD in a fresh mount namespace (and, without `netns`, a fresh network one)."""
    if shutil.which("unshare") is None:
        pytest.skip("missing unshare: apt-get install util-linux")
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if netns is None:
        unshare.append("--net")
    proc = subprocess.run(
        [*unshare, "--", sys.executable, "-c", CHILD, str(tmp), netns or "", device, lo_value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"cannot make a mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def other_value(path: str) -> str:
    """An arp_ignore value that differs from the one at `path`."""
    return "2" if Path(path).read_text().strip() != "2" else "1"


def assert_clear_read_only_error(result: dict[str, Any], device: str) -> None:
    kind, message = result["error"]
    assert kind == "PermissionDenied"
    assert f"/proc/sys/net/ipv4/conf/{device}/arp_ignore is on a read-only file system" in message
    assert "mounts the host's /proc/sys/net read-write at /host/proc/sys/net" in message
    assert "--proc-sys /host/proc/sys" in message


def test_hostpath_proc_sys_net_in_a_named_namespace(
    tmp_path: Path, netns: str, netns_device: str
) -> None:
    """ProcSysctls enters the namespace before opening the path, and the bind-mounted tree
    still resolves in the namespace of whoever looks (the setns path: --netns, tests)."""
    host_lo = "/proc/sys/net/ipv4/conf/lo/arp_ignore"
    before = Path(host_lo).read_text()
    result = in_container(tmp_path, netns, netns_device, other_value(host_lo))
    assert result["mounted"] == result["default_get"] == result["after_error"] == "1"
    assert_clear_read_only_error(result, netns_device)
    conf = f"/proc/sys/net/ipv4/conf/{netns_device}/arp_ignore"
    assert run("ip", "netns", "exec", netns, "cat", conf).strip() == "1"
    assert Path(host_lo).read_text() == before  # the namespace's lo, not the host's
    assert not any(tmp_path.joinpath("host", "proc", "sys", "net").iterdir())  # mount gone


def test_hostpath_proc_sys_net_in_the_own_namespace(tmp_path: Path, netns: str) -> None:
    """netns=None, as the agent runs with hostNetwork: the child's own network namespace
    (unshare --net) stands in for the host's. (`netns` only asks for root and `ip`.)"""
    host_lo = "/proc/sys/net/ipv4/conf/lo/arp_ignore"
    before = Path(host_lo).read_text()
    lo_value = other_value(host_lo)
    result = in_container(tmp_path, None, "eth0", lo_value)
    assert result["mounted"] == result["default_get"] == result["after_error"] == "1"
    assert result["lo"] == lo_value
    assert_clear_read_only_error(result, "eth0")
    assert Path(host_lo).read_text() == before


def test_a_root_without_net_says_what_to_mount(tmp_path: Path, netns: str) -> None:
    sysctls = ProcSysctls(netns, root=tmp_path)
    assert sysctls.get("net.ipv4.conf.lo.arp_ignore") is None
    with pytest.raises(NotFound) as caught:
        sysctls.set("net.ipv4.conf.lo.arp_ignore", "1")
    assert str(caught.value) == (
        f"sysctl net.ipv4.conf.lo.arp_ignore does not exist: there is no {tmp_path}/net (is the "
        f"host's /proc/sys/net mounted under {tmp_path}? see --proc-sys)"
    )


def test_the_agent_passes_proc_sys_through(tmp_path: Path, netns: str) -> None:
    args = _parser().parse_args(["--node", "n1", "--proc-sys", "/host/proc/sys"])
    assert args.proc_sys == Path("/host/proc/sys")
    assert _parser().parse_args(["--node", "n1"]).proc_sys == Path("/proc/sys")
    sysctls = real_kernel(netns, "nft", tmp_path).sysctls
    assert sysctls.root == tmp_path  # type: ignore[attr-defined]
    assert real_kernel(netns, "nft").sysctls.root == Path("/proc/sys")  # type: ignore[attr-defined]
