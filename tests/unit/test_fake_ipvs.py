"""The IPVS contract against the in-memory FakeIPVS (the same suite runs on real IPVS in the
VM: tests/vm/test_real_ipvs.py), plus what only the fake offers."""

from __future__ import annotations

import pytest

from lvs_operator.compiler.plan import Destination, IPVSService
from lvs_operator.kernel.errors import KernelUnavailable
from lvs_operator.kernel.fake import FakeIPVS
from tests.contract.ipvs_contract import IPVSContract, OpenConnection, add_ops, dest, tcp


class TestFakeIPVS(IPVSContract):
    @pytest.fixture
    def ipvs(self) -> FakeIPVS:
        return FakeIPVS()

    @pytest.fixture
    def open_connection(self, ipvs: FakeIPVS) -> OpenConnection:
        def open_one(service: IPVSService, d: Destination) -> None:
            ipvs.set_connections(service.key, d.key, active=0, inactive=1)

        return open_one


def test_unavailable_fake_refuses_everything() -> None:
    fake = FakeIPVS(available=False)
    for call in (fake.probe, fake.dump, lambda: fake.apply(add_ops(tcp()))):
        with pytest.raises(KernelUnavailable):
            call()


def test_applied_records_only_successful_ops() -> None:
    fake = FakeIPVS()
    ops = add_ops(tcp()._replace(destinations=(dest(),)))
    failures = fake.apply([*ops, *ops])
    assert [f.op for f in failures] == ops
    assert fake.applied == ops
