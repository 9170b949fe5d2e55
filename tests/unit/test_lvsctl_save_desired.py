"""`lvsctl save -f PATH...` prints the desired table in ipvsadm-save form: exactly the IPVS
section of `lvsctl plan --format ipvsadm`, per director, and it imports back unchanged."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from lvs_operator.cli import lvsctl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = lvsctl.main(list(argv))
    return code, out.getvalue()


def _ipvs_sections(plan_text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    node, inside = "", False
    for line in plan_text.splitlines():
        if line.startswith("# node "):
            node, inside = line.split()[2], False
        elif line.startswith("# ipvsadm -S -n"):
            inside = True
            sections[node] = []
        elif line.startswith("#"):
            inside = False
        elif inside and line.strip():
            sections[node].append(line)
    return sections


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_save_of_manifests_is_the_ipvs_half_of_plan(example: str) -> None:
    files = ["-f", str(EXAMPLES / "nodes.yaml"), "-f", str(EXAMPLES / example)]
    code, saved = _run("save", *files)
    assert code == 0
    plan_code, plan = _run("plan", *files, "--format", "ipvsadm")
    assert plan_code == 0
    expected = {n: lines for n, lines in _ipvs_sections(plan).items() if lines}
    got: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("# node "):
            node = line.split()[2]
            got[node] = []
        else:
            got[node].append(line)
    assert got == expected
    assert got, "every example has a director"


def test_save_of_one_director_and_an_unknown_node() -> None:
    files = ["-f", str(EXAMPLES / "nodes.yaml"), "-f", str(EXAMPLES / "nat-wrr-portmap")]
    code, saved = _run("save", *files, "--node", "director-b")
    assert code == 0
    assert saved.splitlines()[0] == "# node director-b"
    assert "# node director-a" not in saved
    assert _run("save", *files, "--node", "nowhere")[0] == lvsctl.EXIT_USAGE
