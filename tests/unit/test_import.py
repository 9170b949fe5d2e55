"""Importing ipvsadm and keepalived configurations as VirtualServices and RealServers: the
round trip through the compiler is exact where the model can hold the input, and every
line it cannot hold is reported with its number."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from lvs_operator.api.objects import parse_manifest, parse_manifests
from lvs_operator.cli.importers import (
    POOL_LABEL,
    FwmarkTarget,
    import_ipvsadm,
    import_keepalived,
    parse_fwmark_target,
)
from lvs_operator.cli.lvsctl import main as lvsctl
from lvs_operator.cli.manifests import load_documents
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.plan import is_health_path
from lvs_operator.compiler.render import ipvsadm_save

from .test_ipvsadm_parse import services

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DIRECTOR = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "imported-director", "labels": {"lvs.dev/director": "true"}}}
# What firewall mark 99 of examples/fwmark-80-443 stands for. ipvsadm's lines do not say it
# (the mark is set by the mangle rules), so an import needs it from the user: --fwmark.
EXAMPLE_MARKS = {99: FwmarkTarget("192.0.2.50", (("tcp", 80), ("tcp", 443)))}


def director_lines(objects: list[dict[str, Any]], node: dict[str, Any] = DIRECTOR) -> list[str]:
    """Compile manifests with one director node; its IPVS table as ipvsadm-save prints it."""
    parsed, errors = parse_manifests([*objects, node])
    assert errors == []
    result = compile_cluster(parsed)
    assert [i for i in result.all_issues() if i.severity == "Error"] == []
    # keepalived's own table has no health-path services (its checks probe the RIP)
    return ipvsadm_save([s for s in result.plans[node["metadata"]["name"]].director.services
                         if not is_health_path(s.key)])


def example_tables() -> dict[str, list[str]]:
    objects, errors = parse_manifests(load_documents([str(EXAMPLES)]))
    assert errors == []
    plans = compile_cluster(objects).plans
    return {name: ipvsadm_save(p.director.services) for name, p in sorted(plans.items())
            if p.director.services}


EXAMPLE_TABLES = example_tables()


# =========================================================================== round trip A


@pytest.mark.parametrize("node", sorted(EXAMPLE_TABLES))
def test_round_trip_every_example_director(node):
    """X = the examples' IPVS table on a director; import X; compile; render == X. Nothing is
    normalised: render prints ipvsadm-save's order, and so does X."""
    table = EXAMPLE_TABLES[node]
    assert any(line.startswith("-A -f") for line in table)  # the fwmark example is in it
    result = import_ipvsadm("\n".join(table) + "\n", fwmarks=EXAMPLE_MARKS)
    assert result.problems == []
    assert director_lines(result.objects) == table


def test_round_trip_through_lvsctl(tmp_path, capsys):
    """The same round trip with the commands a person types: plan, import, plan."""
    assert lvsctl(["plan", "-f", str(EXAMPLES), "--node", "director-b", "--format", "ipvsadm"]) == 0
    out = capsys.readouterr().out
    section = out.split("# ipvsadm -S -n\n")[1].split("# the rest of this node's state")[0]
    saved = tmp_path / "director-b.ipvsadm"
    saved.write_text(section)
    assert lvsctl(["import", "ipvsadm", str(saved), "--fwmark", "99=192.0.2.50,tcp:80,tcp:443",
                   "--namespace", "lb", "--name-prefix", "old-"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    manifests = tmp_path / "imported.yaml"
    manifests.write_text(captured.out)
    assert all(d["metadata"]["namespace"] == "lb" and d["metadata"]["name"].startswith("old-")
               for d in yaml.safe_load_all(captured.out))
    assert lvsctl(["plan", "-f", str(manifests), "-f", str(EXAMPLES / "nodes.yaml"),
                   "--node", "director-a", "--format", "ipvsadm"]) == 0
    again = capsys.readouterr().out
    assert again.split("# ipvsadm -S -n\n")[1].split("# the rest of this node's state")[0] \
        == section


# =========================================================================== ipvsadm shape


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_services_sharing_vip_settings_and_servers_become_one_virtual_service():
    text = """
-A -t 192.0.2.10:80 -s wrr -p 600
-a -t 192.0.2.10:80 -r 198.51.100.1:80 -g -w 2
-a -t 192.0.2.10:80 -r 198.51.100.2:80 -g -w 1
-A -t 192.0.2.10:443 -s wrr -p 600
-a -t 192.0.2.10:443 -r 198.51.100.1:443 -g -w 2
-a -t 192.0.2.10:443 -r 198.51.100.2:443 -g -w 1
-A -u 192.0.2.10:53 -s rr
-a -u 192.0.2.10:53 -r 198.51.100.1:5353 -m -w 1
"""
    result = import_ipvsadm(text, director_selector="lb=yes")
    assert result.problems == []
    [web, dns] = kinds(result.objects, "VirtualService")
    assert web["metadata"]["name"] == "192-0-2-10-80-443"
    assert web["spec"] == {
        "address": "192.0.2.10",
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
        "forwarding": {"method": "DR"},
        "scheduler": {"name": "wrr"},
        "persistence": {"timeout": 600},
        "directors": {"nodeSelector": {"matchLabels": {"lb": "yes"}}},
        "backends": {"realServerSelector": {"matchLabels": {POOL_LABEL: "192-0-2-10-80-443"}}},
    }
    assert dns["spec"]["ports"] == [{"port": 53, "protocol": "UDP", "targetPort": 5353}]
    rs = {o["metadata"]["name"]: o["spec"] for o in kinds(result.objects, "RealServer")}
    assert rs == {
        "192-0-2-10-80-443-198-51-100-1": {"address": "198.51.100.1", "weight": 2},
        "192-0-2-10-80-443-198-51-100-2": {"address": "198.51.100.2"},
        "192-0-2-10-udp53-198-51-100-1": {"address": "198.51.100.1"},
    }
    node = {**DIRECTOR, "metadata": {"name": "d", "labels": {"lb": "yes"}}}
    assert director_lines(result.objects, node) == save_lines(text)


def test_real_servers_on_different_ports_carry_their_port():
    text = ("-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -m\n"
            "-a -t 192.0.2.1:80 -r 198.51.100.1:8081 -m -w 0 -x 5\n")
    result = import_ipvsadm(text)
    assert [o["spec"] for o in kinds(result.objects, "RealServer")] == [
        {"address": "198.51.100.1", "port": 8080},
        {"address": "198.51.100.1", "port": 8081, "weight": 0, "upperThreshold": 5},
    ]
    assert director_lines(result.objects) == save_lines(text)


def save_lines(text: str) -> list[str]:
    from lvs_operator.compiler.ipvsadm_parse import parse_ipvsadm

    return ipvsadm_save(parse_ipvsadm(text).services)


def test_mangle_mark_rules_describe_the_fwmark_service():
    text = """
iptables -t mangle -A PREROUTING -d 192.0.2.50/32 -p tcp --dport 80 -s 198.51.100.0/24 -j MARK --set-mark 9
iptables -t mangle -A PREROUTING -d 192.0.2.50/32 -p tcp --dport 443 -s 198.51.100.0/24 -j MARK --set-mark 9
iptables -t mangle -A PREROUTING -d 192.0.2.60 -p udp --dport 53 -j MARK --set-mark 10
ipvsadm -A -f 9 -s rr -p 600
ipvsadm -a -f 9 -r 203.0.113.1 -g
"""
    result = import_ipvsadm(text)
    [vs] = kinds(result.objects, "VirtualService")
    assert vs["spec"]["address"] == "192.0.2.50"
    assert vs["spec"]["firewallMark"] == {
        "mark": 9, "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
        "sourceRanges": ["198.51.100.0/24"]}
    assert [(p.line_no, p.message) for p in result.problems] == [
        (4, "sets firewall mark 10, which no imported `ipvsadm -f 10` service uses; not imported")]
    assert director_lines(result.objects) == ["-A -f 9 -s rr -p 600",
                                              "-a -f 9 -r 203.0.113.1:0 -g -w 1"]


def test_what_the_model_cannot_hold_is_reported_on_its_line():
    text = """-A -t 192.0.2.1:80 -s rr
-a -t 192.0.2.1:80 -r 198.51.100.1 -m
-a -t 192.0.2.1:80 -r 198.51.100.2 -g
-A -t 192.0.2.2:80 -s twos
-A -t 192.0.2.3 -s rr -p
-A -t 192.0.2.4:80 -s rr -b flag-1
-A -t 192.0.2.5:80 -s rr -p 5 --pe sip
-A -f 5 -s rr
-a -f 5 -r 198.51.100.3 -g
-A -f 6 -s rr
-a -f 6 -r 198.51.100.4:8080 -m
-a -f 6 -r 198.51.100.5:8080 -g
"""
    result = import_ipvsadm(text, fwmarks={6: FwmarkTarget("192.0.2.6", (("tcp", 80),))})
    got = {p.line_no: p.message for p in result.problems}
    assert sorted(got) == [3, 4, 5, 6, 7, 8, 11, 12]
    assert "uses DR but this service's first real server uses NAT" in got[3]
    assert "scheduler twos is not one the VirtualService model offers" in got[4]
    assert "port-0 (all ports) persistent service" in got[5]
    assert "scheduler flag flag-1 means nothing to rr" in got[6]
    assert "the model allows the sip engine on UDP only" in got[7]
    assert "--fwmark 5=VIP,tcp:PORT" in got[8] and "1 real server(s) not imported" in got[8]
    assert "rewrites the port" in got[11]
    assert "uses DR but this service's first real server uses NAT" in got[12]
    names = [o["metadata"]["name"] for o in kinds(result.objects, "VirtualService")]
    assert names == ["192-0-2-1-80", "192-0-2-4-80", "192-0-2-5-80", "fwmark-6"]


def test_fwmark_nat_real_server_with_a_port_is_reported():
    text = "-A -f 6 -s rr\n-a -f 6 -r 198.51.100.4:8080 -m\n-A -f 7 -s rr\n-a -f 7 -r 198.51.100.4:80 -i\n"
    marks = {6: FwmarkTarget("192.0.2.6", (("tcp", 80),)),
             7: FwmarkTarget("192.0.2.7", (("tcp", 80),))}
    result = import_ipvsadm(text, fwmarks=marks)
    got = {p.line_no: p.message for p in result.problems}
    assert "rewrites the port" in got[2] and "not imported" in got[2]
    assert "imported as 198.51.100.4:0" in got[4]
    assert director_lines(result.objects) == [
        "-A -f 6 -s rr", "-A -f 7 -s rr",
        "-a -f 7 -r 198.51.100.4:0 -i -w 1 --tun-type ipip"]


def test_fwmark_target_syntax():
    assert parse_fwmark_target("99=192.0.2.50,tcp:80,udp:53") == (
        99, FwmarkTarget("192.0.2.50", (("tcp", 80), ("udp", 53))))
    assert parse_fwmark_target("7=[2001:db8::1],sctp:3868")[1].address == "2001:db8::1"
    for bad in ("99", "x=192.0.2.1,tcp:80", "1=host,tcp:80", "1=192.0.2.1", "1=192.0.2.1,80"):
        with pytest.raises(ValueError):
            parse_fwmark_target(bad)


# =========================================================================== keepalived

KEEPALIVED = """\
! Configuration File for keepalived
global_defs {
   router_id LVS_1                       # not imported
   lvs_sync_daemon eth1 VI_1 id 7
}
include /etc/keepalived/conf.d/*.conf
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 2
    unicast_peer {
        192.0.2.251
    }
    virtual_ipaddress {
        192.0.2.10/24 dev eth0
    }
}
virtual_server 192.0.2.10 80 {
    delay_loop 10
    lb_algo wlc
    lb_kind DR
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    protocol TCP
    quorum 2
    hysteresis 1
    sorry_server 198.51.100.99 80
    inhibit_on_failure
    real_server 198.51.100.1 80 {
        weight 3
        uthreshold 100
        lthreshold 50
        HTTP_GET { url { path "/health"
                         status_code 200 204
                         digest 0123456789ABCDEF0123456789abcdef }
            connect_port 8080
            connect_timeout 4
            nb_get_retry 2
            delay_before_retry 5
        }
    }
    real_server 198.51.100.2 80 {
        HTTP_GET {
            url {
              path /health
              digest 0123456789abcdef0123456789abcdef
              status_code 200 204
            }
            connect_port 8080
            connect_timeout 4
            retry 2
            delay_before_retry 5
        }
        notify_down /usr/local/bin/down.sh
    }
}
"""


def test_keepalived_maps_onto_the_model_fields():
    result = import_keepalived(KEEPALIVED)
    [vs] = kinds(result.objects, "VirtualService")
    assert vs["spec"] == {
        "address": "192.0.2.10",
        "ports": [{"port": 80, "protocol": "TCP"}],
        "forwarding": {"method": "DR"},
        "scheduler": {"name": "wlc"},
        "persistence": {"timeout": 600, "prefixLength": 24},
        "healthCheck": {
            "type": "HTTP",
            "port": 8080,
            "connectTimeoutSeconds": 4,
            "retries": 2,
            "delayBeforeRetrySeconds": 5,
            "intervalSeconds": 10,
            "onFailure": "Inhibit",
            "http": {"path": "/health", "expectedStatusCodes": [200, 204],
                     "digest": "0123456789abcdef0123456789abcdef"},
            "quorum": {"minimum": 2, "hysteresis": 1,
                       "sorryServer": {"address": "198.51.100.99"}},
        },
        "ha": {"mode": "VRRP",
               "vrrp": {"virtualRouterID": 51, "priority": 150, "advertIntervalSeconds": 2,
                        "unicastPeers": ["192.0.2.251"]},
               "connectionSync": {"enabled": True, "interface": "eth1", "syncID": 7}},
        "directors": {"nodeSelector": {"matchLabels": {"lvs.dev/director": "true"}},
                      "interface": "eth0"},
        "backends": {"realServerSelector": {"matchLabels": {POOL_LABEL: "192-0-2-10-80"}}},
    }
    assert [o["spec"] for o in kinds(result.objects, "RealServer")] == [
        {"address": "198.51.100.1", "weight": 3, "upperThreshold": 100, "lowerThreshold": 50},
        {"address": "198.51.100.2"},
    ]
    assert [(p.line_no, p.message.split(":")[0]) for p in result.problems] == [
        (3, "global_defs router_id"),
        (6, "include /etc/keepalived/conf.d/*.conf"),
        (8, "state MASTER"),
        (17, "the model holds the VIP as /32, not /24; imported without them"),
        (56, "notify_down scripts have no model equivalent; not imported"),
    ]
    assert director_lines(result.objects) == [
        "-A -t 192.0.2.10:80 -s wlc -p 600 -M 255.255.255.0",
        "-a -t 192.0.2.10:80 -r 198.51.100.1:80 -g -w 3 -x 100 -y 50",
        "-a -t 192.0.2.10:80 -r 198.51.100.2:80 -g -w 1",
    ]


def test_keepalived_defaults_are_keepalived_s_not_the_model_s():
    conf = """virtual_server 192.0.2.20 443 {
    protocol TCP
    real_server 198.51.100.1 8443 {
        TCP_CHECK {
        }
    }
}
virtual_server 192.0.2.21 53 {
    real_server 198.51.100.1 53 {
    }
}
"""
    result = import_keepalived(conf)
    vs = kinds(result.objects, "VirtualService")
    assert vs[0]["spec"]["healthCheck"] == {
        "type": "TCP", "connectTimeoutSeconds": 5, "retries": 1, "delayBeforeRetrySeconds": 1,
        "intervalSeconds": 60, "onFailure": "Remove"}
    assert "forwarding" not in vs[0]["spec"]  # NAT, the model's default too
    assert vs[0]["spec"]["ports"] == [{"port": 443, "protocol": "TCP", "targetPort": 8443}]
    assert vs[1]["spec"]["ports"] == [{"port": 53, "protocol": "UDP"}]
    assert [(p.line_no, p.message) for p in result.problems] == [
        (8, "no protocol: keepalived defaults to UDP (with a warning); imported as UDP")]


def test_keepalived_syntax_comments_quotes_braces_and_continuations():
    conf = (
        'virtual_server 192.0.2.30 80 { lb_algo rr\n'
        '  lb_kind NAT   ! comment with a } brace\n'
        '  real_server 198.51.100.1 \\\n'
        '      8080 { weight 2 }\n'
        '  real_server 198.51.100.2 8080\n'
        '  {\n'
        '    weight "4"   # quoted value\n'
        '  }\n'
        '}\n'
        '}\n'
        'virtual_server_group never_used {\n'
        '  192.0.2.40 80\n'
    )
    result = import_keepalived(conf)
    assert [o["spec"].get("weight") for o in kinds(result.objects, "RealServer")] == [2, 4]
    assert [(p.line_no, p.message.split(";")[0]) for p in result.problems] == [
        (1, "no protocol: keepalived defaults to UDP (with a warning)"),
        (10, "`}` closes nothing"),
        (11, "the block of `virtual_server_group never_used` is never closed"),
        (11, "virtual_server_group never_used is used by no virtual_server"),
    ]


def test_health_path_marks_are_not_imported_and_say_why():
    result = import_ipvsadm("-A -f 8200 -s rr\n-a -f 8200 -r 198.51.100.4:0 -g -w 1\n",
                            fwmarks={8200: FwmarkTarget("192.0.2.6", (("tcp", 80),))})
    [problem] = result.problems
    assert problem.line_no == 1 and "0x2000-0x3fff" in problem.message
    assert "renumber" in problem.message and "1 real server(s) not imported" in problem.message
    assert kinds(result.objects, "VirtualService") == []
    conf = "virtual_server fwmark 8200 {\n    lb_kind DR\n}\n"
    [problem] = import_keepalived(conf).problems
    assert problem.line_no == 1 and "reserves for DR/TUN health checks" in problem.message


def test_keepalived_groups_fwmarks_and_tunnels():
    conf = """virtual_server_group web {
    192.0.2.50-51 80
    fwmark 7
}
virtual_server group web {
    lb_algo sh
    sh-port
    flag-1
    lb_kind TUN type gue port 6080 csum
    protocol TCP
    real_server 203.0.113.1 80 {
        weight 1
    }
}
"""
    result = import_keepalived(conf, fwmarks={7: FwmarkTarget("192.0.2.52", (("tcp", 80),))})
    assert [(p.line_no, p.message) for p in result.problems] == [
        (11, "fwmark real server has a port: keepalived ignores it (DR/TUN), and so does the "
             "import")]
    assert director_lines(result.objects) == [
        "-A -t 192.0.2.50:80 -s sh -b sh-fallback,sh-port",
        "-a -t 192.0.2.50:80 -r 203.0.113.1:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
        "-A -t 192.0.2.51:80 -s sh -b sh-fallback,sh-port",
        "-a -t 192.0.2.51:80 -r 203.0.113.1:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
        "-A -f 7 -s sh -b sh-fallback,sh-port",
        "-a -f 7 -r 203.0.113.1:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
    ]
    without = import_keepalived(conf)
    assert [(p.line_no, "--fwmark 7=" in p.message) for p in without.problems] == [(3, True)]


def test_keepalived_checks_the_model_cannot_run_are_reported():
    conf = """virtual_server 192.0.2.60 443 {
    protocol TCP
    alpha
    real_server 198.51.100.1 443 {
        SSL_GET {
            url {
                path /
                digest 9b3a0c85a887a256d6939da88aabd8cd
            }
        }
    }
    real_server 198.51.100.2 443 {
        MISC_CHECK {
            misc_path /bin/true
        }
        lvs_method DR
    }
}
"""
    result = import_keepalived(conf)
    got = {p.line_no: p.message for p in result.problems}
    assert sorted(got) == [3, 5, 6, 12, 13]
    assert "alpha" in got[3]
    assert "SSL_GET: the model has no TLS check" in got[5]
    assert "url of an SSL_GET" in got[6]
    assert "uses DR but the first uses NAT" in got[12]
    assert "MISC_CHECK" in got[13]
    assert director_lines(result.objects) == [
        "-A -t 192.0.2.60:443 -s wlc", "-a -t 192.0.2.60:443 -r 198.51.100.1:443 -m -w 1"]


# =========================================================================== lvsctl import


def test_lvsctl_import_reports_problems_as_file_line_and_exits_1(tmp_path, capsys):
    script = tmp_path / "rc.lvs"
    script.write_text("ipvsadm -A -t 192.0.2.1:80 -s rr\nipvsadm -Z\n")
    assert lvsctl(["import", "ipvsadm", str(script)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"{script}:2: zeroes packet and byte counters: kernel statistics, not "
                            "configuration; nothing to import; nothing imported from this line\n")
    assert [d["kind"] for d in yaml.safe_load_all(captured.out)] == ["VirtualService"]
    assert lvsctl(["import", "ipvsadm", str(script), "--allow-unsupported"]) == 0
    assert capsys.readouterr().err.startswith(f"{script}:2: ")


def test_lvsctl_import_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(KEEPALIVED))
    assert lvsctl(["import", "keepalived", "-", "--allow-unsupported",
                   "--director-selector", "role=lb"]) == 0
    captured = capsys.readouterr()
    docs = list(yaml.safe_load_all(captured.out))
    assert [d["kind"] for d in docs] == ["VirtualService", "RealServer", "RealServer"]
    assert docs[0]["spec"]["directors"]["nodeSelector"] == {"matchLabels": {"role": "lb"}}
    assert captured.err.splitlines()[0].startswith("<stdin>:3: global_defs router_id")
    for doc in docs:
        parse_manifest(doc)


@pytest.mark.parametrize("argv", [
    ["import", "ipvsadm", "/nonexistent/rules"],
    ["import", "ipvsadm", "-", "--fwmark", "nonsense"],
    ["import", "keepalived", "-", "--director-selector", "novalue"],
])
def test_lvsctl_import_usage_errors_exit_2(argv, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert lvsctl(argv) == 2
    assert capsys.readouterr().err.startswith("lvsctl: ")


# =========================================================================== property


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services())
def test_random_tables_import_exactly_or_say_which_line_they_cannot(svcs):
    """For any table ipvsadm can hold: import it, compile, save. Every line of the table comes
    back unchanged, unless the import reported that line (or its service's line)."""
    lines = ipvsadm_save(svcs)
    marks = {
        s.key.fwmark: FwmarkTarget(
            f"198.19.{i // 250}.{i % 250 + 1}" if s.key.family == 4 else f"2001:db8:ffff::{i + 1}",
            (("tcp", 1 + i),))
        for i, s in enumerate(svcs) if s.key.fwmark
    }
    result = import_ipvsadm("\n".join(lines) + "\n", fwmarks=marks)
    got = set(director_lines(result.objects))
    reported = {p.line_no for p in result.problems}
    service_line = 0
    for no, line in enumerate(lines, 1):
        if line.startswith("-A "):
            service_line = no
        if line not in got:
            assert no in reported or service_line in reported, (line, result.problems)
    assert len(got) <= len(lines)
    if not result.problems:
        assert director_lines(result.objects) == lines


def test_keepalived_paths_and_digests_are_checked_before_the_model_sees_them():
    conf = """virtual_server 192.0.2.70 80 {
    protocol TCP
    real_server 198.51.100.1 80 {
        HTTP_GET {
            url {
                path "status page.html"
                digest not-an-md5
                status_code 200
            }
        }
    }
}
"""
    result = import_keepalived(conf)
    [vs] = kinds(result.objects, "VirtualService")
    assert vs["spec"]["healthCheck"]["http"] == {"path": "/status%20page.html",
                                                 "expectedStatusCodes": [200]}
    assert [p.line_no for p in result.problems] == [6, 7]
