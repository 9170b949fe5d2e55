"""The two-director Lease/VRRP site of the cluster tier's HA tests and of `make bench-ha`:
the guest side (tests.harness.guestlab ha_up) plus the API objects, the agents and the client
witnesses, driven from the host.

Site, LVS-DR on one Ethernet segment, 203.0.113.0/24:

    client .2 --+-- director ha-a .3 --+-- rs1 .11, rs2 .12 (VIP on lo)
                +-- director ha-b .4 --+

Witnesses on the client: `arpwatch` (a who-has every 0.2 s from a raw socket: who answers,
split brain counted), `hold` (one TCP connection, a line every 0.5 s) and `probe` (a new HTTP
connection every 0.2 s, one line echoed: the outages clients saw).
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

from lvs_operator.compiler.fragment import ha_group_name
from tests.harness.controlplane import LocalControlPlane
from tests.harness.lvs_install import SYSTEM_NS, agent_argv
from tests.harness.vm import GuestVM

__all__ = ["LAB", "LEASE", "NODES", "NS", "PREFIX", "VIP", "Site", "cluster_objects",
           "virtual_service"]

NS = "ha"
PREFIX = "ha"
NODES = {"ha-a": "ha-a", "ha-b": "ha-b"}  # node name -> its director's netns
VIP = "203.0.113.10"
LABEL = {"lvs.dev/ha-director": "true"}
PY = sys.executable
LAB = [PY, "-m", "tests.harness.guestlab"]
# Timings for an emulated guest: a Lease round trip from Python under TCG (TLS through the
# guestfwd relay) takes a second or more, and with `make test` running the vm tier beside
# the cluster tier (two TCG guests on two cores) renewals were seen to take over 4 s: the
# defaults (and 6 s / 4 s / 1 s) make the VIP flap there. bench/ha_lease_host.py measures
# the defaults at hardware speed.
GROUP = "ha-e2e"  # spec.ha.group of the tests' VirtualService: its Lease is lvs-ha-g-ha-e2e
LEASE = {"durationSeconds": 15, "renewDeadlineMilliseconds": 12000,
         "retryPeriodMilliseconds": 3000}


class Site:
    def __init__(self, cp: LocalControlPlane, guest: GuestVM,
                 kubeconfigs: dict[str, str]) -> None:
        self.cp, self.guest, self.kubeconfigs = cp, guest, kubeconfigs
        self.agents: dict[str, int] = {}
        self.logs: dict[str, str] = {}

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cp.kubectl(*args, input=input).stdout

    def start_agent(self, node: str) -> None:
        # full passes (drift repair) every 30 s: under TCG one costs 6-16 s of the guest's
        # single CPU, which would starve the Lease renewals of both agents
        argv = agent_argv(node, self.kubeconfigs[node], netns=NODES[node], interval=30,
                          state_dir=f"/var/lib/lvs-{node}")
        self.agents[node] = self.guest.spawn([*argv, "--ha-namespace", SYSTEM_NS], name=node)

    def kill_agent(self, node: str, sig: int = signal.SIGTERM) -> None:
        handle = self.agents.pop(node)
        self.guest.kill(handle, sig)
        self.logs[node] = self.logs.get(node, "") + self.guest.logs(handle)

    def holders(self) -> set[str]:
        """The directors whose kernel has the VIP right now (one `ip` each, no Python)."""
        script = "; ".join(f"echo {node}; ip -n {netns} -o addr show dev eth0"
                           for node, netns in NODES.items())
        out, node = set(), ""
        for line in self.guest.run(["sh", "-c", script], timeout=60).stdout.splitlines():
            if line in NODES:
                node = line
            elif f" {VIP}/32 " in line:
                out.add(node)
        return out

    def programmed(self, node: str) -> bool:
        """The director's IPVS has the service (one `ipvsadm`, no Python: a poll must not
        cost the agents it waits for seconds of the guest's CPU)."""
        out = self.guest.run(["ip", "netns", "exec", NODES[node], "ipvsadm", "-Sn"],
                             timeout=60).stdout
        return f"-A -t {VIP}:7000 -s rr" in out.splitlines()

    def lease_holder(self) -> str:
        lease = json.loads(self.kubectl("get", "lease", ha_group_name(VIP, GROUP), "-n",
                                        SYSTEM_NS, "-o", "json"))
        return str(lease["spec"].get("holderIdentity") or "")

    def witnesses(self) -> dict[str, int]:
        """hold, arpwatch and probe, started in that order (each bounded to 10 minutes)."""
        hold = self.guest.spawn([*LAB, "hold", "--prefix", PREFIX, "--timeout", "90", VIP,
                                 "7000", "600"], name="hold")
        self.guest.wait_for_log(hold, "CONNECTED", timeout=180)  # Python start under TCG
        arp = self.guest.spawn([*LAB, "arpwatch", "--prefix", PREFIX, VIP, "600"], name="arp")
        self.guest.wait_for_log(arp, "WATCHING", timeout=180)
        probe = self.guest.spawn([*LAB, "probe", "--prefix", PREFIX, VIP, "7000", "600"],
                                 name="probe")
        self.guest.wait_for_log(probe, "PROBING", timeout=180)
        return {"hold": hold, "arp": arp, "probe": probe}

    def verdicts(self, witnesses: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("probe", "arp", "hold"):
            status = self.guest.kill(witnesses[name])
            text = self.guest.logs(witnesses[name])
            print(f"{name} (exit {status}): {text.strip().splitlines()[-1]}")
            out[name] = text
        out["probe"] = json.loads(out["probe"].strip().splitlines()[-1])
        out["arp"] = json.loads(out["arp"].strip().splitlines()[-1])
        return out


def virtual_service(ha: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "address": VIP,
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 7000, "protocol": "TCP"}],
            "scheduler": {"name": "rr"},
            "forwarding": {"method": "DR"},
            "directors": {"nodeSelector": {"matchLabels": LABEL}, "interface": "eth0"},
            "backends": {"service": {"name": "web"}},
            "ha": ha or {"mode": "Lease", "group": GROUP, "lease": LEASE,
                         "connectionSync": {"enabled": True, "syncID": 9}},
        },
    }


def cluster_objects() -> list[dict[str, Any]]:
    nodes = [{"apiVersion": "v1", "kind": "Node",
              "metadata": {"name": n, "labels": {**LABEL, "lvs.dev/ha-agent": "true"}}}
             for n in NODES]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        *nodes,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 80},
                            {"name": "echo", "port": 7000, "targetPort": 7000}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-ha", "namespace": NS,
                      "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4",
         "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                   {"name": "echo", "port": 7000, "protocol": "TCP"}],
         "endpoints": [{"addresses": [f"203.0.113.{i}"], "conditions": {"ready": True}}
                       for i in (11, 12)]},
        virtual_service(),
    ]
