"""Real-world LVS configurations (tests/data/lvs_corpus, each with its source in its header)
imported end to end.

For every file, `expected/<name>.ipvsadm` holds, written by hand, the `ipvsadm-save -n` of the
IPVS table the file leaves on a director. Comparing with it canonicalises the input the way
ipvsadm-save prints a table (ipvsadm 1.31 print_service_entry, ipvs_cmp_services/dests):

* order: services by (fwmark, family, protocol, address compared as ipvsadm does, by signed
  32-bit subtraction, so 192.168.x sorts before 10.x), then port; destinations by address,
  then port;
* option order: `-A SVC -s SCHED [-p T [-M MASK]] [--pe PE] [-o] [-b FLAGS]` and
  `-a SVC -r ADDR:PORT -m|-g|-i -w W [--tun-type T [--tun-port P] [--tun-*csum]]`;
* defaults written out: `-s wlc`, `-w 1`, `-g` when no forwarding option is given, the
  virtual port on a real server given without one (and on every DR/TUN one), `--tun-type
  ipip` for `-i` (ipvsadm >= 1.30 prints it), `--tun-nocsum` for gue/gre without a checksum
  option, 360 for `-p` without a value; `-M 255.255.255.255` (/128) omitted;
* names resolved: service names to numbers (http 80, https 443), IPv6 compressed lowercase;
* scripts run: -C/-D/-d/-E/-e applied in order, commands ipvsadm or the kernel refuses left
  out (ipvsadm-save shows the table, not the script).

keepalived files: the table keepalived 2.x programs once every checker has passed (steady
state): lb_kind NAT -> -m, DR -> -g, TUN -> -i; lb_algo -> -s; persistence_timeout -> -p;
persistence_granularity -> -M; weight -> -w; uthreshold/lthreshold -> -x/-y; NAT real servers
keep their port, DR/TUN ones get the virtual port; fwmark real servers port 0 unless NAT.

Where the model cannot hold the input exactly, GAPS says which expected line the import gives
instead (None: left out), and GAP_LINES which source lines must carry the problem for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lvs_operator.api.objects import parse_manifests
from lvs_operator.cli.importers import FwmarkTarget, ImportResult, import_ipvsadm, import_keepalived
from lvs_operator.compiler.engine import compile_cluster
from lvs_operator.compiler.ipvsadm_parse import parse_ipvsadm
from lvs_operator.compiler.plan import is_health_path
from lvs_operator.compiler.render import ipvsadm_save

CORPUS = Path(__file__).resolve().parents[1] / "data" / "lvs_corpus"
FILES = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".ipvsadm", ".conf"))
IPVSADM_FILES = [f for f in FILES if f.endswith(".ipvsadm")]
KEEPALIVED_FILES = [f for f in FILES if f.endswith(".conf")]
NODE = {"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "lb", "labels": {"lvs.dev/director": "true"}}}

# What the firewall marks stand for: the files do not say (the marks are set elsewhere), so,
# as a user would with --fwmark, the test says it, with documentation addresses.
HINTS: dict[str, dict[int, FwmarkTarget]] = {
    "12-big-brother-save-fwmark-tun.ipvsadm": {
        m: FwmarkTarget(f"192.0.2.{m}", (("tcp", 80),)) for m in (1, 2, 3)},
    "23-keepalived-fwmark.conf": {1: FwmarkTarget("192.0.2.1", (("tcp", 80),))},
    "26-keepalived-virtual-server-group.conf": {
        m: FwmarkTarget(f"192.0.2.{m}", (("tcp", 80),)) for m in (1, 2)},
}


def _fwmark_tun_port_0(lines: list[str]) -> dict[str, str | None]:
    return {line: line.replace(":80 -i", ":0 -i") for line in lines}


# expected line -> what the import gives instead (None: nothing), per file
GAPS: dict[str, dict[str, str | None]] = {
    # The mangle rule marks a /31 on every port; a VirtualService has one VIP and listed ports.
    "03-man-fwmark-nat.ipvsadm": {
        line: None for line in (CORPUS / "expected" / "03-man-fwmark-nat.ipvsadm")
        .read_text().splitlines()},
    # One tunnel configuration per VirtualService: real servers 2-5 differ from the first.
    "04-man-gue-tunnel.ipvsadm": {
        "-a -t 207.175.44.110:80 -r 192.168.10.2:80 -i -w 1 --tun-type gue --tun-port 6080 "
        "--tun-csum": None,
        "-a -t 207.175.44.110:80 -r 192.168.10.3:80 -i -w 1 --tun-type gue --tun-port 6080 "
        "--tun-remcsum": None,
        "-a -t 207.175.44.110:80 -r 192.168.10.4:80 -i -w 1 --tun-type gue --tun-port 6078 "
        "--tun-nocsum": None,
        "-a -t 207.175.44.110:80 -r 192.168.10.5:80 -i -w 1 --tun-type gue --tun-port 6079 "
        "--tun-nocsum": None,
    },
    # Firewall-mark real servers get port 0 in the model; TUN ignores the port anyway.
    "12-big-brother-save-fwmark-tun.ipvsadm": _fwmark_tun_port_0([
        f"-a -f {m} -r 10.0.1.{a}:80 -i -w 1 --tun-type ipip"
        for m, a in ((3, 220), (3, 221), (3, 222), (1, 223), (1, 224), (2, 225))]),
    # NAT real servers of a firewall-mark service keep their port 1358 in keepalived.
    "26-keepalived-virtual-server-group.conf": {
        f"-a -f {m} -r 192.168.200.{a}:1358 -m -w 1": None for m in (1, 2) for a in (1, 2)},
}
GAP_LINES = {
    "03-man-fwmark-nat.ipvsadm": {7, 15},
    "04-man-gue-tunnel.ipvsadm": {11, 13, 15, 17},
    "12-big-brother-save-fwmark-tun.ipvsadm": {7, 8, 9, 11, 12, 14},
    "26-keepalived-virtual-server-group.conf": {33, 46},
}

# Every line each file's import reports (checked by hand against the file).
PROBLEM_LINES = {
    "01-man-nat-rr-commands.ipvsadm": [],
    "02-man-nat-rr-restore.ipvsadm": [],
    "03-man-fwmark-nat.ipvsadm": [7, 13, 14, 15, 16],  # fwmark 1; echo, modprobe, /31, modprobe
    "04-man-gue-tunnel.ipvsadm": [11, 13, 15, 17],
    "05-man-gre-and-ipv6.ipvsadm": [],
    # yum, ip, iptables -j ACCEPT, service, cat/echo x6, ifconfig, route, ping x2
    "06-mini-howto-nat-director.ipvsadm": [7, 9, 15, 16, 21, 22, 26, 27, 28, 29, 30, 31, 34,
                                           37, 50, 56],
    "07-dr-shell-variables.ipvsadm": [6, 12, 13],  # echo, ifconfig, route
    "08-nat-persistent-quoted-path.ipvsadm": [7, 9, 10, 12, 13, 15, 16, 17],
    "09-tun-bundled-options.ipvsadm": [8, 9],  # ifconfig, route
    # functions, braces, if/then/fi, `read`, $ip/$1, the `-s -rr` typo and the -a lines
    # that fail after it; everything but comments and blank lines
    "10-tun-functions-typo.ipvsadm": [9, 10, 13, 15, 18, 20, 21, 23, 25, 26, 28, 29, 30, 31, 32,
                                      33, 34, 36, 37, 39, 41, 43, 44, 45, 47, 49, 50, 51, 52,
                                      53, 54, 55, 56],
    "11-rules-file-service-names.ipvsadm": [],
    "12-big-brother-save-fwmark-tun.ipvsadm": [7, 8, 9, 11, 12, 14],
    # global_defs x5, VI_1 holds no virtual_server VIP, nopreempt, its 3 VIPs, default status
    "21-keepalived-sample.conf": [8, 11, 12, 13, 14, 17, 20, 24, 25, 26, 42],
    "22-keepalived-inhibit.conf": [8, 11, 12, 13, 14, 28],
    "23-keepalived-fwmark.conf": [8, 16],  # router_id, protocol ignored for fwmark
    "24-keepalived-quorum.conf": [33, 34, 37, 38],  # alpha, omega, quorum_up, quorum_down
    "25-keepalived-status-code.conf": [9, 12, 13, 14, 15, 27, 28, 32],  # SSL_GET and its urls
    "26-keepalived-virtual-server-group.conf": [8, 11, 12, 13, 14, 33, 36, 46, 49],
    "27-keepalived-ipv6.conf": [8, 11, 28],  # router_id, unused group, SMTP_CHECK
    "28-keepalived-vrrp-lvs-syncd.conf": [7, 12, 13, 19, 24, 25, 26, 37, 38, 42, 48, 49, 50],
    "29-keepalived-http-get-port.conf": [8, 11, 12, 13, 14, 26, 27],
    "30-keepalived-dr-vrrp-tcp-check.conf": [8, 15, 41, 50],  # state, auth, nb_get_retry x2
}


def run_import(name: str) -> ImportResult:
    text = (CORPUS / name).read_text()
    importer = import_ipvsadm if name.endswith(".ipvsadm") else import_keepalived
    return importer(text, fwmarks=HINTS.get(name))


def compiled_table(result: ImportResult) -> list[str]:
    objects, errors = parse_manifests([*result.objects, NODE])
    assert errors == []
    compiled = compile_cluster(objects)
    assert [i for i in compiled.all_issues() if i.severity == "Error"] == []
    # keepalived's own table has no health-path services (its checks probe the RIP)
    return ipvsadm_save([s for s in compiled.plans["lb"].director.services
                         if not is_health_path(s.key)])


def expected(name: str) -> list[str]:
    return (CORPUS / "expected" / (Path(name).stem + ".ipvsadm")).read_text().splitlines()


# =========================================================================== the corpus


def test_corpus_mixes_ipvsadm_and_keepalived_from_cited_sources():
    assert len(FILES) >= 15
    assert len(IPVSADM_FILES) >= 7 and len(KEEPALIVED_FILES) >= 7
    assert set(PROBLEM_LINES) == set(FILES)
    for name in FILES:
        head = (CORPUS / name).read_text().splitlines()[:6]
        assert head[0].startswith("# Source: https://github.com/"), name
        assert any(line.startswith("# Licence:") for line in head), name
        assert any(line.startswith("# Edits:") for line in head), name
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.(ipvsadm|conf)", name), name


@pytest.mark.parametrize("name", IPVSADM_FILES)
def test_parse_reads_each_ipvsadm_file_as_ipvsadm_would(name):
    """parse(F), rendered, is the hand-canonicalised ipvsadm-save of F."""
    assert ipvsadm_save(parse_ipvsadm((CORPUS / name).read_text()).services) == expected(name)


@pytest.mark.parametrize("name", FILES)
def test_round_trip_save_of_import_reproduces_the_file(name):
    """Round trip B (and the keepalived equivalent): import F, compile, ipvsadm-save ==
    canonical F, except the documented gaps, each reported on its source line."""
    result = run_import(name)
    gaps = GAPS.get(name, {})
    want = [gaps.get(line, line) for line in expected(name)]
    assert compiled_table(result) == [line for line in want if line is not None]
    reported = {p.line_no for p in result.problems}
    assert GAP_LINES.get(name, set()) <= reported


@pytest.mark.parametrize("name", FILES)
def test_every_problem_names_its_line(name):
    result = run_import(name)
    assert sorted({p.line_no for p in result.problems}) == PROBLEM_LINES[name]
    lines = (CORPUS / name).read_text().splitlines()
    for p in result.problems:
        assert p.line == lines[p.line_no - 1].strip() or lines[p.line_no - 1].rstrip().endswith(
            "\\"), (name, p)
        assert p.message


# =========================================================================== never dropped

MAPPED = {
    "": {"global_defs", "vrrp_instance", "virtual_server", "virtual_server_group"},
    "global_defs": {"lvs_sync_daemon"},
    "vrrp_instance": {"interface", "virtual_router_id", "priority", "advert_int",
                      "virtual_ipaddress", "unicast_peer", "lvs_sync_daemon_interface"},
    "virtual_server": {"lb_algo", "lvs_sched", "lb_kind", "lvs_method", "persistence_timeout",
                       "persistence_granularity", "persistence_engine", "protocol",
                       "delay_loop", "connect_timeout", "retry", "delay_before_retry",
                       "inhibit_on_failure", "weight", "quorum", "hysteresis", "sorry_server",
                       "virtualhost", "ip_family", "real_server", "ops", "sh-port",
                       "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2"},
    "real_server": {"weight", "lvs_method", "uthreshold", "lthreshold", "inhibit_on_failure",
                    "connect_timeout", "retry", "delay_before_retry", "delay_loop",
                    "virtualhost", "TCP_CHECK", "HTTP_GET", "SSL_GET"},
    "TCP_CHECK": {"connect_port", "connect_timeout", "retry", "delay_before_retry",
                  "delay_loop"},
    "HTTP_GET": {"connect_port", "connect_timeout", "retry", "nb_get_retry",
                 "delay_before_retry", "delay_loop", "virtualhost", "url"},
    "url": {"path", "digest", "status_code", "virtualhost"},
}
VALUE_BLOCKS = {"virtual_ipaddress", "unicast_peer", "virtual_server_group"}


def directives(text: str) -> list[tuple[int, list[tuple[str, int]], str]]:
    """(line, enclosing blocks as (keyword, header line), keyword) for every directive."""
    out = []
    stack: list[tuple[str, int]] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"[#!]", raw, maxsplit=1)[0]
        tokens = line.replace("{", " { ").replace("}", " } ").split()
        words: list[str] = []
        for tok in [*tokens, "\n"]:
            if tok in ("{", "}", "\n") and words:
                out.append((no, list(stack), words[0]))
                if tok == "{":
                    stack.append((words[0], no))
                words = []
            elif tok == "}":
                stack.pop()
            elif tok not in ("{", "\n"):
                words.append(tok)
    return out


@pytest.mark.parametrize("name", KEEPALIVED_FILES)
def test_every_keepalived_directive_is_imported_or_reported(name):
    """No directive is dropped silently: each one is a keyword the importer maps in its
    context, or its line (or the line of a block around it) is a reported problem."""
    text = (CORPUS / name).read_text()
    reported = {p.line_no for p in run_import(name).problems}
    for line_no, stack, word in directives(text):
        parent = stack[-1][0] if stack else ""
        if parent == "SSL_GET":
            parent = "HTTP_GET"
        covered = (
            line_no in reported
            or any(header in reported for _, header in stack)
            or parent in VALUE_BLOCKS
            or word in MAPPED.get(parent, set())
        )
        assert covered, f"{name}:{line_no}: `{word}` in {parent or 'top level'} is neither " \
                        "imported nor reported"
