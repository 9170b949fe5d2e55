"""bench-ha, detection half: how long a dead real server stays in the kernel IPVS table, and how
long a revived one stays out, with our agent's health checks and with keepalived's checker.

Inside the qemu guest (real IPVS), two identical NAT labs are built, each a director namespace
bridged to two real servers (198.51.100.11 and .12, port 80, an in-process TCP listener each):

- lab "ours": the real agent, `python -m lvs_operator.agent.main --plan FILE --node director
  --netns NS --watch --interval 30 --state-dir DIR`, applying a plan compiled from a
  VirtualService 203.0.113.10:80 with a TCP `healthCheck` on RealServer backends;
- lab "keepalived": `keepalived --check --dont-fork --namespace=NS` (the checker subsystem
  only) with an equivalent `virtual_server 203.0.113.20 80` and TCP_CHECK on both servers.

Both use the same knobs (CHECK below: connectTimeoutSeconds/connect_timeout 1, retries/retry
3, delayBeforeRetrySeconds/delay_before_retry 1, intervalSeconds/delay_loop 2). Each daemon
starts once. Then, for each of --runs runs, alternating ours/keepalived: after a random wait
(0..interval, so the stop falls at a random point of the check cycle), rs1's listener is
closed (connections are refused from then on) and the director's IPVS table is read over
netlink (NetlinkIPVS.dump) every 50 ms until rs1's destination is gone: the *detection* time.
After another random wait the listener is reopened and the time until the destination is
back is the *recovery* time.

An AF_PACKET socket in rs1's namespace timestamps every probe SYN and sees whether rs1 answered
it (SYN-ACK) or refused it (RST). That splits each time into the check schedule (when the
decisive probe came, which the random phase dominates) and the implementation's own reaction,
decisive probe -> kernel table changed (`react_down` / `react_up`, at the 50 ms poll's
resolution): the number to compare across tools with few runs. It also shows the cadence
each tool really keeps (`probe_gap_up/retry/down` vs interval/delay/interval) and how many
failed probes it took (retries + 1 expected).

Theory (refused connections, so connect_timeout never elapses): an UP server goes DOWN on the
(retries + 1)-th consecutive failure, the first one at most one interval after the stop and
the others delay_before_retry apart: detection in [retries x delay, interval + retries x
delay] = [3, 5] s (the issue's rule of thumb "interval x retries" = 6 s; a server that
silently drops SYNs adds (retries + 1) x connect_timeout). A DOWN server is checked every
interval: recovery in [0, interval].

Run it (from the host; it boots the VM itself when not already inside it):

    .venv/bin/python -m tests.harness.vm run -- .venv/bin/python bench/ha_detect.py --runs 5
    .venv/bin/python bench/ha_detect.py --runs 5         # the same

Progress lines go to stdout, the last stdout line is one JSON object:
{"check": ..., "ours": {"detect": [...], "recover": [...], ...}, "keepalived": ..., "summary"}.
Exit status 1 when a run failed (a daemon died, a destination never left or came back).
`--seed` fixes the random waits. Guest time: ~80 s for --runs 3, ~110 s for --runs 5 (TCG).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# One set of knobs for both tools, in our vocabulary and in keepalived's.
TIMEOUT, RETRIES, DELAY, INTERVAL = 1, 3, 1, 2
CHECK: dict[str, Any] = {"type": "TCP", "connectTimeoutSeconds": TIMEOUT, "retries": RETRIES,
                         "delayBeforeRetrySeconds": DELAY, "intervalSeconds": INTERVAL}
KEEPALIVED_CHECK = {"connect_timeout": TIMEOUT, "retry": RETRIES, "delay_before_retry": DELAY,
                    "delay_loop": INTERVAL}
DETECT_MIN = RETRIES * DELAY
DETECT_MAX = INTERVAL + RETRIES * DELAY  # keepalived's schedule, refused connections
DETECT_MAX_BLACKHOLE = DETECT_MAX + (RETRIES + 1) * TIMEOUT
RULE_OF_THUMB = INTERVAL * RETRIES  # "interval x retries"
RECOVER_MAX = INTERVAL

VIPS = {"ours": "203.0.113.10", "keepalived": "203.0.113.20"}
PORT = 80
DIRECTOR_IP = "198.51.100.1"
RS_IPS = ("198.51.100.11", "198.51.100.12")
POLL_S = 0.05
WAIT_SLACK_S = 20.0  # beyond the theoretical bound before a run counts as failed
START_TIMEOUT_S = 240.0  # the agent's first apply (Python start-up under TCG is slow)
WARMUP_TIMEOUT_S = 40.0
ETH_P_ALL = 0x0003  # outgoing frames only reach ETH_P_ALL taps
PACKET_OUTGOING = 4


class BenchError(RuntimeError):
    pass


def _log(text: str) -> None:
    print(text, flush=True)


def _sh(argv: list[str], stdin: str | None = None, timeout: float = 60) -> None:
    done = subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


# --------------------------------------------------------------------------- the labs


def _build_labs(prefix: str) -> dict[str, dict[str, str]]:
    """Namespaces per lab: {"dir": ..., "rs1": ..., "rs2": ...}; the same addresses in both.

        [dir] front 203.0.113.1/24 (dummy), br0 198.51.100.1/24 --- rs1 .11, rs2 .12
    """
    labs = {tool: {role: f"{prefix}-{tag}-{role}" for role in ("dir", "rs1", "rs2")}
            for tool, tag in (("ours", "a"), ("keepalived", "b"))}
    root = [f"netns add {ns}" for lab in labs.values() for ns in lab.values()]
    for lab in labs.values():
        root += [f"link add to-{r} netns {lab['dir']} type veth peer name eth0 netns {lab[r]}"
                 for r in ("rs1", "rs2")]
    _sh(["ip", "-batch", "-"], "\n".join(root) + "\n")
    for lab in labs.values():
        director = ["link set lo up", "link add br0 type bridge", "link set br0 up",
                    f"addr add {DIRECTOR_IP}/24 dev br0", "link add front type dummy",
                    "link set front up", "addr add 203.0.113.1/24 dev front"]
        for r in ("rs1", "rs2"):
            director += [f"link set to-{r} master br0", f"link set to-{r} up"]
        _sh(["ip", "-n", lab["dir"], "-batch", "-"], "\n".join(director) + "\n")
        for r, address in zip(("rs1", "rs2"), RS_IPS, strict=True):
            _sh(["ip", "-n", lab[r], "-batch", "-"],
                f"link set lo up\nlink set eth0 up\naddr add {address}/24 dev eth0\n"
                f"route add default via {DIRECTOR_IP}\n")
    return labs


def _remove_labs(prefix: str) -> None:
    names = [n for n in os.listdir("/run/netns") if n.startswith(prefix + "-")] \
        if os.path.isdir("/run/netns") else []
    if names:
        subprocess.run(["ip", "-force", "-batch", "-"], text=True, capture_output=True,
                       input="".join(f"netns del {n}\n" for n in names), timeout=60)


class _Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # a health probe: accept and close
        pass


class _Server(socketserver.TCPServer):
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # probes close with an RST


class Listener:
    """TCP 0.0.0.0:PORT inside a namespace, served from a thread of this process."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from lvs_operator.kernel.netns import entered

        with entered(self.netns):
            server = _Server(("0.0.0.0", PORT), _Quiet)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Returns once the listening socket is closed: connections are refused from then."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


@dataclass
class Probe:
    at: float  # time.monotonic() when its SYN arrived
    ok: bool | None = None  # the server's first reply: SYN-ACK (True) or RST (False)


class ProbeLog:
    """Every health probe to address:PORT seen from inside the real server's namespace (an
    AF_PACKET socket on its interface): when its SYN arrived and whether the server answered
    it with a SYN-ACK or refused it with an RST. The reply, not our clock, says whether a probe
    found the service up: no race with the moment the listener closes."""

    def __init__(self, netns: str, ifname: str, address: str) -> None:
        from lvs_operator.kernel.netns import entered

        with entered(netns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind((ifname, ETH_P_ALL))
        self._sock.settimeout(0.2)
        self._addr = socket.inet_aton(address)
        self.probes: list[Probe] = []
        self._pending: dict[bytes, Probe] = {}  # client address + port -> its probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame, where = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or len(ip) < 20 or ip[9] != socket.IPPROTO_TCP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            if len(ip) < ihl + 14:
                continue
            sport, dport = struct.unpack_from("!HH", ip, ihl)
            flags = ip[ihl + 13]
            syn, ack, rst = flags & 0x02, flags & 0x10, flags & 0x04
            if where[2] != PACKET_OUTGOING:
                if ip[16:20] == self._addr and dport == PORT and syn and not ack:
                    probe = Probe(now)
                    self.probes.append(probe)
                    self._pending[ip[12:16] + ip[ihl:ihl + 2]] = probe
            elif ip[12:16] == self._addr and sport == PORT:
                probe_or_none = self._pending.pop(ip[16:20] + ip[ihl + 2:ihl + 4], None)
                if probe_or_none is not None:
                    probe_or_none.ok = bool(syn and ack) and not rst

    def between(self, start: float, end: float) -> list[Probe]:
        return [p for p in list(self.probes) if start < p.at <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


# --------------------------------------------------------------------------- the daemons


def _plan(path: Path) -> None:
    """The director's plan, compiled from manifests as the operator would."""
    from lvs_operator.api.objects import parse_manifest
    from lvs_operator.compiler.engine import compile_cluster
    from lvs_operator.compiler.plan import plan_to_dict

    def node(name: str, **labels: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}

    def real_server(name: str, address: str) -> dict[str, Any]:
        return {"apiVersion": "lvs.dev/v1alpha1", "kind": "RealServer",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"address": address}}

    docs = [node("director", **{"lvs.dev/director": "true"}), node("rs1"), node("rs2"),
            {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
             "metadata": {"name": "web", "namespace": "default"},
             "spec": {"address": VIPS["ours"], "ports": [{"port": PORT, "protocol": "TCP"}],
                      "scheduler": {"name": "rr"}, "healthCheck": dict(CHECK),
                      "directors": {"nodeSelector": {"matchLabels": {"lvs.dev/director": "true"}}},
                      "backends": {"realServerSelector": {"matchLabels": {"app": "web"}}}}},
            real_server("r1", RS_IPS[0]), real_server("r2", RS_IPS[1])]
    objects = [o for o in (parse_manifest(d) for d in docs) if o is not None]
    result = compile_cluster(objects)
    errors = [str(i) for i in result.all_issues() if i.severity == "Error"]
    if errors:
        raise BenchError(f"the plan does not compile: {errors}")
    path.write_text(json.dumps([plan_to_dict(result.plans["director"])]))


def _keepalived_conf() -> str:
    k = KEEPALIVED_CHECK
    servers = "".join(
        f"    real_server {a} {PORT} {{\n        weight 1\n        TCP_CHECK {{\n"
        f"            connect_timeout {k['connect_timeout']}\n            retry {k['retry']}\n"
        f"            delay_before_retry {k['delay_before_retry']}\n        }}\n    }}\n"
        for a in RS_IPS)
    return (f"global_defs {{\n    router_id ha_detect\n}}\n"
            f"virtual_server {VIPS['keepalived']} {PORT} {{\n    delay_loop {k['delay_loop']}\n"
            f"    lb_algo rr\n    lb_kind NAT\n    protocol TCP\n{servers}}}\n")


@dataclass
class Daemon:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_timeout: float = 30.0

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # keepalived's checker child shares the session: make sure nothing is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode


# --------------------------------------------------------------------------- measuring


@dataclass
class Lab:
    tool: str
    netns: dict[str, str]
    daemon: Daemon
    vip: str
    rs1: Listener
    rs2: Listener
    probes: ProbeLog
    ipvs: Any  # NetlinkIPVS
    runs: list[dict[str, float | int | None]] = field(default_factory=list)

    def has_rs(self, address: str) -> bool:
        for live in self.ipvs.dump():
            key = live.service.key
            if key.address == self.vip and key.port == PORT and key.protocol == "tcp":
                return any(d.dest.address == address and d.dest.port == PORT
                           for d in live.destinations)
        return False

    def has_all(self, addresses: tuple[str, ...]) -> bool:
        return all(self.has_rs(a) for a in addresses)

    def warm(self) -> bool:
        return sum(1 for p in self.probes.probes if p.ok) >= 2 and self.has_rs(RS_IPS[0])

    def wait(self, check: Callable[[], bool], seconds: float, what: str) -> float:
        """time.monotonic() when check() first held, polled every POLL_S; bounded."""
        deadline = time.monotonic() + seconds
        polls = 0
        while time.monotonic() < deadline and polls < int(seconds / POLL_S) + 10:
            polls += 1
            if check():
                return time.monotonic()
            if not self.daemon.alive():
                raise BenchError(f"{self.tool}: {self.daemon.name} exited "
                                 f"({self.daemon.proc.returncode if self.daemon.proc else '?'})"
                                 f" while waiting for {what}")
            time.sleep(POLL_S)
        raise BenchError(f"{self.tool}: timed out after {seconds:.0f} s waiting for {what}")


def _stop(daemon: Daemon) -> None:
    _log(f"{daemon.name}: stopped, exit status {daemon.stop()}")


def _one_run(lab: Lab, rng: random.Random) -> dict[str, float | int | None]:
    rs1 = RS_IPS[0]
    if not lab.has_rs(rs1):
        raise BenchError(f"{lab.tool}: rs1 is not in the table before the run")
    time.sleep(rng.uniform(0, INTERVAL))
    lab.rs1.stop()
    t0 = time.monotonic()
    gone = lab.wait(lambda: not lab.has_rs(rs1), DETECT_MAX_BLACKHOLE + WAIT_SLACK_S,
                    "rs1 to leave the IPVS table")
    time.sleep(rng.uniform(0, INTERVAL))
    lab.rs1.start()
    t1 = time.monotonic()
    back = lab.wait(lambda: lab.has_rs(rs1), RECOVER_MAX + WAIT_SLACK_S,
                    "rs1 to come back into the IPVS table")
    time.sleep(0.2)  # let the sniffer see everything up to `back`
    seen = lab.probes.between(t0 - 3 * INTERVAL, back)
    oks = [p.at for p in seen if p.ok and p.at <= gone]
    last_ok = oks[-1] if oks else None
    # the failures that took it out: after its last success, up to the table change
    failed = [p.at for p in seen if p.ok is False and (last_ok or 0) < p.at <= gone]
    down = [p.at for p in seen if gone < p.at <= back and p.ok is False]
    revived = [p.at for p in seen if p.ok and t1 < p.at <= back]
    gaps = [b - a for a, b in itertools.pairwise(failed)]
    # while DOWN: the decisive failure, the failures after it, the success that revives it
    down_gaps = [b - a for a, b in itertools.pairwise([*failed[-1:], *down, *revived[:1]])]
    return {
        "detect": gone - t0,
        "recover": back - t1,
        "react_down": gone - failed[-1] if failed else None,
        "react_up": back - revived[0] if revived else None,
        "failed_probes": len(failed),
        "probe_gap_up": failed[0] - last_ok if failed and last_ok is not None else None,
        "probe_gap_retry": statistics.median(gaps) if gaps else None,
        "probe_gap_down": statistics.median(down_gaps) if down_gaps else None,
    }


def _values(runs: list[dict[str, float | int | None]], key: str) -> list[float]:
    return [float(v) for r in runs if (v := r[key]) is not None]


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _report(labs: dict[str, Lab]) -> dict[str, Any]:
    keys = ("detect", "recover", "react_down", "react_up", "failed_probes", "probe_gap_up",
            "probe_gap_retry", "probe_gap_down")
    out: dict[str, Any] = {
        "check": {"ours": CHECK, "keepalived": KEEPALIVED_CHECK,
                  "bounds_s": {"detect_min": DETECT_MIN, "detect_max": DETECT_MAX,
                               "detect_max_if_syns_dropped": DETECT_MAX_BLACKHOLE,
                               "interval_x_retries": RULE_OF_THUMB, "recover_max": RECOVER_MAX},
                  "formula": "detect in [retries*delay_before_retry, delay_loop + "
                             "retries*delay_before_retry] (+ (retries+1)*connect_timeout "
                             "if SYNs are dropped); recover in [0, delay_loop]",
                  "poll_s": POLL_S},
    }
    summary: dict[str, Any] = {}
    for tool, lab in labs.items():
        out[tool] = {k: [v if (v := r[k]) is None or isinstance(v, int) else round(v, 3)
                         for r in lab.runs] for k in keys}
        summary[tool] = {k: _stats(_values(lab.runs, k)) for k in keys}
        summary[tool]["detect_within_bound"] = sum(
            1 for v in _values(lab.runs, "detect") if v <= DETECT_MAX + POLL_S * 2)
        summary[tool]["recover_within_bound"] = sum(
            1 for v in _values(lab.runs, "recover") if v <= RECOVER_MAX + POLL_S * 2)
        summary[tool]["runs"] = len(lab.runs)
    if "ours" in summary and "keepalived" in summary:
        summary["ratio_ours_vs_keepalived"] = {
            k: _ratio(summary["ours"][k]["median"], summary["keepalived"][k]["median"])
            for k in ("detect", "recover", "react_down", "react_up")}
    out["summary"] = summary
    return out


def _fmt(v: float | int | None, unit: str = " s") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def _progress(i: int, n: int, tool: str, r: dict[str, float | int | None]) -> None:
    _log(f"run {i}/{n} {tool}: detected in {_fmt(r['detect'])} ({r['failed_probes']} failed "
         f"probes, the last {_fmt(r['react_down'])} before), recovered in {_fmt(r['recover'])} "
         f"({_fmt(r['react_up'])} after the successful probe)")


def measure(runs: int, seed: int, workdir: Path) -> dict[str, Any]:
    from lvs_operator.kernel.real_ipvs import NetlinkIPVS

    prefix = f"had{os.getpid() % 100000}"
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_labs, prefix)
        t = time.monotonic()
        netns = _build_labs(prefix)
        plan = workdir / "plan.json"
        _plan(plan)
        conf = workdir / "keepalived.conf"
        conf.write_text(_keepalived_conf())
        daemons = {
            "ours": Daemon("lvs-agent", [
                sys.executable, "-m", "lvs_operator.agent.main", "--plan", str(plan),
                "--node", "director", "--netns", netns["ours"]["dir"], "--watch",
                "--interval", "30", "--state-dir", str(workdir / "state")],
                workdir / "agent.log"),
            "keepalived": Daemon("keepalived", [
                "keepalived", "--check", "--dont-fork", "--log-console", "--no-syslog",
                f"--use-file={conf}", f"--pid={workdir / 'keepalived.pid'}",
                f"--checkers_pid={workdir / 'checkers.pid'}",
                f"--namespace={netns['keepalived']['dir']}"], workdir / "keepalived.log",
                stop_timeout=15.0),
        }
        labs: dict[str, Lab] = {}
        for tool, ns in netns.items():
            rs1, rs2 = Listener(ns["rs1"]), Listener(ns["rs2"])
            rs1.start()
            stack.callback(rs1.stop)
            rs2.start()
            stack.callback(rs2.stop)
            probes = ProbeLog(ns["rs1"], "eth0", RS_IPS[0])
            stack.callback(probes.close)
            ipvs = stack.enter_context(NetlinkIPVS(ns["dir"]))
            labs[tool] = Lab(tool, ns, daemons[tool], VIPS[tool], rs1, rs2, probes, ipvs)
        _log(f"labs ready in {time.monotonic() - t:.1f} s; starting lvs-agent and keepalived")
        try:
            for d in daemons.values():
                stack.callback(_stop, d)
                d.start()
            started = time.monotonic()
            ready: dict[str, float] = {}

            def all_ready() -> bool:
                for tool, lab in labs.items():
                    if tool not in ready and lab.has_all(RS_IPS):
                        ready[tool] = time.monotonic()
                        _log(f"{tool}: both destinations in the table "
                             f"{ready[tool] - started:.1f} s after start")
                    elif not lab.daemon.alive():
                        raise BenchError(f"{lab.daemon.name} exited at start-up")
                return len(ready) == len(labs)

            labs["ours"].wait(all_ready, START_TIMEOUT_S, "both destinations in both tables")
            for lab in labs.values():  # a success since start: the retry count is reset
                lab.wait(lab.warm, WARMUP_TIMEOUT_S, "two probes of rs1")
            _log(f"check: {json.dumps(CHECK)}; detection bound {DETECT_MIN:g}..{DETECT_MAX:g} s "
                 f"(interval x retries = {RULE_OF_THUMB:g} s), recovery bound {RECOVER_MAX:g} s")
            for i in range(1, runs + 1):
                for tool in ("ours", "keepalived"):
                    lab = labs[tool]
                    lab.runs.append(_one_run(lab, rng))
                    _progress(i, runs, tool, lab.runs[-1])
        except BaseException:
            for d in daemons.values():
                print(f"--- {d.name} log (last lines):\n{d.tail()}", file=sys.stderr)
            raise
        return _report(labs)
    raise AssertionError("unreachable")


def _run_in_vm(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.harness.vm import run_in_vm

    return run_in_vm([sys.executable, str(Path(__file__).resolve()), *argv], timeout=900)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: daemons and namespaces go


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per tool (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random waits")
    args = parser.parse_args()
    if args.runs < 1 or args.runs > 100:
        parser.error("--runs must be 1..100")
    if os.environ.get("LVS_IN_VM") != "1":
        print(">> ha_detect: the host has no IPVS; running in the VM", flush=True)
        return _run_in_vm(sys.argv[1:])
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ha-detect-") as tmp:
        try:
            result = measure(args.runs, args.seed, Path(tmp))
        except BenchError as exc:
            print(f"ha_detect: {exc}", file=sys.stderr)
            return 1
    result["seconds"] = round(time.monotonic() - started, 1)
    s = result["summary"]
    for tool in ("ours", "keepalived"):
        d, r = s[tool]["detect"], s[tool]["recover"]
        _log(f"{tool}: detect median {_fmt(d['median'])} max {_fmt(d['max'])}; recover median "
             f"{_fmt(r['median'])} max {_fmt(r['max'])}; reaction down/up median "
             f"{_fmt(s[tool]['react_down']['median'])}/{_fmt(s[tool]['react_up']['median'])}")
    _log(f"ours/keepalived (medians): {json.dumps(s['ratio_ours_vs_keepalived'])}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
