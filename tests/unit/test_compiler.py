"""The compiler's LVS semantics, one behaviour per test."""

from __future__ import annotations

import pytest

from lvs_operator.api.objects import ObjectRef, parse_manifest
from lvs_operator.compiler.engine import Compiler, compile_cluster
from lvs_operator.compiler.fragment import Issue
from lvs_operator.compiler.plan import (
    Destination,
    IPVSService,
    LoopbackVIP,
    NodePlan,
    ServiceKey,
    Sysctl,
    TunnelDevice,
    plan_to_json,
)
from lvs_operator.compiler.render import ipvsadm_save

from .builders import DIRECTOR_LABELS, cluster, endpoint_slice, ep, node, objects, rs, service, vs

ALL_SCHEDULERS = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo",
                  "ovf"]


def director_services(*docs: dict, node_name: str = "dir-1") -> tuple[IPVSService, ...]:
    result = compile_cluster(cluster(*docs))
    return result.plans[node_name].director.services


def issues_of(result, kind: str, name: str, namespace: str = "default") -> list[Issue]:
    return list(result.issues.get(ObjectRef(kind, namespace, name), ()))


# --------------------------------------------------------------------------- forwarding


def test_nat_maps_ports_and_uses_masquerading():
    services = director_services(
        vs("web", ports=[{"port": 80, "targetPort": 8080}], forwarding={"method": "NAT"}),
        rs("a", "198.51.100.11", app="web", weight=3),
        rs("b", "198.51.100.12", app="web"),
    )
    assert services == (
        IPVSService(
            key=ServiceKey(4, "tcp", "192.0.2.10", 80, 0),
            scheduler="wlc",
            destinations=(
                Destination("198.51.100.11", 8080, "masq", 3, source="RealServer default/a"),
                Destination("198.51.100.12", 8080, "masq", 1, source="RealServer default/b"),
            ),
            owner="default/web",
        ),
    )


def test_nat_director_needs_ip_forward_and_holds_the_vip():
    result = compile_cluster(cluster(vs("web"), rs("a", "198.51.100.11", app="web")))
    director = result.plans["dir-1"].director
    assert Sysctl("net.ipv4.ip_forward", "1") in director.sysctls
    assert [v.address for v in director.vips] == ["192.0.2.10"]
    assert director.vips[0].prefix_length == 32


def test_real_server_port_is_used_when_no_target_port():
    services = director_services(vs("web"), rs("a", "198.51.100.11", app="web", port=8081))
    assert services[0].destinations[0].port == 8081


def test_dr_sets_up_real_servers_with_lo_vip_and_arp_sysctls():
    result = compile_cluster(cluster(
        vs("web", forwarding={"method": "DR"}),
        rs("a", "198.51.100.21", app="web", nodeName="node-1"),
        rs("b", "198.51.100.22", app="web"),  # no nodeName: configured by hand
    ))
    d = result.plans["dir-1"].director
    assert {x.forward for x in d.services[0].destinations} == {"route"}
    assert Sysctl("net.ipv4.ip_forward", "1") not in d.sysctls  # DR rewrites MACs only
    backend = result.plans["node-1"].backend
    assert backend.vips == (LoopbackVIP("192.0.2.10", 32, "lo", ("default/web",)),)
    assert set(backend.sysctls) == {
        Sysctl("net.ipv4.conf.all.arp_ignore", "1"),
        Sysctl("net.ipv4.conf.all.arp_announce", "2"),
        Sysctl("net.ipv4.conf.lo.arp_ignore", "1"),
        Sysctl("net.ipv4.conf.lo.arp_announce", "2"),
    }
    assert result.plans["node-2"].empty
    assert result.plans["node-1"].director.services == ()


def test_dr_ignores_a_real_server_port_and_says_so():
    result = compile_cluster(cluster(
        vs("web", forwarding={"method": "DR"}), rs("a", "198.51.100.21", app="web", port=8080)))
    assert result.plans["dir-1"].director.services[0].destinations[0].port == 80
    [warning] = issues_of(result, "RealServer", "a")
    assert warning.severity == "Warning" and warning.reason == "PortIgnoredForDR"
    assert warning.field == "spec.port"


@pytest.mark.parametrize(
    ("tunnel", "dest_fields", "device"),
    [
        ({"type": "ipip"}, ("ipip", 0, ""), TunnelDevice("tunl0", "ipip")),
        (None, ("ipip", 0, ""), TunnelDevice("tunl0", "ipip")),
        ({"type": "gue", "port": 6080}, ("gue", 6080, "none"), TunnelDevice("tunl0", "ipip", 6080)),
        ({"type": "gue", "port": 6080, "checksum": "remcsum"}, ("gue", 6080, "remcsum"),
         TunnelDevice("tunl0", "ipip", 6080)),
        ({"type": "gre", "checksum": "csum"}, ("gre", 0, "csum"), TunnelDevice("gre0", "gre")),
    ],
)
def test_tun_encapsulation_and_real_server_tunnel_device(tunnel, dest_fields, device):
    forwarding = {"method": "TUN"} | ({"tunnel": tunnel} if tunnel else {})
    result = compile_cluster(cluster(
        vs("web", forwarding=forwarding), rs("a", "203.0.113.31", app="web", nodeName="node-1")))
    dest = result.plans["dir-1"].director.services[0].destinations[0]
    assert dest.forward == "tunnel"
    assert (dest.tunnel_type, dest.tunnel_port, dest.tunnel_checksum) == dest_fields
    backend = result.plans["node-1"].backend
    assert backend.tunnels == (device,)
    assert Sysctl(f"net.ipv4.conf.{device.name}.rp_filter", "0") in backend.sysctls
    assert Sysctl("net.ipv4.conf.all.rp_filter", "0") in backend.sysctls
    assert backend.vips[0].address == "192.0.2.10"


def test_fullnat_is_masquerade_plus_snat_and_vs_conntrack():
    result = compile_cluster(cluster(
        vs("api", ports=[{"port": 443}], forwarding={"method": "FULLNAT",
                                                     "sourceNAT": {"address": "198.51.100.1"}}),
        rs("a", "198.51.100.41", app="api", port=8443),
    ))
    d = result.plans["dir-1"].director
    assert d.services[0].destinations[0].forward == "masq"
    assert d.services[0].destinations[0].port == 8443
    [snat] = d.snat_rules
    assert (snat.vip, snat.protocol, snat.port, snat.to_source) == (
        "192.0.2.10", "tcp", 443, "198.51.100.1")
    assert Sysctl("net.ipv4.vs.conntrack", "1") in d.sysctls
    assert result.plans["node-1"].empty  # real servers need nothing: they reply to the director


def test_fullnat_without_source_address_masquerades():
    result = compile_cluster(cluster(vs("api", forwarding={"method": "FULLNAT"}),
                                     rs("a", "198.51.100.41", app="api")))
    assert result.plans["dir-1"].director.snat_rules[0].to_source == ""


# --------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("name", ALL_SCHEDULERS)
def test_every_scheduler_reaches_the_plan(name):
    [svc] = director_services(vs("web", scheduler={"name": name}),
                              rs("a", "198.51.100.11", app="web"))
    assert svc.scheduler == name
    assert ipvsadm_save([svc])[0] == f"-A -t 192.0.2.10:80 -s {name}"


@pytest.mark.parametrize(
    ("scheduler", "flags", "expected"),
    [
        ("sh", ["sh-port"], ("sh-port",)),
        ("sh", ["sh-fallback"], ("sh-fallback",)),
        ("sh", ["sh-port", "sh-fallback"], ("sh-fallback", "sh-port")),  # kernel bit order
        ("mh", ["mh-port", "mh-fallback"], ("mh-fallback", "mh-port")),
        ("mh", ["mh-fallback"], ("mh-fallback",)),
    ],
)
def test_scheduler_flags_in_kernel_order(scheduler, flags, expected):
    [svc] = director_services(vs("web", scheduler={"name": scheduler, "flags": flags}),
                              rs("a", "198.51.100.11", app="web"))
    assert svc.flags == expected
    assert ipvsadm_save([svc])[0].endswith("-b " + ",".join(expected))


def test_default_scheduler_is_wlc_like_ipvsadm():
    [svc] = director_services(vs("web"), rs("a", "198.51.100.11", app="web"))
    assert svc.scheduler == "wlc"


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize(
    ("address", "persistence", "expected", "line"),
    [
        ("192.0.2.10", {"timeout": 20}, (20, 32, ""), "-A -t 192.0.2.10:80 -s wlc -p 20"),
        ("192.0.2.10", {}, (360, 32, ""), "-A -t 192.0.2.10:80 -s wlc -p 360"),
        ("192.0.2.10", {"timeout": 600, "prefixLength": 24}, (600, 24, ""),
         "-A -t 192.0.2.10:80 -s wlc -p 600 -M 255.255.255.0"),
        ("192.0.2.10", {"timeout": 60, "prefixLength": 0}, (60, 0, ""),
         "-A -t 192.0.2.10:80 -s wlc -p 60 -M 0.0.0.0"),
        ("2001:db8::10", {"timeout": 300, "prefixLength": 64}, (300, 64, ""),
         "-A -t [2001:db8::10]:80 -s wlc -p 300 -M 64"),
        ("2001:db8::10", {"timeout": 300}, (300, 128, ""), "-A -t [2001:db8::10]:80 -s wlc -p 300"),
    ],
)
def test_persistence_timeout_and_netmask(address, persistence, expected, line):
    rip = "2001:db8:1::11" if ":" in address else "198.51.100.11"
    [svc] = director_services(vs("web", address=address, persistence=persistence),
                              rs("a", rip, app="web"))
    assert (svc.persistence_timeout, svc.persistence_prefix, svc.persistence_engine) == expected
    assert ipvsadm_save([svc])[0] == line


def test_sip_persistence_engine_and_one_packet_scheduling_for_udp():
    [svc] = director_services(
        vs("sip", ports=[(5060, "UDP")], persistence={"timeout": 30, "engine": "sip"},
           onePacketScheduling=True),
        rs("a", "198.51.100.11", app="sip"),
    )
    assert svc.key.protocol == "udp" and svc.one_packet and svc.persistence_engine == "sip"
    assert ipvsadm_save([svc])[0] == "-A -u 192.0.2.10:5060 -s wlc -p 30 --pe sip -o"


# --------------------------------------------------------------------------- fwmark


def test_fwmark_service_groups_ports_through_an_ipset_and_a_mark_rule():
    result = compile_cluster(cluster(
        vs("shop", ports=None, firewallMark={
            "mark": 99, "ports": [{"port": 443}, {"port": 80}],
            "sourceRanges": ["198.51.100.0/24", "203.0.113.5/32"],
            "exceptRanges": ["198.51.100.7/32"]},
           persistence={"timeout": 600}, forwarding={"method": "DR"}),
        rs("a", "198.51.100.51", app="shop"),
    ))
    d = result.plans["dir-1"].director
    [svc] = d.services
    assert svc.key == ServiceKey(4, "", "", 0, 99)
    assert svc.destinations[0].port == 0  # fwmark destinations carry no port
    assert [(s.name, s.set_type, s.entries) for s in d.ipsets] == [
        ("lvs-fwm99-dst", "hash:ip,port", ("192.0.2.10,tcp:80", "192.0.2.10,tcp:443")),
        ("lvs-fwm99-exc", "hash:net", ("198.51.100.7",)),
        ("lvs-fwm99-src", "hash:net", ("198.51.100.0/24", "203.0.113.5")),
    ]
    [rule] = d.mark_rules
    assert (rule.mark, rule.dst_set, rule.src_set, rule.except_set) == (
        99, "lvs-fwm99-dst", "lvs-fwm99-src", "lvs-fwm99-exc")
    assert ipvsadm_save(d.services) == [
        "-A -f 99 -s wlc -p 600", "-a -f 99 -r 198.51.100.51:0 -g -w 1"]


def test_ipv6_fwmark_service():
    result = compile_cluster(cluster(
        vs("v6", address="2001:db8::50", ports=None,
           firewallMark={"mark": 7, "ports": [{"port": 80}]}),
        rs("a", "2001:db8:1::51", app="v6"),
    ))
    d = result.plans["dir-1"].director
    assert ipvsadm_save(d.services)[0] == "-A -f 7 -6 -s wlc"
    assert d.ipsets[0].name == "lvs-fwm7-6-dst" and d.ipsets[0].family == "inet6"
    assert d.ipsets[0].entries == ("2001:db8::50,tcp:80",)


def test_fwmark_with_kube_proxy_bits_warns():
    result = compile_cluster(cluster(
        vs("x", ports=None, firewallMark={"mark": 0x4001, "ports": [{"port": 80}]}),
        rs("a", "198.51.100.1", app="x")))
    assert [i.reason for i in issues_of(result, "VirtualService", "x")] == ["MarkOverlapsKubeProxy"]
    assert result.plans["dir-1"].director.services  # still programmed


# --------------------------------------------------------------------------- IPv6


def test_ipv6_service_canonicalises_addresses():
    result = compile_cluster(cluster(
        vs("v6", address="2001:DB8:0::10", forwarding={"method": "DR"}),
        rs("a", "2001:db8:1:0::11", app="v6", nodeName="node-1"),
    ))
    d = result.plans["dir-1"].director
    assert d.services[0].key.address == "2001:db8::10"
    assert d.services[0].destinations[0].address == "2001:db8:1::11"
    assert d.vips[0].prefix_length == 128
    backend = result.plans["node-1"].backend
    assert backend.vips == (LoopbackVIP("2001:db8::10", 128, "lo", ("default/v6",)),)
    assert backend.sysctls == ()  # ARP sysctls are IPv4 only


def test_mixed_families_are_refused_except_for_tun():
    result = compile_cluster(cluster(vs("web"), rs("a", "2001:db8::11", app="web"),
                                     rs("b", "198.51.100.12", app="web")))
    assert [d.address for d in result.plans["dir-1"].director.services[0].destinations] == [
        "198.51.100.12"]
    assert issues_of(result, "RealServer", "a")[0].reason == "AddressFamilyMismatch"


# --------------------------------------------------------------------------- weights, states


def test_thresholds_and_weights_reach_destinations():
    [svc] = director_services(
        vs("web"),
        rs("a", "198.51.100.11", app="web", weight=65535, upperThreshold=200, lowerThreshold=150),
        rs("b", "198.51.100.12", app="web", weight=0),
    )
    a, b = svc.destinations
    assert (a.weight, a.upper_threshold, a.lower_threshold) == (65535, 200, 150)
    assert b.weight == 0 and not b.draining
    assert ipvsadm_save([svc])[1] == "-a -t 192.0.2.10:80 -r 198.51.100.11:80 -m -w 65535 -x 200 -y 150"


def test_real_server_states():
    [svc] = director_services(
        vs("web"),
        rs("on", "198.51.100.11", app="web", weight=5),
        rs("drain", "198.51.100.12", app="web", weight=5, state="Draining"),
        rs("off", "198.51.100.13", app="web", state="Disabled"),
    )
    assert [(d.address, d.weight, d.draining) for d in svc.destinations] == [
        ("198.51.100.11", 5, False), ("198.51.100.12", 0, True)]


def test_selector_is_namespaced():
    [svc] = director_services(
        vs("web"),
        rs("a", "198.51.100.11", app="web"),
        rs("b", "198.51.100.12", app="web", namespace="other"),
    )
    assert [d.address for d in svc.destinations] == ["198.51.100.11"]


def test_destinations_sort_like_ipvsadm():
    [svc] = director_services(vs("web"), rs("a", "198.51.100.100", app="web"),
                              rs("b", "198.51.100.9", app="web"), rs("c", "198.18.0.1", app="web"))
    assert [d.address for d in svc.destinations] == ["198.18.0.1", "198.51.100.9", "198.51.100.100"]


# --------------------------------------------------------------------------- Service-backed


def _svc_backed(**extra):
    return vs("front", ports=[{"port": 80, "name": "http", **extra}],
              backends={"service": {"name": "front"}, "weight": 2})


def test_endpointslice_ready_drains_and_skips():
    result = compile_cluster(cluster(
        _svc_backed(),
        endpoint_slice("front-1", "front", [
            ep("198.18.0.11", node_name="node-1"),
            ep("198.18.0.12", ready=False, serving=True, terminating=True),
            ep("198.18.0.13", ready=False, serving=False),
        ], ports=[{"name": "http", "port": 8080, "protocol": "TCP"}]),
    ))
    dests = result.plans["dir-1"].director.services[0].destinations
    assert [(d.address, d.port, d.weight, d.draining) for d in dests] == [
        ("198.18.0.11", 8080, 2, False), ("198.18.0.12", 8080, 0, True)]
    assert dests[0].source == "EndpointSlice default/front-1"


def test_endpoint_duplicated_across_slices_prefers_ready():
    result = compile_cluster(cluster(
        _svc_backed(),
        endpoint_slice("a", "front", [ep("198.18.0.11", ready=False, serving=True,
                                         terminating=True)], ports=[{"name": "http", "port": 80}]),
        endpoint_slice("b", "front", [ep("198.18.0.11")], ports=[{"name": "http", "port": 80}]),
    ))
    [d] = result.plans["dir-1"].director.services[0].destinations
    assert (d.weight, d.draining) == (2, False)


def test_named_target_port_resolves_per_slice():
    result = compile_cluster(cluster(
        _svc_backed(targetPort="web"),
        endpoint_slice("a", "front", [ep("198.18.0.11")],
                       ports=[{"name": "web", "port": 9000}, {"name": "admin", "port": 9001}]),
    ))
    assert result.plans["dir-1"].director.services[0].destinations[0].port == 9000


def test_ambiguous_endpoint_ports_are_an_error_naming_the_field():
    result = compile_cluster(cluster(
        vs("front", ports=[{"port": 80}], backends={"service": {"name": "front"}}),
        endpoint_slice("a", "front", [ep("198.18.0.11")],
                       ports=[{"name": "web", "port": 9000}, {"name": "admin", "port": 9001}]),
    ))
    [issue] = issues_of(result, "VirtualService", "front")
    assert issue.reason == "TargetPortNotFound" and issue.field == "spec.ports[0].targetPort"
    assert "admin, web" in issue.message
    assert result.plans["dir-1"].director.services == ()  # an Error: not programmed


def test_missing_service_is_transient_not_fatal():
    result = compile_cluster(cluster(
        vs("front", backends={"service": {"name": "nope"}})))
    [issue] = issues_of(result, "VirtualService", "front")
    assert issue.reason == "ServiceNotFound" and issue.transient
    # programmed with no destinations, ready for endpoints to appear
    assert result.plans["dir-1"].director.services[0].destinations == ()


def test_legacy_endpoints_only_when_no_slices():
    legacy = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "front"},
              "subsets": [{"addresses": [{"ip": "198.18.0.21"}],
                           "notReadyAddresses": [{"ip": "198.18.0.22"}],
                           "ports": [{"name": "http", "port": 8080}]}]}
    only_legacy = compile_cluster(cluster(_svc_backed(), legacy, service("front", [
        {"name": "http", "port": 80}])))
    assert [d.address for d in only_legacy.plans["dir-1"].director.services[0].destinations] == [
        "198.18.0.21"]
    both = compile_cluster(cluster(_svc_backed(), legacy, endpoint_slice(
        "front-x", "front", [ep("198.18.0.31")], ports=[{"name": "http", "port": 8080}])))
    assert [d.address for d in both.plans["dir-1"].director.services[0].destinations] == [
        "198.18.0.31"]


def test_realservers_and_service_together():
    result = compile_cluster(cluster(
        vs("mix", ports=[{"port": 80, "name": "http"}],
           backends={"service": {"name": "front"}, "realServerSelector": {
               "matchLabels": {"app": "mix"}}}),
        rs("a", "198.51.100.11", app="mix"),
        endpoint_slice("a", "front", [ep("198.18.0.11")], ports=[{"name": "http", "port": 80}]),
    ))
    assert [d.address for d in result.plans["dir-1"].director.services[0].destinations] == [
        "198.18.0.11", "198.51.100.11"]


# --------------------------------------------------------------------------- nodes


def test_no_matching_director_is_reported():
    result = compile_cluster(objects(node("plain"), vs("web"), rs("a", "198.51.100.1", app="web")))
    [issue] = issues_of(result, "VirtualService", "web")
    assert issue.reason == "NoDirectors" and issue.field == "spec.directors.nodeSelector"
    assert result.plans["plain"].empty


def test_director_selection_by_expression():
    result = compile_cluster(objects(
        node("a", zone="x"), node("b", zone="y"), node("c"),
        vs("web", directors={"nodeSelector": {"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["x", "y"]}]}}),
        rs("r", "198.51.100.1", app="web"),
    ))
    assert [n for n, p in sorted(result.plans.items()) if p.director.services] == ["a", "b"]


def test_dr_backend_on_a_node_without_agent_warns_and_still_programs():
    docs = cluster(vs("web", forwarding={"method": "DR"}),
                   rs("a", "198.51.100.21", app="web", nodeName="ghost"))
    result = compile_cluster(docs)
    [issue] = issues_of(result, "RealServer", "a")
    assert issue.reason == "NodeWithoutAgent" and issue.field == "spec.nodeName"
    assert len(result.plans["dir-1"].director.services[0].destinations) == 1
    # A node that exists but runs no agent counts the same.
    limited = compile_cluster(cluster(vs("web", forwarding={"method": "DR"}),
                                      rs("a", "198.51.100.21", app="web", nodeName="node-1")),
                              agent_nodes=["dir-1"])
    assert issues_of(limited, "RealServer", "a")[0].reason == "NodeWithoutAgent"
    assert "node-1" not in limited.plans


def test_vip_shared_by_two_services_is_one_address():
    result = compile_cluster(cluster(
        vs("http", ports=[(80, "TCP")]), vs("dns", ports=[(53, "UDP")], selector={"app": "http"}),
        rs("a", "198.51.100.1", app="http")))
    [vip] = result.plans["dir-1"].director.vips
    assert vip.owners == ("default/dns", "default/http")


def _sharing_vip(http_ha: dict | None, dns_ha: dict | None, **dns_extra):
    """An older `http` (port 80) and a younger `dns` (port 53) on one VIP."""
    http_spec = {"ha": http_ha} if http_ha else {}
    dns_spec = {"ha": dns_ha} if dns_ha else {}
    return cluster(
        vs("http", created="2026-01-01T00:00:00Z", **http_spec),
        vs("dns", ports=[(53, "UDP")], selector={"app": "http"},
           created="2026-02-01T00:00:00Z", **dns_spec, **dns_extra),
        rs("a", "198.51.100.1", app="http"))


@pytest.mark.parametrize("desc, http_ha, dns_ha, said", [
    ("one has no ha", {"mode": "Lease"}, None, "asks for {mode: None}"),
    ("other timings", {"mode": "Lease"}, {"mode": "Lease", "lease": {"durationSeconds": 5}},
     "lease: 5 s / 1500 ms / 500 ms"),
    ("other mode", {"mode": "Lease"}, {"mode": "VRRP", "vrrp": {"virtualRouterID": 51}},
     "{mode: VRRP, vrrp: {virtualRouterID: 51"),
    ("sync on one only", {"mode": "Lease", "connectionSync": {"enabled": True}},
     {"mode": "Lease"}, "connectionSync: off"),
])
def test_vip_owners_disagreeing_on_ha_warn_the_younger_and_use_the_older(
        desc, http_ha, dns_ha, said):
    """The younger owner is young by creationTimestamp, not by name (dns < http)."""
    result = compile_cluster(_sharing_vip(http_ha, dns_ha))
    [warning] = issues_of(result, "VirtualService", "dns")
    assert (warning.reason, warning.severity, warning.field) == ("HAMismatch", "Warning",
                                                                   "spec.ha"), desc
    assert "VirtualService default/http (older)" in warning.message and said in warning.message
    assert not issues_of(result, "VirtualService", "http")
    [vip] = result.plans["dir-1"].director.vips
    assert vip.owners == ("default/dns", "default/http") and vip.ha is not None
    assert vip.ha.mode == "Lease" and vip.ha.sync == bool(http_ha.get("connectionSync"))
    # Both still programmed: a warning, not a refusal.
    assert {s.owner for s in result.plans["dir-1"].director.services} == {"default/http",
                                                                          "default/dns"}


def test_vip_owners_agreeing_on_ha_say_nothing():
    ha = {"mode": "Lease", "connectionSync": {"enabled": True, "syncID": 3}}
    assert not compile_cluster(_sharing_vip(ha, ha)).issues


def test_vip_owners_disagreeing_on_the_device_warn():
    result = compile_cluster(_sharing_vip(
        None, None, directors={"nodeSelector": {"matchLabels": {"lvs.dev/director": "true"}},
                               "interface": "eth1"}))
    [warning] = issues_of(result, "VirtualService", "dns")
    assert warning.reason == "InterfaceMismatch" and warning.field == "spec.directors.interface"
    assert "eth1" in warning.message and "the route device" in warning.message
    assert result.plans["dir-1"].director.vips[0].interface == ""


def test_mending_the_older_owner_clears_the_younger_ones_warning_incrementally():
    c = Compiler()
    objs = _sharing_vip({"mode": "Lease"}, None)
    for o in objs:
        c.upsert(o)
    dns = ObjectRef("VirtualService", "default", "dns")
    assert [i.reason for i in c.issues()[dns]] == ["HAMismatch"]
    c.take_changed_refs()
    [http] = [o for o in objs if o.ref.name == "http"]
    c.upsert(parse_manifest(vs("http", created="2026-01-01T00:00:00Z")))
    # dns did not change, but its status must be looked at again.
    assert dns in c.take_changed_refs()
    assert dns not in c.issues() and http.ref not in c.issues()
    c.upsert(parse_manifest(vs("http", created="2026-01-01T00:00:00Z", ha={"mode": "Lease"})))
    c.take_changed_refs()
    assert [i.reason for i in c.issues()[dns]] == ["HAMismatch"]
    c.delete(http.ref)  # the older owner gone: dns's settings are the VIP's, nothing to say
    assert dns in c.take_changed_refs()
    assert not c.issues() and c.plan("dir-1").director.vips[0].owners == ("default/dns",)


def test_a_named_ha_group_spans_vips_and_namespaces():
    ha = {"mode": "Lease", "group": "edge"}
    result = compile_cluster(cluster(
        vs("a", "192.0.2.1", ha=ha), vs("b", "192.0.2.2", ha=ha, namespace="shop",
                                         selector={"app": "a"}),
        vs("c", "192.0.2.3", ha={"mode": "Lease"}, selector={"app": "a"}),
        rs("r", "198.51.100.1", app="a")))
    assert not result.issues
    groups = {v.address: v.ha.group for v in result.plans["dir-1"].director.vips}
    assert groups == {"192.0.2.1": "lvs-ha-g-edge", "192.0.2.2": "lvs-ha-g-edge",
                      "192.0.2.3": "lvs-ha-192.0.2.3"}


def test_group_members_disagreeing_on_settings_or_directors_are_told():
    older = vs("a", "192.0.2.1", created="2026-01-01T00:00:00Z",
               ha={"mode": "Lease", "group": "edge"})
    timings = vs("b", "192.0.2.2", created="2026-02-01T00:00:00Z", selector={"app": "a"},
                 ha={"mode": "Lease", "group": "edge", "lease": {"durationSeconds": 5}})
    elsewhere = vs("c", "192.0.2.3", created="2026-03-01T00:00:00Z", selector={"app": "a"},
                   ha={"mode": "Lease", "group": "edge"},
                   directors={"nodeSelector": {"matchLabels": {"zone": "b"}}})
    docs = cluster(older, timings, elsewhere, node("dir-2", zone="b", **DIRECTOR_LABELS),
                   rs("r", "198.51.100.1", app="a"))
    result = compile_cluster(docs)
    [mismatch] = issues_of(result, "VirtualService", "b")
    assert (mismatch.reason, mismatch.field, mismatch.severity) == ("HAMismatch", "spec.ha",
                                                                    "Warning")
    assert "HA group edge is also VirtualService default/a (older, VIP 192.0.2.1)" in \
        mismatch.message and "lease: 5 s" in mismatch.message
    [apart] = issues_of(result, "VirtualService", "c")
    assert (apart.reason, apart.field) == ("HAGroupDirectorsMismatch", "spec.ha.group")
    assert "[dir-2]" in apart.message and "[dir-1, dir-2]" in apart.message
    assert not issues_of(result, "VirtualService", "a")


# --------------------------------------------------------------------------- conflicts


def test_same_vip_port_in_two_objects_older_wins():
    result = compile_cluster(cluster(
        vs("young", created="2026-02-01T00:00:00Z"),
        vs("old", created="2026-01-01T00:00:00Z", selector={"app": "young"}),
        vs("unrelated", address="192.0.2.99", selector={"app": "young"}),
        rs("a", "198.51.100.1", app="young"),
    ))
    owners = [s.owner for s in result.plans["dir-1"].director.services]
    assert owners == ["default/old", "default/unrelated"]
    [loser] = issues_of(result, "VirtualService", "young")
    assert loser.reason == "PortConflict" and loser.severity == "Error"
    assert "VirtualService default/old" in loser.message and loser.field == "spec.ports[0]"
    [winner] = issues_of(result, "VirtualService", "old")
    assert winner.reason == "ConflictRejected" and winner.severity == "Warning"


def test_same_port_different_protocol_is_no_conflict():
    result = compile_cluster(cluster(vs("t", ports=[(53, "TCP")]),
                                     vs("u", ports=[(53, "UDP")], selector={"app": "t"}),
                                     rs("a", "198.51.100.1", app="t")))
    assert len(result.plans["dir-1"].director.services) == 2
    assert not result.issues


def test_colliding_marks():
    fm = {"mark": 5, "ports": [{"port": 80}]}
    result = compile_cluster(cluster(
        vs("a", ports=None, firewallMark=fm, created="2026-01-01T00:00:00Z"),
        vs("b", address="192.0.2.11", ports=None, firewallMark=fm, created="2026-01-02T00:00:00Z"),
        rs("r", "198.51.100.1", app="a")))
    assert issues_of(result, "VirtualService", "b")[0].reason == "MarkConflict"
    assert [s.owner for s in result.plans["dir-1"].director.services] == ["default/a"]


def test_fwmark_port_collides_with_plain_port_service():
    result = compile_cluster(cluster(
        vs("plain", created="2026-01-01T00:00:00Z"),
        vs("marked", ports=None, firewallMark={"mark": 9, "ports": [{"port": 80}]},
           created="2026-01-02T00:00:00Z"),
    ))
    assert issues_of(result, "VirtualService", "marked")[0].reason == "PortConflict"


def test_conflict_loser_takes_over_when_winner_is_deleted():
    from lvs_operator.compiler.engine import Compiler

    c = Compiler()
    for o in cluster(vs("old", created="2026-01-01T00:00:00Z"),
                     vs("young", created="2026-02-01T00:00:00Z")):
        c.upsert(o)
    assert c.is_active(ObjectRef("VirtualService", "default", "old"))
    assert not c.is_active(ObjectRef("VirtualService", "default", "young"))
    c.delete(ObjectRef("VirtualService", "default", "old"))
    assert c.is_active(ObjectRef("VirtualService", "default", "young"))
    assert [s.owner for s in c.plan("dir-1").director.services] == ["default/young"]
    assert not c.issues()


def test_plans_exist_for_every_agent_node_even_empty():
    result = compile_cluster(cluster())
    assert sorted(result.plans) == ["dir-1", "node-1", "node-2"]
    assert all(p == NodePlan(p.node) for p in result.plans.values())


def test_winner_regaining_a_shared_mark_keeps_its_records():
    """Regression (found by hypothesis): the older of three objects sharing firewall mark 1
    is deleted and re-created; the loser it displaces again shares its service and mark-rule
    keys, and detaching the loser after attaching the winner used to drop the winner's."""
    fw = {"firewallMark": {"mark": 1, "ports": [{"port": 80}]}}
    docs = [vs(f"vs-{i}", "192.0.2.10", ports=(), selector={"app": "a"}, **fw) for i in range(3)]
    objs = cluster(*docs)
    compiler = Compiler()
    for obj in objs:
        compiler.upsert(obj)
    compiler.plans()
    first = next(o for o in objs if getattr(o, "ref", None) and o.ref.name == "vs-0")
    compiler.delete(first.ref)
    compiler.plans()
    compiler.upsert(first)
    plan = compiler.plan("dir-1")
    assert [s.key.fwmark for s in plan.director.services] == [1]
    assert [m.mark for m in plan.director.mark_rules] == [1]
    assert plan_to_json(plan) == plan_to_json(compile_cluster(objs).plans["dir-1"])
