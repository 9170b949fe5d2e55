"""Invalid manifests, each with the field its rejection must name.

One table, three judges: the Python model (unit tier), the CRDs' CEL rules evaluated by a
CEL interpreter (unit tier), and the real kube-apiserver (cluster tier).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

__all__ = ["INVALID_CASES", "InvalidCase", "valid_real_server", "valid_virtual_service"]


def valid_virtual_service() -> dict[str, Any]:
    return {
        "apiVersion": "lvs.dev/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": "case", "namespace": "default"},
        "spec": {
            "address": "192.0.2.10",
            "ports": [{"port": 80, "protocol": "TCP"}],
            "forwarding": {"method": "NAT"},
            "scheduler": {"name": "rr"},
            "directors": {"nodeSelector": {"matchLabels": {"lvs.dev/director": "true"}}},
            "backends": {"realServerSelector": {"matchLabels": {"app": "web"}}},
        },
    }


def valid_real_server() -> dict[str, Any]:
    return {
        "apiVersion": "lvs.dev/v1alpha1",
        "kind": "RealServer",
        "metadata": {"name": "case", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"address": "198.51.100.11", "port": 8080, "weight": 1},
    }


@dataclass(frozen=True)
class InvalidCase:
    desc: str
    field: str  # the JSON path the rejection must name
    kind: str = "VirtualService"
    set: dict[str, Any] = field(default_factory=dict)  # dotted spec path -> value
    unset: tuple[str, ...] = ()

    def manifest(self) -> dict[str, Any]:
        doc = valid_virtual_service() if self.kind == "VirtualService" else valid_real_server()
        spec = doc["spec"]
        for path in self.unset:
            *parents, leaf = path.split(".")
            node = spec
            for p in parents:
                node = node[p]
            node.pop(leaf, None)
        for path, value in self.set.items():
            *parents, leaf = path.split(".")
            node = spec
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = copy.deepcopy(value)
        doc["metadata"]["name"] = "case-" + "".join(
            c if c.isalnum() else "-" for c in self.desc.lower()
        ).strip("-")[:50].strip("-")
        return doc


VS = "VirtualService"
RS = "RealServer"

INVALID_CASES: list[InvalidCase] = [
    InvalidCase("bad IP", "spec.address", set={"address": "192.0.2.300"}),
    InvalidCase("loopback VIP", "spec.address", set={"address": "127.0.0.1"}),
    InvalidCase("IPv4-mapped IPv6 VIP", "spec.address", set={"address": "::ffff:192.0.2.1"}),
    InvalidCase("port 0", "spec.ports[0].port", set={"ports": [{"port": 0}]}),
    InvalidCase("port 65536", "spec.ports[0].port", set={"ports": [{"port": 65536}]}),
    InvalidCase("unknown protocol", "spec.ports[0].protocol",
                set={"ports": [{"port": 80, "protocol": "ICMP"}]}),
    InvalidCase("DR with port remap", "spec.ports",
                set={"forwarding": {"method": "DR"}, "ports": [{"port": 80, "targetPort": 8080}]}),
    InvalidCase("TUN with port remap", "spec.ports",
                set={"forwarding": {"method": "TUN"}, "ports": [{"port": 80, "targetPort": 81}]}),
    InvalidCase("targetPort not a port name", "spec.ports[0].targetPort",
                set={"ports": [{"port": 80, "targetPort": "HTTP_PORT"}]}),
    InvalidCase("targetPort 70000", "spec.ports[0].targetPort",
                set={"ports": [{"port": 80, "targetPort": 70000}]}),
    InvalidCase("duplicate port and protocol", "spec.ports[1]",
                set={"ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]}),
    InvalidCase("unknown scheduler", "spec.scheduler.name", set={"scheduler": {"name": "roundrobin"}}),
    InvalidCase("sh-port flag on rr", "spec.scheduler.flags",
                set={"scheduler": {"name": "rr", "flags": ["sh-port"]}}),
    InvalidCase("mh-port flag on sh", "spec.scheduler.flags",
                set={"scheduler": {"name": "sh", "flags": ["mh-port"]}}),
    InvalidCase("unknown scheduler flag", "spec.scheduler.flags[0]",
                set={"scheduler": {"name": "sh", "flags": ["sh-magic"]}}),
    InvalidCase("fwmark and ports together", "spec",
                set={"firewallMark": {"mark": 99, "ports": [{"port": 443}]}}),
    InvalidCase("neither ports nor fwmark", "spec", unset=("ports",)),
    InvalidCase("unknown forwarding method", "spec.forwarding.method",
                set={"forwarding": {"method": "LOCAL"}}),
    InvalidCase("gue without port", "spec.forwarding.tunnel.port",
                set={"forwarding": {"method": "TUN", "tunnel": {"type": "gue"}}}),
    InvalidCase("port on ipip tunnel", "spec.forwarding.tunnel.port",
                set={"forwarding": {"method": "TUN", "tunnel": {"type": "ipip", "port": 6080}}}),
    InvalidCase("checksum on ipip tunnel", "spec.forwarding.tunnel.checksum",
                set={"forwarding": {"method": "TUN", "tunnel": {"type": "ipip", "checksum": "csum"}}}),
    InvalidCase("remcsum on gre tunnel", "spec.forwarding.tunnel.checksum",
                set={"forwarding": {"method": "TUN", "tunnel": {"type": "gre", "checksum": "remcsum"}}}),
    InvalidCase("tunnel settings with NAT", "spec.forwarding.tunnel",
                set={"forwarding": {"method": "NAT", "tunnel": {"type": "ipip"}}}),
    InvalidCase("sourceNAT with DR", "spec.forwarding.sourceNAT",
                set={"forwarding": {"method": "DR", "sourceNAT": {"address": "198.51.100.1"}}}),
    InvalidCase("sourceNAT address of the other family", "spec.forwarding.sourceNAT.address",
                set={"forwarding": {"method": "FULLNAT", "sourceNAT": {"address": "2001:db8::1"}}}),
    InvalidCase("persistence timeout 0", "spec.persistence.timeout",
                set={"persistence": {"timeout": 0}}),
    InvalidCase("persistence timeout over 31 days", "spec.persistence.timeout",
                set={"persistence": {"timeout": 2678401}}),
    InvalidCase("persistence prefix 33 on IPv4", "spec.persistence.prefixLength",
                set={"persistence": {"timeout": 60, "prefixLength": 33}}),
    InvalidCase("persistence engine sip on TCP", "spec.persistence.engine",
                set={"persistence": {"timeout": 60, "engine": "sip"}}),
    InvalidCase("one-packet scheduling on TCP", "spec.onePacketScheduling",
                set={"onePacketScheduling": True}),
    InvalidCase("fwmark mark 0", "spec.firewallMark.mark",
                set={"firewallMark": {"mark": 0, "ports": [{"port": 80}]}}, unset=("ports",)),
    InvalidCase("fwmark mark 2^32", "spec.firewallMark.mark",
                set={"firewallMark": {"mark": 4294967296, "ports": [{"port": 80}]}},
                unset=("ports",)),
    InvalidCase("fwmark without ports", "spec.firewallMark.ports",
                set={"firewallMark": {"mark": 99, "ports": []}}, unset=("ports",)),
    InvalidCase("fwmark source range not a CIDR", "spec.firewallMark.sourceRanges",
                set={"firewallMark": {"mark": 99, "ports": [{"port": 80}],
                                      "sourceRanges": ["198.51.100.0"]}}, unset=("ports",)),
    InvalidCase("fwmark source range of the other family", "spec.firewallMark",
                set={"firewallMark": {"mark": 99, "ports": [{"port": 80}],
                                      "sourceRanges": ["2001:db8::/32"]}}, unset=("ports",)),
    InvalidCase("no backend source", "spec.backends", set={"backends": {"weight": 1}}),
    InvalidCase("Service endpoint weight 70000", "spec.backends.weight",
                set={"backends": {"service": {"name": "web"}, "weight": 70000}}),
    InvalidCase("backends lower threshold above upper", "spec.backends.lowerThreshold",
                set={"backends": {"service": {"name": "web"}, "upperThreshold": 10,
                                  "lowerThreshold": 20}}),
    InvalidCase("missing directors", "spec.directors", unset=("directors",)),
    InvalidCase("director interface with a space", "spec.directors.interface",
                set={"directors": {"nodeSelector": {}, "interface": "eth 0"}}),
    InvalidCase("selector In without values", "spec.directors.nodeSelector.matchExpressions[0].values",
                set={"directors": {"nodeSelector": {"matchExpressions": [
                    {"key": "zone", "operator": "In"}]}}}),
    InvalidCase("http settings on a TCP check", "spec.healthCheck.http",
                set={"healthCheck": {"type": "TCP", "http": {"path": "/"}}}),
    InvalidCase("HTTP status code 700", "spec.healthCheck.http.expectedStatusCodes",
                set={"healthCheck": {"type": "HTTP", "http": {"expectedStatusCodes": [700]}}}),
    InvalidCase("VRRP mode without vrrp settings", "spec.ha.vrrp", set={"ha": {"mode": "VRRP"}}),
    InvalidCase("VRRP router id 256", "spec.ha.vrrp.virtualRouterID",
                set={"ha": {"mode": "VRRP", "vrrp": {"virtualRouterID": 256}}}),
    InvalidCase("lease renew deadline not below duration",
                "spec.ha.lease.renewDeadlineMilliseconds",
                set={"ha": {"mode": "Lease", "lease": {"durationSeconds": 2,
                                                       "renewDeadlineMilliseconds": 2000}}}),
    InvalidCase("lease retry period not below renew deadline",
                "spec.ha.lease.retryPeriodMilliseconds",
                set={"ha": {"mode": "Lease", "lease": {"renewDeadlineMilliseconds": 1000,
                                                       "retryPeriodMilliseconds": 1000}}}),
    InvalidCase("HA group with mode None", "spec.ha.group",
                set={"ha": {"mode": "None", "group": "edge"}}),
    InvalidCase("HA group not a DNS label", "spec.ha.group",
                set={"ha": {"mode": "Lease", "group": "Edge_1"}}),
    InvalidCase("RealServer weight 70000", "spec.weight", kind=RS, set={"weight": 70000}),
    InvalidCase("RealServer bad address", "spec.address", kind=RS, set={"address": "198.51.100"}),
    InvalidCase("RealServer multicast address", "spec.address", kind=RS,
                set={"address": "224.0.0.1"}),
    InvalidCase("RealServer port 0", "spec.port", kind=RS, set={"port": 0}),
    InvalidCase("RealServer lower threshold above upper", "spec.lowerThreshold", kind=RS,
                set={"upperThreshold": 5, "lowerThreshold": 6}),
    InvalidCase("RealServer unknown state", "spec.state", kind=RS, set={"state": "Off"}),
    InvalidCase("RealServer without address", "spec.address", kind=RS, unset=("address",)),
]
