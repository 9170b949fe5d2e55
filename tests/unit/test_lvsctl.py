"""lvsctl plan as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from lvs_operator.cli.lvsctl import main as lvsctl
from lvs_operator.compiler.plan import plan_from_dict, plan_to_dict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = str(ROOT / "examples")


def test_yaml_and_json_carry_the_same_plans(capsys):
    assert lvsctl(["plan", "-f", EXAMPLES]) == 0
    from_yaml = list(yaml.safe_load_all(capsys.readouterr().out))
    assert lvsctl(["plan", "-f", EXAMPLES, "--format", "json"]) == 0
    from_json = json.loads(capsys.readouterr().out)
    assert from_yaml == from_json
    assert [p["node"] for p in from_json] == ["director-a", "director-b", "real-1", "real-2", "real-3"]
    for data in from_json:  # what an agent will read back
        assert plan_to_dict(plan_from_dict(data)) == data


def test_node_filter(capsys):
    assert lvsctl(["plan", "-f", EXAMPLES, "--node", "real-2", "--format", "ipvsadm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# node real-2 (real server)")
    assert "ip addr add 192.0.2.20/32 dev lo" in out and "-A -t" not in out


def test_unknown_node_is_a_usage_error(capsys):
    assert lvsctl(["plan", "-f", EXAMPLES, "--node", "nope"]) == 2
    assert "unknown node(s) nope; known nodes: director-a" in capsys.readouterr().err


def test_invalid_manifest_exits_1_and_names_object_and_field(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: web}\n"
        "spec:\n  address: 192.0.2.10\n  ports: [{port: 80, targetPort: 8080}]\n"
        "  forwarding: {method: DR}\n  directors: {nodeSelector: {}}\n"
        "  backends: {service: {name: web}}\n")
    assert lvsctl(["plan", "-f", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "VirtualService default/web is invalid" in err
    assert "spec.ports: DR and TUN forward packets unchanged" in err


def test_conflict_exits_1_but_still_prints_the_rest(tmp_path, capsys):
    vs = ("apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: {n}}}\n"
          "spec:\n  address: {a}\n  ports: [{{port: 80}}]\n  directors: {{nodeSelector: {{}}}}\n"
          "  backends: {{realServerSelector: {{}}}}\n---\n")
    (tmp_path / "x.yaml").write_text(
        vs.format(n="a", a="192.0.2.1") + vs.format(n="b", a="192.0.2.1")
        + vs.format(n="c", a="192.0.2.2")
        + "apiVersion: v1\nkind: Node\nmetadata: {name: d}\n")
    assert lvsctl(["plan", "-f", str(tmp_path), "--format", "ipvsadm"]) == 1
    captured = capsys.readouterr()
    assert "error: VirtualService default/b: spec.ports[0]: 192.0.2.1:80/TCP is already used by VirtualService default/a" in captured.err
    assert "-A -t 192.0.2.1:80 -s wlc" in captured.out and "-A -t 192.0.2.2:80" in captured.out


def test_broken_yaml_names_the_file_and_line(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("kind: VirtualService\nspec: [\n")
    assert lvsctl(["plan", "-f", str(tmp_path)]) == 2
    assert "broken.yaml:3: not valid YAML" in capsys.readouterr().err


def test_missing_nodes_are_explained(tmp_path, capsys):
    (tmp_path / "vs.yaml").write_text((ROOT / "examples/dr-persistent/virtualservice.yaml").read_text())
    assert lvsctl(["plan", "-f", str(tmp_path)]) == 0
    assert "no Node manifests given" in capsys.readouterr().err


def test_console_scripts_are_installed():
    bindir = Path(sys.executable).parent
    out = subprocess.run([str(bindir / "lvsctl"), "plan", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--format {yaml,json,ipvsadm}" in out
    done = subprocess.run([str(bindir / "lvs-operator"), "--kubeconfig", "/nonexistent"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "cannot load the Kubernetes configuration" in done.stderr
    agent = subprocess.run([str(bindir / "lvs-agent"), "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert "--plan PLAN" in agent and "--dry-run" in agent
