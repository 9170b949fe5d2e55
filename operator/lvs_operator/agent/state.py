"""What the agent must remember across restarts: which IPVS services it created, which
destinations are draining since when, the sysctl values it changed (to restore them), and
the tunnel devices it brought up. The kernel cannot say any of this, and guessing it from
"everything on the box" is how kube-proxy once deleted other people's services.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler.plan import ServiceKey

__all__ = ["AgentState", "DrainKey", "load_state", "save_state"]

STATE_VERSION = 1
DrainKey = tuple[ServiceKey, str, int]  # service, destination address, destination port


@dataclass
class AgentState:
    owned_services: set[ServiceKey] = field(default_factory=set)
    drains: dict[DrainKey, float] = field(default_factory=dict)  # -> when draining started
    sysctl_originals: dict[str, str] = field(default_factory=dict)
    tunnels: set[str] = field(default_factory=set)
    sync_daemons: set[str] = field(default_factory=set)  # IPVS sync daemon states we started

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "ownedServices": sorted(list(k) for k in self.owned_services),
            "drains": sorted([list(k[0]), k[1], k[2], t] for k, t in self.drains.items()),
            "sysctlOriginals": dict(sorted(self.sysctl_originals.items())),
            "tunnels": sorted(self.tunnels),
            "syncDaemons": sorted(self.sync_daemons),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"agent state version {data.get('version')!r} is not supported")
        return cls(
            owned_services={ServiceKey(*k) for k in data.get("ownedServices", [])},
            drains={
                (ServiceKey(*svc), addr, int(port)): float(t)
                for svc, addr, port, t in data.get("drains", [])
            },
            sysctl_originals=dict(data.get("sysctlOriginals", {})),
            tunnels=set(data.get("tunnels", [])),
            sync_daemons=set(data.get("syncDaemons", [])),
        )


def load_state(path: Path) -> AgentState:
    """The saved state, or a fresh one when there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AgentState()
    return AgentState.from_json(json.loads(text))


def save_state(path: Path, state: AgentState) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(state.to_json(), handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
