"""`make demo` is the README's main command: run the same demo on the tier's control plane
and guest, so a broken demo fails CI. It applies every example and waits until the real
agents have programmed all of them, then sends requests through the NAT example's VIP."""

from __future__ import annotations

import pytest

from tests.harness.controlplane import LocalControlPlane
from tests.harness.demo import demo_in
from tests.harness.vm import GuestVM


def test_make_demo_programs_every_example_and_serves_requests(
    control_plane: LocalControlPlane, guest: GuestVM, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = demo_in(control_plane, guest, requests=8, timeout=600)
    out = capsys.readouterr().out
    shown = out if len(out) < 12000 else f"{out[:8000]}\n[...]\n{out[-4000:]}"
    print(shown)
    assert ok, shown
    assert "web-nat-1" in out and "web-nat-2" in out
    table = out.split("==> kubectl get virtualservices", 1)[1].split("==>", 1)[0]
    rows = [line.split() for line in table.strip().splitlines()[1:]]
    assert len(rows) == 9 and all("True" in r for r in rows), table
