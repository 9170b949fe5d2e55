"""Fixtures for the cluster tier: one local control plane (etcd + kube-apiserver) per session,
and one qemu guest (real IPVS) that reaches its API server through a forward.

Why session scope: a warm start takes seconds, not milliseconds; tests isolate themselves
with their own namespaces and names instead of their own API server or VM.

The control plane (and later the operator) run on the host's loopback; node agents and IPVS
traffic run in the guest (`guest`), which reaches the host only at
https://10.0.2.100:APISERVER_GUEST_PORT -> the API server (qemu user net, restrict=on).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness.controlplane import BinariesUnavailable, LocalControlPlane, ensure_binaries
from tests.harness.lvs_install import agent_kubeconfig
from tests.harness.vm import GuestVM, VmSetupError

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parents[1]
APISERVER_GUEST_PORT = 6443  # the guest's https://10.0.2.100:6443 is the API server
REQUIRED = os.environ.get("LVS_CLUSTER_REQUIRED") == "1"  # CI: what cannot run fails


def _live_logger(request: pytest.FixtureRequest, prefix: str) -> Callable[[str], None]:
    """Progress printed past pytest's capture: a long first start must not look hung."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def live(message: str) -> None:
        line = f"[{prefix}] {message}"
        if capman is None:
            print(line, file=sys.stderr, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    return live


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/cluster as `cluster` (so `-m "not cluster"` skips them)."""
    for item in items:
        if CLUSTER_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[LocalControlPlane]:
    """A running control plane; binaries are fetched/built on first use (minutes, once).

    Skips only when the binaries cannot be obtained on this machine at all (no Go toolchain,
    registries unreachable); LVS_CLUSTER_REQUIRED=1 turns that skip into a failure for CI.
    """
    # Why bypass capture: a first run compiles kube-apiserver for minutes, and a person or
    # a CI log must see that it is progressing, not hung.
    live = _live_logger(request, "controlplane")
    try:
        binaries = ensure_binaries(live)
    except BinariesUnavailable as exc:
        reason = f"control plane binaries cannot be obtained here: {exc}"
        if REQUIRED:
            pytest.fail(reason + " (LVS_CLUSTER_REQUIRED=1)", pytrace=False)
        pytest.skip(reason)

    def captured(message: str) -> None:
        print(f"[controlplane] {message}", file=sys.stderr, flush=True)

    with LocalControlPlane(binaries, log=captured) as cp:
        yield cp


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest, control_plane: LocalControlPlane) -> Iterator[GuestVM]:
    """One qemu guest for the session (boot ~5 s under TCG), driven from here over GuestVM.

    Its only way to the host: 10.0.2.100:APISERVER_GUEST_PORT -> the API server. Skips when
    the VM cannot be prepared here (no qemu, no kernel); LVS_CLUSTER_REQUIRED=1 fails instead.
    """
    forwards = [(APISERVER_GUEST_PORT, control_plane.port)]
    # its whole life is the tier's (~20 min warm with the HA failover module; qemu is killed
    # after `timeout`)
    vm = GuestVM(forwards=forwards, log=_live_logger(request, "guest"), timeout=3600)
    try:
        vm.start()
    except VmSetupError as exc:
        reason = f"the VM cannot be prepared here: {exc}"
        if REQUIRED:
            pytest.fail(reason + " (LVS_CLUSTER_REQUIRED=1)", pytrace=False)
        pytest.skip(reason)
    try:
        yield vm
    finally:
        vm.stop()


@pytest.fixture(scope="session")
def guest_kubeconfig(
    control_plane: LocalControlPlane, guest: GuestVM
) -> Callable[..., str]:
    """Factory: a kubeconfig for use INSIDE the guest; returns its path there.

    ``guest_kubeconfig("lvs-agent", ["lvs:agents"])`` mints an x509 identity,
    ``guest_kubeconfig(service_account=("lvs-system", "lvs-agent"))`` a ServiceAccount token,
    ``guest_kubeconfig(agent_node="n1")`` the chart's agent identity as its pod on node n1
    has it (tests/harness/lvs_install.agent_kubeconfig; the chart must be installed).
    The server is https://10.0.2.100:APISERVER_GUEST_PORT (TLS verified against the test CA);
    the file is written into the guest with put_file at the same path as on the host (files
    made on the host after boot are not reliably visible in the guest).
    """
    server = f"https://{guest.forward_address(control_plane.port)}"

    def make(
        user: str | None = None,
        groups: Sequence[str] = (),
        *,
        service_account: tuple[str, str] | None = None,
        agent_node: str | None = None,
    ) -> str:
        if agent_node is not None:
            own = control_plane.workdir / "kubeconfigs" / f"guest-agent-{agent_node}.kubeconfig"
            path = agent_kubeconfig(control_plane, agent_node, server=server, path=own)
        elif service_account is not None:
            namespace, name = service_account
            # Its own file: the host's kubeconfig for the same account keeps its loopback URL.
            own = control_plane.workdir / "kubeconfigs" / f"guest-sa-{namespace}-{name}.kubeconfig"
            path = control_plane.service_account_kubeconfig(namespace, name, server=server,
                                                            path=own)
        elif user is not None:
            path = control_plane.mint_kubeconfig(user, groups, server=server)
        else:
            raise ValueError("give a user or a service_account")
        return guest.put_file(path, path.read_text(), mode=0o600)

    return make
