"""Fixtures for the cluster tier: one local control plane (etcd + kube-apiserver) per session.

Why session scope: a warm start takes seconds, not milliseconds; tests isolate themselves
with their own namespaces and names instead of their own API server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.controlplane import BinariesUnavailable, LocalControlPlane, ensure_binaries

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parents[1]


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
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def live(message: str) -> None:
        # Why bypass capture: a first run compiles kube-apiserver for minutes, and a person or
        # a CI log must see that it is progressing, not hung.
        line = f"[controlplane] {message}"
        if capman is None:
            print(line, file=sys.stderr, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    try:
        binaries = ensure_binaries(live)
    except BinariesUnavailable as exc:
        reason = f"control plane binaries cannot be obtained here: {exc}"
        if os.environ.get("LVS_CLUSTER_REQUIRED") == "1":
            pytest.fail(reason + " (LVS_CLUSTER_REQUIRED=1)", pytrace=False)
        pytest.skip(reason)

    def captured(message: str) -> None:
        print(f"[controlplane] {message}", file=sys.stderr, flush=True)

    with LocalControlPlane(binaries, log=captured) as cp:
        yield cp
