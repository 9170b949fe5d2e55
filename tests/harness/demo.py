"""`make demo`: the whole project on one machine, no Docker, no cluster.

1. a real kube-apiserver + etcd on loopback (built/fetched and cached on first use)
2. the CRDs, RBAC and lvs-operator (on this host, as its ServiceAccount)
3. a qemu guest with Debian's kernel (real IPVS) holding the nodes of examples/nodes.yaml as
   network namespaces, one lvs-agent per node; the guest reaches the API server only through
   one forwarded port (qemu user networking, restrict=on)
4. `kubectl apply` of every example, `kubectl get virtualservices` once the agents report
5. bounded HTTP requests through the NAT example's VIP from the guest's client namespace,
   printing which real server answered each, and the director's `ipvsadm -Ln`

Exit status 0 only if every VirtualService became Programmed and every request was answered.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .controlplane import LocalControlPlane
from .lvs_install import REPO, HostOperator, agent_argv, agent_kubeconfig, install, programmed
from .vm import GuestVM

NODES = ("director-a", "director-b", "real-1", "real-2", "real-3")
NAT_VIP, NAT_PORT = "192.0.2.10", 80
LAB = [sys.executable, "-m", "tests.harness.guestlab"]


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def note(text: str) -> None:
    print(f"    {text}", flush=True)


def run_demo(requests: int = 12, timeout: float = 600.0) -> int:
    """Start a control plane and a guest, run the demo in them, stop them."""
    t0 = time.monotonic()
    step("starting kube-apiserver and etcd on 127.0.0.1 (first run: builds/fetches them)")
    with LocalControlPlane(log=note) as cp:
        step("booting the qemu guest (Debian kernel with IPVS), API server forwarded in")
        with GuestVM(forwards=[(6443, cp.port)], log=note) as guest:
            ok = demo_in(cp, guest, requests=requests, timeout=timeout)
    step(f"demo {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


def demo_in(cp: LocalControlPlane, guest: GuestVM, *, requests: int = 12,
            timeout: float = 600.0) -> bool:
    """The demo on a running control plane and guest (the cluster tier passes its own)."""
    ok = True
    with tempfile.TemporaryDirectory(prefix="lvs-demo-") as tmp:
        step("helm install charts/lvs-operator; lvs-operator on this host as the chart's "
             "ServiceAccount")
        operator = HostOperator(install(cp), Path(tmp) / "operator.log")
        operator.start()
        step("kubectl apply -f examples/nodes.yaml (the 5 nodes the examples are written for)")
        cp.kubectl("apply", "-f", str(REPO / "examples" / "nodes.yaml"))
        server = f"https://{guest.forward_address(cp.port)}"
        guest_kubeconfigs = {}
        for n in NODES:  # each agent as the DaemonSet's pod on its node would be
            kc = agent_kubeconfig(cp, n, server=server, path=Path(tmp) / f"agent-{n}.kubeconfig")
            guest_kubeconfigs[n] = guest.put_file(kc, kc.read_text(), 0o600)
        site = guest.spawn([*LAB, "demo"], name="site")
        agents: dict[str, int] = {}
        try:
            guest.wait_for_log(site, "READY", timeout=180)
            note("namespaces: client, " + ", ".join(NODES) + ", web-nat-1, web-nat-2")
            step(f"starting one lvs-agent per node in the guest: {', '.join(NODES)}")
            agents = {n: guest.spawn(agent_argv(n, guest_kubeconfigs[n], netns=n, interval=5,
                                                state_dir="/var/lib/lvs-demo"), name=n)
                      for n in NODES}
            step("kubectl apply -f examples/")
            names: list[str] = []  # the examples' VirtualServices (a cluster may hold others)
            for d in sorted(p for p in (REPO / "examples").iterdir() if p.is_dir()):
                out = cp.kubectl("apply", "-f", str(d)).stdout.strip()
                for line in out.splitlines():
                    note(line)
                    kind, _, rest = line.partition("/")
                    if kind == "virtualservice.lvs.dev":
                        names.append(rest.split()[0])
            step("waiting for the agents to program every VirtualService")
            deadline = time.monotonic() + timeout
            last = ""
            while True:
                done, total, waiting = programmed(cp, "default", names)
                line = f"{done}/{total} programmed"
                if line != last:
                    note(line)
                    last = line
                if total == len(names) and done == total:
                    break
                if time.monotonic() > deadline:
                    ok = False
                    note("gave up waiting: " + "; ".join(waiting))
                    break
                time.sleep(2)
            step("kubectl get virtualservices")
            print(cp.kubectl("get", "virtualservices", "-n", "default", *names).stdout,
                  flush=True)
            step("kubectl get nodeplans")
            print(cp.kubectl("get", "nodeplans").stdout, flush=True)
            step(f"{requests} HTTP requests to {NAT_VIP}:{NAT_PORT} (examples/"
                 "nat-wrr-portmap, wrr 3:1) from the guest's client namespace")
            out = guest.run([*LAB, "get", "--verbose", NAT_VIP, str(NAT_PORT), str(requests)],
                            timeout=180).stdout
            lines = out.rstrip().splitlines()
            print("\n".join(lines[:-1]), flush=True)
            answers = json.loads(lines[-1])["answers"]
            note(f"answered by: {dict(Counter(answers))}")
            if len(answers) != requests or any(a.startswith("error") for a in answers):
                ok = False
            step("ipvsadm -Ln on director-a (inside the guest)")
            print(guest.run(["ip", "netns", "exec", "director-a", "ipvsadm", "-Ln"],
                            timeout=60).stdout, flush=True)
        finally:
            for n, handle in agents.items():
                guest.kill(handle)
                if not ok:
                    note(f"agent {n} log:\n{_log_digest(guest.logs(handle))}")
            guest.kill(site)
            operator.stop()
            if not ok:
                note("operator log:\n" + operator.log(3000))
    return ok


def _log_digest(log: str, tail: int = 1500) -> str:
    """An agent's log cut for a failure report: every line that says something went wrong
    (CI output keeps the ends of a long report, not its middle), then the tail."""
    bad = [line for line in log.splitlines()
           if any(w in line.lower() for w in ("warning", "error", "cannot", "failed"))]
    head = "\n".join(bad[-20:])
    return (f"{len(bad)} warning/error line(s), the last 20:\n{head}\n...\n" if bad else "") \
        + log[-tail:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=12, help="how many requests (max 100)")
    args = p.parse_args(argv)
    return run_demo(requests=max(1, min(args.requests, 100)))


if __name__ == "__main__":
    sys.exit(main())
