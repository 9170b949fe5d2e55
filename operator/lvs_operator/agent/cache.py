"""A cached view of the kernel for passes triggered by a plan change.

A full pass reads the whole kernel: at 10,000 IPVS services that read costs seconds while the
change itself is one netlink message. Between full resyncs (the `--interval` timer, which is
what repairs drift) the agent diffs against what it last read plus what it has written since.
The cached IPVS view says when its connection counts are not current (`counts_current`), so
no drain decision is ever taken on stale numbers: a leaving destination only goes to weight 0
in a cached pass and is deleted by a later full pass. It hands out the very objects the last
read returned, so the reconciler can recognise services it already found in sync. Any failed
write drops the cache, so the next pass reads again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..compiler.plan import ServiceKey, TunnelDevice
from ..kernel.ipvs import (
    IPVSOp,
    IPVSOpKind,
    IPVSTable,
    LiveDestination,
    LiveService,
    OpFailure,
    SyncDaemon,
    dest_attributes,
    service_attributes,
)
from ..kernel.netstate import (
    AddressEntry,
    Addresses,
    ChainSpec,
    IPSets,
    IPSetState,
    OwnedChains,
    Sysctls,
    Tunnels,
)
from .reconcile import Kernel

__all__ = ["CachingKernel"]


class _CachedIPVS:
    def __init__(self, table: IPVSTable) -> None:
        self._table = table
        self._services: dict[ServiceKey, LiveService] | None = None
        self.counts_current = True  # read by the reconciler: may it decide drains?

    def refresh(self) -> None:
        self._services = None

    def probe(self) -> None:
        if self._services is None:
            self._table.probe()

    def dump(self) -> list[LiveService]:
        if self._services is not None:
            self.counts_current = False
            return list(self._services.values())
        fresh = self._table.dump()
        self._services = {ls.service.key: ls for ls in fresh}
        self.counts_current = True
        return fresh

    def daemons(self) -> list[SyncDaemon]:
        return self._table.daemons()  # never cached: two at most, and cheap to read

    def start_daemon(self, d: SyncDaemon) -> None:
        self._table.start_daemon(d)

    def stop_daemon(self, state: str) -> None:
        self._table.stop_daemon(state)

    def apply(self, ops: Sequence[IPVSOp]) -> list[OpFailure]:
        failures = self._table.apply(ops)
        if failures or self._services is None:
            self._services = None
            return failures
        for op in ops:
            self._record(self._services, op)
        return failures

    @staticmethod
    def _record(services: dict[ServiceKey, LiveService], op: IPVSOp) -> None:
        key = op.service.key
        if op.kind is IPVSOpKind.ADD_SERVICE:
            services[key] = LiveService(service_attributes(op.service))
        elif op.kind is IPVSOpKind.DEL_SERVICE:
            services.pop(key, None)
        elif op.kind is IPVSOpKind.EDIT_SERVICE:
            services[key] = services[key]._replace(service=service_attributes(op.service))
        else:
            assert op.dest is not None
            live = services[key]
            dests = {d.dest.key: d for d in live.destinations}
            if op.kind is IPVSOpKind.DEL_DEST:
                dests.pop(op.dest.key, None)
            else:
                before = dests.get(op.dest.key, LiveDestination(op.dest))
                dests[op.dest.key] = before._replace(dest=dest_attributes(op.dest))
            services[key] = live._replace(destinations=tuple(dests.values()))


class _ReadCache:
    """Memoises an adapter's reads; any write through it forgets them."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], Any] = {}

    def read(self, key: tuple[Any, ...], fetch: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = fetch()
        return self._memo[key]

    def forget(self) -> None:
        self._memo.clear()


class _CachedIPSets(_ReadCache):
    def __init__(self, inner: IPSets) -> None:
        super().__init__()
        self._inner = inner

    def list(self, prefix: str) -> dict[str, IPSetState]:
        return dict(self.read(("list", prefix), lambda: self._inner.list(prefix)))

    def create(self, name: str, set_type: str, family: str) -> None:
        self.forget()
        self._inner.create(name, set_type, family)

    def destroy(self, name: str) -> None:
        self.forget()
        self._inner.destroy(name)

    def add(self, name: str, entries: Iterable[str]) -> None:
        self.forget()
        self._inner.add(name, entries)

    def delete(self, name: str, entries: Iterable[str]) -> None:
        self.forget()
        self._inner.delete(name, entries)


class _CachedChains(_ReadCache):
    def __init__(self, inner: OwnedChains) -> None:
        super().__init__()
        self._inner = inner

    def read(self, family: int, table: str, chain: str) -> ChainSpec | None:  # type: ignore[override]
        result: ChainSpec | None = super().read(
            ("read", family, table, chain), lambda: self._inner.read(family, table, chain)
        )
        return result

    def replace(self, spec: ChainSpec) -> None:
        self.forget()
        self._inner.replace(spec)

    def remove(self, family: int, table: str, chain: str, hook: str) -> None:
        self.forget()
        self._inner.remove(family, table, chain, hook)

    def canonical(self, spec: ChainSpec) -> ChainSpec:
        return self._inner.canonical(spec)


class _CachedAddresses(_ReadCache):
    def __init__(self, inner: Addresses) -> None:
        super().__init__()
        self._inner = inner

    def list(self) -> list[AddressEntry]:
        entries: list[AddressEntry] = self.read(("list",), self._inner.list)
        if any(e.lifetime is not None for e in entries):
            # An address with a lifetime (an HA VIP) may run out after this read: the kernel
            # deletes it by itself, with no write here to drop the memo, so none is kept.
            self.forget()
        return list(entries)

    def link_up(self, device: str) -> bool:
        return self._inner.link_up(device)

    def add(self, device: str, address: str, prefix_length: int,
            lifetime: int | None = None) -> None:
        self.forget()
        self._inner.add(device, address, prefix_length, lifetime)

    def delete(self, device: str, address: str, prefix_length: int) -> None:
        self.forget()
        self._inner.delete(device, address, prefix_length)

    def route_device(self, address: str) -> str | None:
        result: str | None = self.read(
            ("route", address), lambda: self._inner.route_device(address)
        )
        return result


class _CachedSysctls(_ReadCache):
    def __init__(self, inner: Sysctls) -> None:
        super().__init__()
        self._inner = inner

    def get(self, key: str) -> str | None:
        result: str | None = self.read(("get", key), lambda: self._inner.get(key))
        return result

    def set(self, key: str, value: str) -> None:
        self.forget()
        self._inner.set(key, value)


class _CachedTunnels(_ReadCache):
    def __init__(self, inner: Tunnels) -> None:
        super().__init__()
        self._inner = inner

    def list_up(self) -> list[TunnelDevice]:
        return list(self.read(("list",), self._inner.list_up))

    def ensure(self, device: TunnelDevice) -> None:
        self.forget()
        self._inner.ensure(device)

    def release(self, device: TunnelDevice) -> None:
        self.forget()
        self._inner.release(device)


class CachingKernel:
    """Wraps a Kernel; `view` serves reads from memory until `refresh()`."""

    def __init__(self, real: Kernel) -> None:
        self._ipvs = _CachedIPVS(real.ipvs)
        self._others: list[_ReadCache] = [
            _CachedIPSets(real.ipsets),
            _CachedChains(real.chains),
            _CachedAddresses(real.addresses),
            _CachedSysctls(real.sysctls),
            _CachedTunnels(real.tunnels),
        ]
        ipsets, chains, addresses, sysctls, tunnels = self._others
        self.view = Kernel(self._ipvs, ipsets, chains, addresses, sysctls, tunnels,  # type: ignore[arg-type]
                           announcer=real.announcer, lease_lifetime=real.lease_lifetime)

    def refresh(self) -> None:
        """The next pass reads the kernel itself (the timer's drift repair)."""
        self._ipvs.refresh()
        for cache in self._others:
            cache.forget()
