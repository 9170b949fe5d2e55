"""The agent's cached kernel view: fast passes on plan changes, never unsafe ones."""

from __future__ import annotations

from lvs_operator.agent.cache import CachingKernel
from lvs_operator.agent.reconcile import InSync, reconcile
from lvs_operator.agent.state import AgentState
from lvs_operator.kernel.ipvs import IPVSOp, IPVSOpKind

from .builders import rs, vs
from .test_reconcile import KEY, dests, fake_kernel, plans, web


class CountingIPVS:
    """Counts how often the real table is read."""

    def __init__(self, inner) -> None:
        self.inner, self.dumps = inner, 0

    def probe(self) -> None:
        self.inner.probe()

    def dump(self):
        self.dumps += 1
        return self.inner.dump()

    def apply(self, ops):
        return self.inner.apply(ops)


def _setup():
    real = fake_kernel()
    counting = CountingIPVS(real.ipvs)
    real = real.__class__(counting, real.ipsets, real.chains, real.addresses, real.sysctls,
                          real.tunnels)
    return real, counting, CachingKernel(real), AgentState()


def _pool(weight_of_first: int) -> list[dict]:
    docs = []
    for i in range(20):
        docs.append(vs(f"s{i}", f"192.0.2.{i + 1}", selector={"app": f"a{i}"}))
        docs.append(rs(f"r{i}", f"198.51.100.{i + 1}", app=f"a{i}",
                       weight=weight_of_first if i == 0 else 1))
    return docs


def test_one_change_is_one_step_without_reading_or_rediffing_the_rest(monkeypatch):
    import lvs_operator.agent.reconcile as rec

    _real, counting, caching, state = _setup()
    in_sync: InSync = {}
    assert reconcile(plans(*_pool(1)), caching.view, state, in_sync=in_sync).ok
    caching.refresh()  # the timer's full read finds all 20 in sync and remembers them
    assert reconcile(plans(*_pool(1)), caching.view, state, in_sync=in_sync).steps == []
    assert counting.dumps == 2 and len(in_sync) == 20
    compared = []
    original = rec.service_attributes
    monkeypatch.setattr(rec, "service_attributes", lambda s: compared.append(s.key) or original(s))
    report = reconcile(plans(*_pool(7)), caching.view, state, in_sync=in_sync)  # a plan change
    assert report.ok and [str(s) for s in report.steps] == [
        "ipvs edit-dest tcp/192.0.2.1:80 -> 198.51.100.1:80 w7"]
    assert counting.dumps == 2  # nothing read from the kernel
    assert set(compared) == {KEY._replace(address="192.0.2.1")}  # the other 19 were skipped


def test_cached_passes_never_delete_on_stale_connection_counts():
    real, _counting, caching, state = _setup()
    reconcile(plans(*web("198.51.100.11", "198.51.100.12")), caching.view, state)
    caching.view.ipvs.dump()
    assert caching.view.ipvs.counts_current is False
    one = plans(*web("198.51.100.11"))
    report = reconcile(one, caching.view, state)  # the kernel says 0 connections, the cache
    assert dests(real) == {("198.51.100.11", 80): 1, ("198.51.100.12", 80): 0}  # doesn't know
    assert report.waiting_drains == 1
    caching.refresh()  # the timer's full read: now the real count (0) decides
    reconcile(one, caching.view, state)
    assert dests(real) == {("198.51.100.11", 80): 1}


def test_drift_behind_the_agents_back_is_repaired_by_the_full_read():
    real, _counting, caching, state = _setup()
    plan = plans(*web("198.51.100.11"))
    reconcile(plan, caching.view, state)
    svc = real.ipvs.dump()[0].service
    real.ipvs.apply([IPVSOp(IPVSOpKind.DEL_SERVICE, svc)])  # ipvsadm -D
    assert reconcile(plan, caching.view, state).steps == []  # the cache cannot know
    caching.refresh()
    assert reconcile(plan, caching.view, state).ok
    assert dests(real) == {("198.51.100.11", 80): 1}


def test_a_failed_write_drops_the_cached_table():
    real, counting, caching, state = _setup()
    plan = plans(*web("198.51.100.11"))
    reconcile(plan, caching.view, state)
    bad = plan._replace(director=plan.director._replace(services=(
        plan.director.services[0]._replace(scheduler="nonexistent"),)))
    assert not reconcile(bad, caching.view, state).ok
    reconcile(plan, caching.view, state)
    assert counting.dumps == 2  # read again after the failure
    assert KEY in {s.service.key for s in real.ipvs.dump()}
