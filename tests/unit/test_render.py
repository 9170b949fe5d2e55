"""ipvsadm-save rendering: golden output for the examples, and ipvsadm's own quirks."""

from __future__ import annotations

import os
from pathlib import Path

from lvs_operator.cli.lvsctl import main as lvsctl
from lvs_operator.compiler.plan import Destination, IPVSService, ServiceKey
from lvs_operator.compiler.render import ipvsadm_save, render_ipvsadm

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "examples.ipvsadm"


def test_examples_match_hand_checked_golden(capsys):
    """Regenerate with LVS_UPDATE_GOLDEN=1, then read the diff line by line before committing."""
    assert lvsctl(["plan", "-f", str(ROOT / "examples"), "--format", "ipvsadm"]) == 0
    out = capsys.readouterr().out
    if os.environ.get("LVS_UPDATE_GOLDEN"):
        GOLDEN.write_text(out)
    assert out == GOLDEN.read_text()


def _svc(address: str, port: int = 80, proto: str = "tcp", fwmark: int = 0,
         dests: tuple[Destination, ...] = ()) -> IPVSService:
    family = 6 if ":" in address else 4
    if fwmark:
        return IPVSService(ServiceKey(family, "", "", 0, fwmark), "rr", destinations=dests)
    return IPVSService(ServiceKey(family, proto, address, port, 0), "rr", destinations=dests)


def test_service_order_is_fwmark_family_protocol_address_port():
    services = [
        _svc("192.0.2.1", fwmark=2), _svc("192.0.2.1", fwmark=1), _svc("2001:db8::1"),
        _svc("192.0.2.9", proto="udp"), _svc("192.0.2.9", proto="sctp"), _svc("192.0.2.10"),
        _svc("192.0.2.9", port=443), _svc("192.0.2.9", port=80),
    ]
    heads = [line for line in ipvsadm_save(services) if line.startswith("-A")]
    assert heads == [
        "-A -t 192.0.2.9:80 -s rr", "-A -t 192.0.2.9:443 -s rr", "-A -t 192.0.2.10:80 -s rr",
        "-A -u 192.0.2.9:80 -s rr", "-A --sctp-service 192.0.2.9:80 -s rr",
        "-A -t [2001:db8::1]:80 -s rr", "-A -f 1 -s rr", "-A -f 2 -s rr",
    ]


def test_address_compare_wraps_like_ipvsadms_signed_subtraction():
    # ipvsadm computes ntohl(a) - ntohl(b) into an int: addresses more than 2^31 apart
    # compare "backwards", so 203.0.113.1 (0xCB...) sorts before 10.0.0.1 (0x0A...).
    d = (Destination("10.0.0.1", 80, "masq", 1), Destination("203.0.113.1", 80, "masq", 1))
    lines = ipvsadm_save([_svc("192.0.2.1", dests=d)])
    assert [line.split(" -r ")[1].split()[0] for line in lines[1:]] == [
        "203.0.113.1:80", "10.0.0.1:80"]


def test_tunnel_lines_match_ipvsadm_print_tunnel_rule():
    d = (
        Destination("203.0.113.1", 80, "tunnel", 1, tunnel_type="ipip"),
        Destination("203.0.113.2", 80, "tunnel", 2, tunnel_type="gue", tunnel_port=6080,
                    tunnel_checksum="remcsum"),
        Destination("203.0.113.3", 80, "tunnel", 3, tunnel_type="gre", tunnel_checksum="none",
                    upper_threshold=10),
    )
    assert ipvsadm_save([_svc("192.0.2.1", dests=d)])[1:] == [
        "-a -t 192.0.2.1:80 -r 203.0.113.1:80 -i -w 1 --tun-type ipip",
        "-a -t 192.0.2.1:80 -r 203.0.113.2:80 -i -w 2 --tun-type gue --tun-port 6080 --tun-remcsum",
        "-a -t 192.0.2.1:80 -r 203.0.113.3:80 -i -w 3 --tun-type gre --tun-nocsum -x 10",
    ]


def test_empty_plans_render_nothing():
    from lvs_operator.compiler.plan import NodePlan

    assert render_ipvsadm([NodePlan("idle")]) == ""
