"""Reading ipvsadm-save output and ipvsadm scripts: ipvsadm 1.31's option semantics, the
kernel's refusals, shell scripts, and the property that whatever render prints, parse reads
back unchanged."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs_operator.api.objects import parse_manifest
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.ipvsadm_parse import MarkMatch, parse_ipvsadm
from lvs_operator.compiler.plan import Destination, IPVSService, ServiceKey
from lvs_operator.compiler.render import compare_services, ipvsadm_save

from .test_properties import clusters


def save(text: str) -> list[str]:
    """The `ipvsadm -S -n` lines of the state `text` leaves behind."""
    return ipvsadm_save(parse_ipvsadm(text).services)


def problems(text: str) -> list[tuple[int, str]]:
    return [(p.line_no, p.message) for p in parse_ipvsadm(text).problems]


# =========================================================================== ipvsadm semantics


def test_defaults_are_ipvsadms_direct_routing_weight_1_and_wlc():
    assert save("ipvsadm -A -t 192.0.2.1:80\nipvsadm -a -t 192.0.2.1:80 -r 198.51.100.1") == [
        "-A -t 192.0.2.1:80 -s wlc",
        "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -g -w 1",
    ]


def test_save_format_lines_parse_to_themselves():
    lines = [
        "-A -t 192.0.2.1:80 -s wrr -p 300 -M 255.255.255.0",
        "-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -m -w 3 -x 100 -y 50",
        "-A -u 192.0.2.1:53 -s sh -o -b sh-fallback,sh-port",
        "-a -u 192.0.2.1:53 -r 198.51.100.2:53 -g -w 0",
        "-A --sctp-service 192.0.2.1:3868 -s rr",
        "-A -t [2001:db8::1]:443 -s mh -p 60 -M 64 -b mh-port",
        "-a -t [2001:db8::1]:443 -r [2001:db8:1::1]:443 -i -w 1 --tun-type gue --tun-port 6080 "
        "--tun-remcsum",
        "-A -f 7 -s rr -p 360",
        "-a -f 7 -r 198.51.100.3:0 -g -w 1",
        "-A -f 8 -6 -s lc",
        "-A -f 9 -s rr -p 30 --pe sip",
    ]
    assert save("\n".join(lines)) == lines
    assert parse_ipvsadm("\n".join(lines)).problems == []


def test_persistent_without_value_is_360_seconds_as_libipvs_says():
    # ipvsadm.8 says 300, libipvs.h IPVS_SVC_PERSISTENT_TIMEOUT is (6*60); the code wins.
    assert save("-A -t 192.0.2.1:443 -s rr -p") == ["-A -t 192.0.2.1:443 -s rr -p 360"]
    assert save("-A -t 192.0.2.1:443 -p -s rr") == ["-A -t 192.0.2.1:443 -s rr -p 360"]


def test_bundled_options_read_like_popt():
    assert save("ipvsadm -At 192.0.2.1:80 -s rr\nipvsadm -at 192.0.2.1:80 -r 198.51.100.1 -mw3") \
        == ["-A -t 192.0.2.1:80 -s rr", "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 3"]


def test_long_options_and_equals_form():
    script = (
        "ipvsadm --add-service --tcp-service=192.0.2.1:80 --scheduler wrr --persistent=120 "
        "--netmask 255.255.0.0\n"
        "ipvsadm --add-server -t 192.0.2.1:80 --real-server=198.51.100.2 --masquerading "
        "--weight 5 --u-threshold 9 --l-threshold 3\n"
        "ipvsadm --add-service --fwmark-service 3 --ipv6 --scheduler rr\n"
    )
    assert save(script) == [
        "-A -t 192.0.2.1:80 -s wrr -p 120 -M 255.255.0.0",
        "-a -t 192.0.2.1:80 -r 198.51.100.2:80 -m -w 5 -x 9 -y 3",
        "-A -f 3 -6 -s rr",
    ]


def test_dr_and_tun_force_the_virtual_port_nat_keeps_it_fwmark_keeps_any():
    assert save(
        "-A -t 192.0.2.1:80 -s rr\n"
        "-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -g\n"
        "-a -t 192.0.2.1:80 -r 198.51.100.2:8080 -i\n"
        "-A -t 192.0.2.2:80 -s rr\n"
        "-a -t 192.0.2.2:80 -r 198.51.100.3:8080 -m\n"
        "-A -f 1 -s rr\n"
        "-a -f 1 -r 198.51.100.4:8080 -g\n"
        "-a -f 1 -r 198.51.100.5 -m\n"
    ) == [
        "-A -t 192.0.2.1:80 -s rr",
        "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -g -w 1",
        "-a -t 192.0.2.1:80 -r 198.51.100.2:80 -i -w 1 --tun-type ipip",
        "-A -t 192.0.2.2:80 -s rr",
        "-a -t 192.0.2.2:80 -r 198.51.100.3:8080 -m -w 1",
        "-A -f 1 -s rr",
        "-a -f 1 -r 198.51.100.4:8080 -g -w 1",
        "-a -f 1 -r 198.51.100.5:0 -m -w 1",
    ]


def test_edit_service_replaces_every_attribute_like_ipvsadm_does():
    # -E without -s is wlc again, without -p the service stops being persistent: ipvsadm
    # fills in the defaults before ipvs_update_service(). Destinations stay.
    assert save(
        "ipvsadm -A -f 1080 -s sh -b sh-port\n"
        "ipvsadm -a -f 1080 -r 10.0.0.11 -m\n"
        "ipvsadm -E -f 1080 -p 300\n"
    ) == ["-A -f 1080 -s wlc -p 300", "-a -f 1080 -r 10.0.0.11:0 -m -w 1"]


def test_edit_server_replaces_forwarding_and_weight():
    assert save(
        "-A -t 192.0.2.1:80 -s rr\n"
        "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 5 -x 10\n"
        "-e -t 192.0.2.1:80 -r 198.51.100.1:80\n"
    ) == ["-A -t 192.0.2.1:80 -s rr", "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -g -w 1"]


def test_deletes_and_clear_apply_in_order():
    assert save(
        "-A -t 192.0.2.1:80 -s rr\n"
        "-a -t 192.0.2.1:80 -r 198.51.100.1 -m\n"
        "-a -t 192.0.2.1:80 -r 198.51.100.2 -m\n"
        "-d -t 192.0.2.1:80 -r 198.51.100.1\n"
        "-A -t 192.0.2.2:80 -s rr\n"
        "-D -t 192.0.2.2:80\n"
    ) == ["-A -t 192.0.2.1:80 -s rr", "-a -t 192.0.2.1:80 -r 198.51.100.2:80 -m -w 1"]
    assert save("-A -t 192.0.2.1:80 -s rr\n-C\n-A -t 192.0.2.3:80 -s lc") == [
        "-A -t 192.0.2.3:80 -s lc"]


def test_netmask_forms():
    assert save("-A -t 192.0.2.1:80 -s rr -p 10 -M 255.255.255.255") == [
        "-A -t 192.0.2.1:80 -s rr -p 10"]
    assert save("-A -t 192.0.2.1:80 -s rr -p 10 -M 0.0.0.0") == [
        "-A -t 192.0.2.1:80 -s rr -p 10 -M 0.0.0.0"]
    assert save("-A -t [2001:db8::1]:80 -s rr -p 10 -M 48") == [
        "-A -t [2001:db8::1]:80 -s rr -p 10 -M 48"]
    assert save("-A -f 5 -6 -s rr -p 10 -M 56") == ["-A -f 5 -6 -s rr -p 10 -M 56"]


def test_netmask_before_an_ipv6_service_is_overwritten_and_reported():
    text = "-A -M 255.255.255.0 -t [2001:db8::1]:80 -s rr -p 10"
    assert save(text) == ["-A -t [2001:db8::1]:80 -s rr -p 10"]
    [(line, message)] = problems(text)
    assert line == 1 and "reset the mask to 128" in message


def test_netmask_without_persistence_is_reported_not_kept():
    text = "-A -t 192.0.2.1:80 -s rr -M 255.255.255.0"
    assert save(text) == ["-A -t 192.0.2.1:80 -s rr"]
    [(line, message)] = problems(text)
    assert line == 1 and "-M without -p" in message


def test_scheduler_flags_follow_the_scheduler():
    assert save("-A -t 192.0.2.1:80 -s sh -b flag-2,flag-1") == [
        "-A -t 192.0.2.1:80 -s sh -b sh-fallback,sh-port"]
    assert save("-A -t 192.0.2.1:80 -b mh-port -s mh") == ["-A -t 192.0.2.1:80 -s mh -b mh-port"]
    assert save("-A -t 192.0.2.1:80 -s rr -b flag-3,flag-1") == [
        "-A -t 192.0.2.1:80 -s rr -b flag-1,flag-3"]


def test_service_names_and_ipv6_real_servers():
    assert save(
        "-A -t 192.0.2.1:http -s rr\n"
        "-a -t 192.0.2.1:http -r 198.51.100.1:www -m\n"
        "-A -t [2001:DB8:0::1]:https -s rr\n"
        "-a -t [2001:db8::1]:https -r 2001:db8::a -g\n"
    ) == [
        "-A -t 192.0.2.1:80 -s rr",
        "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 1",
        "-A -t [2001:db8::1]:443 -s rr",
        "-a -t [2001:db8::1]:443 -r [2001:db8::a]:443 -g -w 1",
    ]


def test_tunnelled_real_servers_may_be_of_the_other_family():
    assert save("-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r [2001:db8::5]:80 -i") == [
        "-A -t 192.0.2.1:80 -s rr",
        "-a -t 192.0.2.1:80 -r [2001:db8::5]:80 -i -w 1 --tun-type ipip",
    ]


# =========================================================================== shell scripts


def test_scripts_with_paths_sudo_variables_comments_and_continuations():
    script = """#!/bin/sh
# LVS director
IPVSADM=/sbin/ipvsadm
VIP="192.0.2.10"; RIP1=198.51.100.1
export PORT=80
sudo $IPVSADM -C
$IPVSADM -A -t ${VIP}:$PORT -s wlc \\
    -p 600   # sticky
sudo -E /usr/sbin/ipvsadm -a -t $VIP:$PORT -r $RIP1 -g -w 2 >/dev/null 2>&1
/sbin/ipvsadm -a -t "$VIP:$PORT" -r '198.51.100.2' -g && echo added
ipvsadm -Ln | grep -q TCP
ipvsadm-save -n > /etc/sysconfig/ipvsadm
"""
    assert save(script) == [
        "-A -t 192.0.2.10:80 -s wlc -p 600",
        "-a -t 192.0.2.10:80 -r 198.51.100.1:80 -g -w 2",
        "-a -t 192.0.2.10:80 -r 198.51.100.2:80 -g -w 1",
    ]
    assert problems(script) == [
        (10, "not an ipvsadm command (echo); not imported"),
        (11, "not an ipvsadm command (grep); not imported"),
    ]


def test_restore_lines_may_begin_with_ipvsadm_like_config_stream_reads_them():
    assert save("-A -t 192.0.2.1:80 -s rr\nipvsadm -a -t 192.0.2.1:80 -r 198.51.100.1 -m") == [
        "-A -t 192.0.2.1:80 -s rr", "-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 1"]


def test_unknown_variables_and_command_substitution_are_reported():
    script = "VIP=$(hostname -i)\nipvsadm -A -t $VIP:80 -s rr\nipvsadm -A -t $OTHER:80\n"
    assert save(script) == []
    got = problems(script)
    assert [line for line, _ in got] == [1, 2, 3]
    assert "command substitution" in got[0][1]
    assert "$VIP, which is set on line 1 by something not evaluated" in got[1][1]
    assert "$OTHER, which is not set earlier in this file" in got[2][1]


def test_iptables_mark_rules_are_returned_for_the_importer():
    parsed = parse_ipvsadm(
        "iptables -t mangle -A PREROUTING -p tcp -d 192.0.2.50/32 -m multiport "
        "--dports 80,443 -s 198.51.100.0/24 -j MARK --set-mark 0x63\n"
        "ip6tables -t mangle -I PREROUTING 1 -p udp -d 2001:db8::5 --dport 53 "
        "! -s 2001:db8:f::/48 -j MARK --set-xmark 7/0xffffffff\n"
        "iptables -t mangle -A PREROUTING -d 192.0.2.0/24 -j MARK --set-mark 1\n"
        "iptables -A PREROUTNG -t mangle -d 172.16.52.57 -p tcp --dport 1000:2000 "
        "-j MARK --set-mark 2\n"
    )
    assert parsed.marks == [
        MarkMatch(1, parsed.marks[0].line, 4, 99, "192.0.2.50", (("tcp", 80), ("tcp", 443)),
                  "198.51.100.0/24", False),
        MarkMatch(2, parsed.marks[1].line, 6, 7, "2001:db8::5", (("udp", 53),),
                  "2001:db8:f::/48", True),
    ]
    assert [p.line_no for p in parsed.problems] == [3, 4]
    assert "more than one address" in parsed.problems[0].message
    assert "chain PREROUTNG" in parsed.problems[1].message
    assert "port ranges" in parsed.problems[1].message


# =========================================================================== errors

BAD_LINES = [
    ("ipvsadm -A -t www.example.com:80", "not a numeric IPv4/IPv6 address"),
    ("ipvsadm -A -t 192.0.2.1:80 -s roundrobin", "unknown scheduler `roundrobin'"),
    ("ipvsadm -A -t 192.0.2.1:80 -s rr -w 3", "Illegal 'weight' option with the 'add-service'"),
    ("ipvsadm -a -t 192.0.2.9:80 -r 198.51.100.1", "no service tcp/192.0.2.9:80"),
    ("ipvsadm -A -t 192.0.2.1 -s rr", "Zero port specified for non-persistent service"),
    ("ipvsadm -A -t 192.0.2.1:80 -o", "One-Packet Scheduling is only for UDP"),
    ("ipvsadm -A -t 192.0.2.1:80 -s rr -b sh-port", "incompatible scheduler flag `sh-port'"),
    ("ipvsadm -A -t 192.0.2.1:80 -s rr -b sticky", "invalid scheduler flag `sticky'"),
    ("ipvsadm -A -t 192.0.2.1:80 -6", "-6 used before -f"),
    ("ipvsadm -A -t 192.0.2.1:80 -p 0", "invalid timeout value `0'"),
    ("ipvsadm -A -t 192.0.2.1:80 -s rr -p 9 -M 255.0.255.0", "not contiguous"),
    ("ipvsadm -A -t 192.0.2.1:80 -s rr --pe http", "unknown persistence engine `http'"),
    ("ipvsadm -A -t 192.0.2.1:80 -s rr -s wrr", "multiple 'scheduler' options specified"),
    ("ipvsadm -t 192.0.2.1:80 -A", "takes the command first"),
    ("ipvsadm -A -a -t 192.0.2.1:80", "multiple commands specified"),
    ("ipvsadm -A -t 192.0.2.1:80 --bogus", "invalid option `--bogus'"),
    ("ipvsadm -A -t 192.0.2.1:99999", "illegal virtual server port `99999'"),
    ("ipvsadm -A -f 0", "invalid fwmark value `0'"),
    ("ipvsadm -Z", "zeroes packet and byte counters"),
    ("ipvsadm --set 900 120 300", "global IPVS connection timeouts"),
    ("ipvsadm --start-daemon master --mcast-interface eth1", "connection sync daemon"),
    ("ipvsadm -R < /etc/ipvsadm.rules", "reads its input from a pipe or file"),
    ("ipvsadm-restore < /etc/ipvsadm.rules", "ipvsadm-restore reads rules from another input"),
    ("service ipvsadm restart", "not an ipvsadm command (service)"),
    ("ipvsadm -A -t '192.0.2.1:80", "unterminated ' quote"),
]
SETUP = "-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r 198.51.100.1 -m\n"
BAD_DEST_LINES = [
    ("-a -t 192.0.2.1:80 -r 198.51.100.1 -m", "already exists"),
    ("-a -t 192.0.2.1:80 -r 2001:db8::1 -m", "Different address family is allowed only"),
    ("-a -t 192.0.2.1:80 -r [2001:db8::1] -m", "write IPv6 as [address]:port"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -m --tun-type gue", "Tunnel options conflict"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -i --tun-type gue", "'tun-port' option for the 'gue'"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -i --tun-port 6080", "Illegal 'tun-port' option with "
                                                              "the 'ipip' tunnel type"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -i --tun-type gre --tun-remcsum", "Illegal "
                                                                           "'tun-remcsum'"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -m -y 5", "lower threshold 5 is above the upper"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -m -w 65536", "illegal weight specified"),
    ("-a -t 192.0.2.1:80 -r 198.51.100.2 -m -g", "multiple 'forwarding-method' options"),
    ("-e -t 192.0.2.1:80 -r 198.51.100.9 -m", "no real server 198.51.100.9:80"),
    ("-d -t 192.0.2.1:80 -r 198.51.100.1:81", "no real server 198.51.100.1:81"),
    ("-A -t 192.0.2.1:80 -s wrr", "already exists (the kernel refuses: File exists)"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_each_bad_line_is_a_problem_naming_the_line(line, expected):
    text = f"# a comment\n\n{line}\n"
    parsed = parse_ipvsadm(text)
    assert parsed.services == []
    [problem] = parsed.problems
    assert problem.line_no == 3
    assert problem.line == line.strip()
    assert expected in problem.message


@pytest.mark.parametrize(("line", "expected"), BAD_DEST_LINES, ids=[b[0] for b in BAD_DEST_LINES])
def test_each_refused_destination_command_changes_nothing(line, expected):
    parsed = parse_ipvsadm(SETUP + line)
    assert ipvsadm_save(parsed.services) == ipvsadm_save(parse_ipvsadm(SETUP).services)
    [problem] = parsed.problems
    assert problem.line_no == 3 and expected in problem.message


def test_continued_lines_report_their_first_line():
    parsed = parse_ipvsadm("\n-A -t 192.0.2.1:80 \\\n  -s nope\n-A -t 192.0.2.2:80\n")
    assert [(p.line_no, p.line) for p in parsed.problems] == [(2, "-A -t 192.0.2.1:80   -s nope")]
    assert ipvsadm_save(parsed.services) == ["-A -t 192.0.2.2:80 -s wlc"]


def test_lines_and_origins_are_tracked():
    parsed = parse_ipvsadm(SETUP + "-E -t 192.0.2.1:80 -s lc\n")
    key = ServiceKey(4, "tcp", "192.0.2.1", 80, 0)
    assert parsed.service_lines == {key: 3}
    assert parsed.dest_lines == {(key, "198.51.100.1", 80): 2}


# =========================================================================== property

ADDR4 = st.sampled_from(["192.0.2.1", "192.0.2.200", "198.51.100.7", "203.0.113.9", "10.1.2.3",
                         "198.18.0.1"])
ADDR6 = st.sampled_from(["2001:db8::1", "2001:db8:1::a", "2001:db8:ffff::"])


@st.composite
def destinations(draw: st.DrawFn, key: ServiceKey) -> tuple[Destination, ...]:
    out: dict[tuple[str, int], Destination] = {}
    for _ in range(draw(st.integers(0, 4))):
        forward = draw(st.sampled_from(["masq", "route", "tunnel"]))
        family = key.family if forward != "tunnel" else draw(st.sampled_from([4, 6]))
        address = draw(ADDR4 if family == 4 else ADDR6)
        if key.fwmark:
            port = draw(st.sampled_from([0, 0, 8080]))
        elif forward == "masq":
            port = draw(st.sampled_from([key.port, 8080, 8443]))
        else:
            port = key.port
        ttype, tport, csum = "", 0, ""
        if forward == "tunnel":
            ttype = draw(st.sampled_from(["ipip", "gue", "gre"]))
            if ttype == "gue":
                tport = draw(st.integers(1, 65535))
                csum = draw(st.sampled_from(["none", "csum", "remcsum"]))
            elif ttype == "gre":
                csum = draw(st.sampled_from(["none", "csum"]))
        upper = draw(st.sampled_from([0, 0, 10, 2**31 - 1]))
        lower = draw(st.integers(0, upper)) if upper else 0
        out[(address, port)] = Destination(address, port, forward, draw(st.integers(0, 65535)),
                                           upper, lower, ttype, tport, csum)
    return tuple(out.values())


@st.composite
def services(draw: st.DrawFn) -> list[IPVSService]:
    out: dict[ServiceKey, IPVSService] = {}
    for _ in range(draw(st.integers(0, 5))):
        family = draw(st.sampled_from([4, 6]))
        if draw(st.integers(0, 3)) == 0:
            key = ServiceKey(family, "", "", 0, draw(st.integers(1, 2**32 - 1)))
        else:
            key = ServiceKey(family, draw(st.sampled_from(["tcp", "udp", "sctp"])),
                             draw(ADDR4 if family == 4 else ADDR6), draw(st.integers(1, 65535)), 0)
        scheduler = draw(st.sampled_from(["rr", "wrr", "lc", "wlc", "sh", "mh", "lblcr", "ovf"]))
        flags: tuple[str, ...] = ()
        if scheduler in ("sh", "mh"):
            flags = draw(st.sampled_from([(), (f"{scheduler}-fallback",), (f"{scheduler}-port",),
                                          (f"{scheduler}-fallback", f"{scheduler}-port")]))
        timeout = draw(st.sampled_from([0, 0, 1, 360, 86400 * 31]))
        prefix = 0
        if timeout:
            prefix = draw(st.integers(0, 32) if family == 4 else st.integers(1, 128))
        udp_like = key.fwmark or key.protocol == "udp"
        out[key] = IPVSService(
            key=key,
            scheduler=scheduler,
            flags=flags,
            persistence_timeout=timeout,
            persistence_prefix=prefix,
            persistence_engine=draw(st.sampled_from(["", "sip"])) if udp_like else "",
            one_packet=draw(st.booleans()) if udp_like else False,
            destinations=draw(destinations(key)),
        )
    return list(out.values())


def _comparable(svcs: list[IPVSService]) -> list[IPVSService]:
    """Services as ipvsadm sees them: in its order, without what only the plan knows
    (owner, drain bookkeeping, the source object), destinations by key."""
    ordered = sorted(svcs, key=functools.cmp_to_key(compare_services))
    return [
        s._replace(
            owner="",
            drain_timeout=300,
            destinations=tuple(sorted(
                (d._replace(draining=False, source="") for d in s.destinations),
                key=lambda d: (d.address, d.port),
            )),
        )
        for s in ordered
    ]


@settings(max_examples=300, deadline=None)
@given(services())
def test_render_then_parse_gives_back_the_same_services(svcs):
    text = "\n".join(ipvsadm_save(svcs)) + "\n"
    parsed = parse_ipvsadm(text)
    assert parsed.problems == []
    assert _comparable(parsed.services) == _comparable(svcs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_compiled_plans_render_then_parse_to_the_same_services(docs):
    result = compile_cluster([parse_manifest(d) for d in docs])
    for plan in result.plans.values():
        svcs = list(plan.director.services)
        parsed = parse_ipvsadm("\n".join(ipvsadm_save(svcs)))
        assert parsed.problems == []
        assert _comparable(parsed.services) == _comparable(svcs)
