"""The guest side of GuestVM's control channel: runs commands in the VM for the host.

It connects to 10.0.2.100:PORT (a guestfwd relay to the host's listener), says hello with the
token it was given, then serves newline-delimited JSON requests on that one connection, each
in its own thread so a long `run` never blocks a `kill`:

    {"id": 7, "op": "run", "argv": [...], "env": {...}, "cwd": null, "timeout": 60,
     "input": null}
    -> {"id": 7, "ok": true, "result": {"returncode": 0, "stdout": "...", "stderr": "..."}}
    -> {"id": 7, "ok": false, "error": "..."}

When the host says `shutdown` or the connection ends (the host went away), it stops every
process it started and exits; init.sh then powers the VM off.

Only the standard library, and started as a script (not `-m tests...`), because every import
costs about ten times more under TCG than on the host.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

LOG_DIR = "/run/lvs-guest"  # tmpfs in the guest: logs of spawned processes
CONNECT_TIMEOUT = 60.0
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when the worker exits


def say(message: str) -> None:
    """Diagnostics go to the console, which the host keeps in its console log."""
    print(f"guest-worker: {message}", file=sys.stderr, flush=True)


class Worker:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.spawned: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
        self.running: set[subprocess.Popen[bytes]] = set()  # `run` commands in flight
        self.next_handle = 1
        self.done = threading.Event()

    # ------------------------------------------------------------------ plumbing

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.send_lock:
            self.sock.sendall(data)

    def serve(self) -> None:
        reader = self.sock.makefile("rb")
        for line in reader:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError as exc:
                say(f"bad request line ({exc}): {line[:200]!r}")
                continue
            threading.Thread(target=self.handle, args=(request,), daemon=True).start()
            if request.get("op") == "shutdown":
                # Let its handler stop everything and answer before the worker exits.
                self.done.wait(timeout=STOP_GRACE * 3)
                break

    def handle(self, request: dict[str, Any]) -> None:
        rid = request.get("id")
        op = request.get("op", "")
        method = getattr(self, f"op_{op}", None)
        try:
            if method is None:
                raise ValueError(f"unknown op {op!r}")
            result = method(request)
            reply: dict[str, Any] = {"id": rid, "ok": True, "result": result}
        except Exception as exc:  # every failure goes back to the host, with its type
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            self.send(reply)
        except OSError as exc:
            say(f"cannot answer request {rid} ({op}): {exc}")
        if op == "shutdown":
            self.done.set()

    @staticmethod
    def env(request: dict[str, Any]) -> dict[str, str]:
        return {**os.environ, **(request.get("env") or {})}

    # ------------------------------------------------------------------ operations

    def op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "kernel": os.uname().release}

    def op_run(self, request: dict[str, Any]) -> dict[str, Any]:
        given = request.get("input")
        proc = subprocess.Popen(
            request["argv"], env=self.env(request), cwd=request.get("cwd"),
            stdin=subprocess.PIPE if given is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        with self.lock:
            self.running.add(proc)
        timed_out = False
        try:
            try:
                out, err = proc.communicate(
                    given.encode() if given is not None else None, timeout=request["timeout"]
                )
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc, signal.SIGKILL)
                out, err = proc.communicate()
        finally:
            with self.lock:
                self.running.discard(proc)
        return {
            "returncode": proc.returncode,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
            "timed_out": timed_out,
        }

    def op_spawn(self, request: dict[str, Any]) -> dict[str, Any]:
        os.makedirs(LOG_DIR, exist_ok=True)
        with self.lock:
            handle = self.next_handle
            self.next_handle += 1
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in request.get("name") or "")
        log_path = f"{LOG_DIR}/{handle}-{name or os.path.basename(request['argv'][0])}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                request["argv"], env=self.env(request), cwd=request.get("cwd"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self.lock:
            self.spawned[handle] = (proc, log_path)
        return {"handle": handle, "pid": proc.pid, "log": log_path}

    def _spawned(self, request: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
        with self.lock:
            found = self.spawned.get(request["handle"])
        if found is None:
            raise KeyError(f"no process with handle {request['handle']}")
        return found

    def op_kill(self, request: dict[str, Any]) -> dict[str, Any]:
        proc, _ = self._spawned(request)
        if proc.poll() is None:
            kill_group(proc, request.get("signal", signal.SIGTERM))
        try:
            status: int | None = proc.wait(timeout=request.get("wait", 10))
        except subprocess.TimeoutExpired:
            status = None
        return {"status": status}

    def op_alive(self, request: dict[str, Any]) -> dict[str, Any]:
        proc, _ = self._spawned(request)
        return {"alive": proc.poll() is None, "status": proc.returncode}

    def op_logs(self, request: dict[str, Any]) -> dict[str, Any]:
        _, log_path = self._spawned(request)
        with open(log_path, "rb") as fh:
            return {"text": fh.read().decode(errors="replace"), "path": log_path}

    def op_read_file(self, request: dict[str, Any]) -> dict[str, Any]:
        with open(request["path"], "rb") as fh:
            return {"data": base64.b64encode(fh.read()).decode()}

    def op_put_file(self, request: dict[str, Any]) -> dict[str, Any]:
        path = request["path"]
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.put-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as fh:
            fh.write(base64.b64decode(request["data"]))
        os.chmod(tmp, request.get("mode", 0o644))
        os.replace(tmp, path)
        return {}

    def op_shutdown(self, request: dict[str, Any]) -> dict[str, Any]:
        stopped = self.stop_all()
        say(f"shutdown asked; stopped {stopped} process group(s)")
        return {"stopped": stopped}

    def stop_all(self) -> int:
        """SIGTERM every process group we started, SIGKILL what is left after STOP_GRACE."""
        with self.lock:
            procs = [p for p, _ in self.spawned.values()] + list(self.running)
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)
                proc.wait(timeout=STOP_GRACE)
        return len(live)


def kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process group (each command is a session leader); the leader if gone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def connect(address: str, token: str) -> socket.socket:
    """Connect to the host (bounded retries: eth0 may need a moment) and say hello."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=10)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                message = f"guest-worker: cannot reach the host at {address}: {exc}"
                raise SystemExit(message) from None
            time.sleep(0.2)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall((json.dumps({"hello": token, "pid": os.getpid()}) + "\n").encode())
    return sock


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "--connect" or argv[2] != "--token":
        print("usage: guest_worker.py --connect HOST:PORT --token TOKEN", file=sys.stderr)
        return 2
    sock = connect(argv[1], argv[3])
    say(f"connected to {argv[1]} (pid {os.getpid()})")
    worker = Worker(sock)
    try:
        worker.serve()
    except OSError as exc:
        say(f"control connection failed: {exc}")
    stopped = worker.stop_all()
    say(f"exiting; stopped {stopped} more process group(s)" if stopped else "exiting")
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
