"""The `kernel` tier: real adapters against this host's kernel, each test in a fresh network
namespace (`ip netns add lvs-test-<random>`, lo up, deleted afterwards), so nothing on the
host is read or changed and nothing is sent.

Needs root (namespaces, netfilter) and these Debian packages: iproute2 (`ip`), iptables
(`iptables-{nft,legacy}-{save,restore}`), ipset (the `ipset` CLI, only to cross-check the
netlink adapter's text against `ipset save`). Whatever is missing skips the tests that need
it, naming the binary and the package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lvs_operator.kernel.real_chains import parse_save, restore_line

HERE = Path(__file__).resolve().parent
PACKAGES = {"ip": "iproute2", "ipset": "ipset"}  # everything else here is from `iptables`


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.kernel)


def require(*binaries: str) -> None:
    """Skip unless every binary is on PATH, saying which are missing and how to get them."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        packages = sorted({PACKAGES.get(b, "iptables") for b in missing})
        pytest.skip(f"missing {', '.join(missing)}: apt-get install {' '.join(packages)}")


def run(*cmd: str, check: bool = True, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def available_flavours() -> list[str]:
    """nft and/or legacy, as far as their binaries are installed."""
    return [
        f
        for f in ("nft", "legacy")
        if all(
            shutil.which(f"{b}-{f}-{v}")
            for b in ("iptables", "ip6tables")
            for v in ("save", "restore")
        )
    ]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with lo up; deleted (with everything in it) afterwards."""
    if os.geteuid() != 0:
        pytest.skip("kernel tier needs root: network namespaces, ipset and iptables")
    require("ip")
    name = f"lvs-test-{secrets.token_hex(4)}"
    proc = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot create a network namespace (ip netns add): {proc.stderr.strip()}")
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(
            ["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False
        )


@pytest.fixture
def netns_device(netns: str) -> str:
    """An ordinary device in `netns` (not lo): `eth0`, one end of a veth pair (this host's
    kernel has no dummy driver), up, holding 198.18.0.2/24 and the default route via
    198.18.0.1, without an IPv6 link-local address (none to be tentative). Nothing is sent:
    the peer end stays in the same namespace."""
    run("ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    for end in ("eth0", "eth0-peer"):  # no link-local address, so nothing is tentative
        run("ip", "-n", netns, "link", "set", end, "addrgenmode", "none")
    run("ip", "-n", netns, "link", "set", "eth0-peer", "up")
    run("ip", "-n", netns, "link", "set", "eth0", "up")
    run("ip", "-n", netns, "addr", "add", "198.18.0.2/24", "dev", "eth0")
    run("ip", "-n", netns, "route", "add", "default", "via", "198.18.0.1", "dev", "eth0")
    return "eth0"


class IptablesForeign:
    """A foreign writer in the namespace: plain `iptables` commands of one flavour, never
    through the adapter."""

    def __init__(self, netns: str, flavour: str) -> None:
        self.netns = netns
        self.flavour = flavour

    def _tool(self, family: int, verb: str = "") -> list[str]:
        base = "iptables" if family == 4 else "ip6tables"
        name = f"{base}-{self.flavour}" + (f"-{verb}" if verb else "")
        return ["ip", "netns", "exec", self.netns, name]

    def add_chain(self, family: int, table: str, chain: str) -> None:
        run(*self._tool(family), "-w", "-t", table, "-N", chain)

    def add_rule(
        self, family: int, table: str, chain: str, args: Sequence[str], first: bool = False
    ) -> None:
        where = ["-I", chain, "1"] if first else ["-A", chain]
        run(*self._tool(family), "-w", "-t", table, *where, *args)

    def save(self, family: int, table: str) -> str:
        return run(*self._tool(family, "save"), "-t", table)

    def snapshot(self, family: int, table: str, owned: str) -> list[str]:
        saved = parse_save(self.save(family, table), table)
        lines = sorted(f":{c}" for c in saved.chains if c != owned)
        lines += [
            f"-A {c} {restore_line(args)}"
            for c, args in saved.rules
            if c != owned and owned not in args
        ]
        return lines

    def jumps(self, family: int, table: str, chain: str) -> int:
        saved = parse_save(self.save(family, table), table)
        return sum(1 for _, args in saved.rules if f"-j {chain}" in restore_line(args))
