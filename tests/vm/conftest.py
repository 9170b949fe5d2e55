"""Fixtures for the `vm` tier: tests that run INSIDE the qemu guest (real IPVS).

Run them with::

    python -m tests.harness.vm run -- .venv/bin/python -m pytest -q -p no:cacheprovider \\
        -p no:hypothesispytest tests/vm

(`-p no:hypothesispytest` only saves time: importing hypothesis takes ~8 s under TCG.)

On the host (no LVS_IN_VM) every test here is skipped with that hint, so a plain `pytest` run
stays green. Helpers build throwaway network namespaces joined by veth pairs; addresses come
only from the documentation/benchmark ranges, and every namespace is removed afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.vm.netlab import Netns

IN_VM = os.environ.get("LVS_IN_VM") == "1"
RUN_HINT = ("needs the qemu guest with a Debian kernel (real IPVS): "
            "python -m tests.harness.vm run -- .venv/bin/python -m pytest -q "
            "-p no:cacheprovider -p no:hypothesispytest tests/vm")
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything here `vm`; skip it on the host, where the kernel has no IPVS."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vm)
            if not IN_VM:
                item.add_marker(pytest.mark.skip(reason=RUN_HINT))


_counter = itertools.count()


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], Netns]]:
    """Factory: make_netns("client") -> Netns, with lo up; all removed at teardown."""
    from pyroute2 import netns

    made: list[Netns] = []
    prefix = f"lvst{os.getpid() % 10000}x{next(_counter)}"

    def make(role: str) -> Netns:
        ns = Netns(f"{prefix}-{role}")
        netns.create(ns.name)
        made.append(ns)
        ns.up("lo")
        return ns

    yield make
    for ns in reversed(made):
        ns.close()
        with contextlib.suppress(OSError):
            netns.remove(ns.name)
