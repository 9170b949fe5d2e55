"""A VM that stays up while host-side code drives it: commands, background processes, files.

The `cluster` tier runs kube-apiserver, etcd and the operator on the host and the node agents
in the guest (the host kernel has no IPVS). GuestVM boots the VM once, in a background thread,
with guest_worker.py as the guest's command; the worker connects back to a loopback listener
here through a guestfwd relay and serves requests on that one connection::

    with GuestVM(forwards=[(6443, apiserver_port)]) as vm:
        vm.run(["ipvsadm", "-Ln"]).stdout
        agent = vm.spawn([python, "-m", "lvs_operator.agent.main", ...], name="agent-a")
        vm.logs(agent); vm.kill(agent)

The guest reaches the host only through the forwards given here (qemu user networking with
restrict=on): a connection to 10.0.2.100:G reaches host 127.0.0.1:H for each (G, H).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._image import log as harness_log
from ._image import prepare
from ._run import FORWARD_ADDR, VmRun
from ._run import run as run_vm

CTL_GUEST_PORT = 65000  # guest side of the control channel's forward; not for user forwards
WORKER = Path(__file__).with_name("guest_worker.py")
BOOT_TIMEOUT = 300.0  # boot to worker connected; ~5-10 s under TCG here
CALL_SLACK = 30.0  # added to a guest-side timeout before the host gives up on an answer
OUTPUT_IN_ERRORS = 4000  # characters of stdout/stderr kept in a GuestError message


class GuestError(RuntimeError):
    """The guest could not do what was asked; the message says what, and its output."""


def _clip(text: str) -> str:
    text = text.rstrip()
    if len(text) <= OUTPUT_IN_ERRORS:
        return text or "(empty)"
    return f"[... {len(text) - OUTPUT_IN_ERRORS} characters cut]\n" + text[-OUTPUT_IN_ERRORS:]


def _free_loopback_listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener


class GuestVM:
    """One booted VM and its control channel. Every call is bounded and raises GuestError.

    ``forwards``: (guest port, host port) pairs, fixed at boot. ``env``: added to the guest
    environment of every command (on top of _run.guest_env). ``timeout``: the VM's whole life;
    qemu is killed after it.
    """

    guest_ip = FORWARD_ADDR

    def __init__(
        self,
        forwards: Sequence[tuple[int, int]] = (),
        *,
        memory_mb: int = 2048,
        timeout: float = 1800,
        env: Mapping[str, str] | None = None,
        boot_timeout: float = BOOT_TIMEOUT,
        log: Callable[[str], None] = harness_log,
    ) -> None:
        self.forwards = [(int(g), int(h)) for g, h in forwards]
        if any(g == CTL_GUEST_PORT for g, _ in self.forwards):
            raise ValueError(f"guest port {CTL_GUEST_PORT} is the control channel's")
        if len({g for g, _ in self.forwards}) != len(self.forwards):
            raise ValueError(f"a guest port is forwarded twice: {self.forwards}")
        self.memory_mb = memory_mb
        self.timeout = timeout
        self.env = dict(env or {})
        self.boot_timeout = boot_timeout
        self.log = log
        self.boot_seconds: float | None = None  # start() to the worker's hello
        self.console_log = Path()
        self._workdir: Path | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._vm_result: VmRun | None = None
        self._vm_error: BaseException | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._closed: str | None = None  # why the channel is gone, once it is
        self._names: dict[int, str] = {}

    # ------------------------------------------------------------------ life cycle

    def start(self) -> GuestVM:
        """Boot the VM and wait until the worker in it is connected (bounded by boot_timeout).

        VmSetupError (from prepare(): no qemu, no kernel) is raised as is, before any boot.
        """
        if self._thread is not None:
            return self
        prepare()
        t0 = time.monotonic()
        self._workdir = Path(tempfile.mkdtemp(prefix="lvs-guest-"))
        self.console_log = self._workdir / "console.log"
        listener = _free_loopback_listener()
        token = secrets.token_hex(16)
        port = int(listener.getsockname()[1])
        argv = [sys.executable, "-S", "-u", str(WORKER),
                "--connect", f"{FORWARD_ADDR}:{CTL_GUEST_PORT}", "--token", token]
        forwards = [*self.forwards, (CTL_GUEST_PORT, port)]
        self._thread = threading.Thread(target=self._boot, args=(argv, forwards),
                                        name="lvs-guest-vm", daemon=True)
        atexit.register(self.stop)
        self._thread.start()
        try:
            self._sock = self._accept(listener, token, t0)
        except BaseException:
            self.stop()
            raise
        finally:
            listener.close()
        self.boot_seconds = time.monotonic() - t0
        self._reader = threading.Thread(target=self._read_replies, name="lvs-guest-reader",
                                        daemon=True)
        self._reader.start()
        self.log(f"guest ready in {self.boot_seconds:.1f} s (console log {self.console_log})")
        return self

    def stop(self) -> None:
        """Ask the worker to stop its processes and exit (the VM powers off); kill qemu if not."""
        if self._thread is None:
            return
        atexit.unregister(self.stop)
        if self._sock is not None and self._closed is None:
            try:
                self._call("shutdown", {}, wait=20)
                self._thread.join(timeout=30)  # the guest syncs and powers off
            except GuestError as exc:
                self.log(f"guest did not shut down cleanly: {exc}")
        if self._thread.is_alive():
            self.log("killing qemu" if self._sock is None else
                     "the VM did not power off; killing qemu")
            self._stop_event.set()
            self._thread.join(timeout=30)
        self._close_channel("the VM was stopped")
        self._thread = None
        result = self._vm_result
        clean = result is not None and result.status == 0 and not result.timed_out
        if not clean:
            self.log(f"the VM did not end cleanly ({self._vm_ended().splitlines()[0]}); "
                     f"console:\n{self.console()}")
        if self._workdir is not None:
            if os.environ.get("LVS_VM_KEEP") == "1" or not clean:
                self.log(f"kept {self._workdir} (console log)")
            else:
                with contextlib.suppress(OSError):
                    self.console_log.unlink()
                    self._workdir.rmdir()
            self._workdir = None

    def __enter__(self) -> GuestVM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def result(self) -> VmRun | None:
        """How the VM run ended (status 0: the worker exited normally); None while it runs."""
        return self._vm_result

    def console(self, lines: int = 60) -> str:
        """The last lines of the guest's console (the worker's stderr, the harness's notes)."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ guest API

    def forward_address(self, host_port: int) -> str:
        """"10.0.2.100:G": where the guest reaches host 127.0.0.1:host_port."""
        for g, h in self.forwards:
            if h == host_port:
                return f"{FORWARD_ADDR}:{g}"
        raise GuestError(f"no forward to host port {host_port} (forwards: {self.forwards})")

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        check: bool = True,
        input: str | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the guest to completion; stdout/stderr as text (undecodable bytes
        replaced). A timeout always raises (the process group is killed); a non-zero status
        raises when check is set."""
        args = [str(a) for a in argv]
        result = self._call("run", {"argv": args, "env": dict(env or {}), "cwd": cwd,
                                    "timeout": timeout, "input": input},
                            wait=timeout + CALL_SLACK)
        done = subprocess.CompletedProcess(args, int(result["returncode"]),
                                           str(result["stdout"]), str(result["stderr"]))
        if result["timed_out"]:
            raise GuestError(self._describe(f"timed out after {timeout:.0f} s (killed)", done))
        if check and done.returncode != 0:
            raise GuestError(self._describe(f"exited {done.returncode}", done))
        return done

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        cwd: str | None = None,
    ) -> int:
        """Start argv in the background (its own session; stdout+stderr to a guest log file).

        Returns a handle for kill/alive/logs. The worker stops it when the VM stops.
        """
        args = [str(a) for a in argv]
        result = self._call("spawn", {"argv": args, "env": dict(env or {}), "cwd": cwd,
                                      "name": name})
        handle = int(result["handle"])
        self._names[handle] = name or args[0]
        return handle

    def kill(self, handle: int, signal: int = signal.SIGTERM, wait: float = 10) -> int | None:
        """Send signal to the process group; its exit status (negative: killed by a signal),
        or None if it is still running after `wait` seconds."""
        result = self._call("kill", {"handle": handle, "signal": int(signal), "wait": wait},
                            wait=wait + CALL_SLACK)
        status = result["status"]
        return None if status is None else int(status)

    def alive(self, handle: int) -> bool:
        return bool(self._call("alive", {"handle": handle})["alive"])

    def exit_status(self, handle: int) -> int | None:
        """The exit status of a spawned process, None while it runs."""
        status = self._call("alive", {"handle": handle})["status"]
        return None if status is None else int(status)

    def logs(self, handle: int) -> str:
        """Everything the spawned process wrote so far (stdout and stderr interleaved)."""
        return str(self._call("logs", {"handle": handle})["text"])

    def wait_for_log(self, handle: int, text: str, timeout: float = 60) -> str:
        """Poll logs(handle) until it contains text; raise (with the log) after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.logs(handle)
            if text in current:
                return current
            if not self.alive(handle):
                current = self.logs(handle)
                if text in current:
                    return current
                raise GuestError(f"{self._names.get(handle, handle)} exited "
                                 f"({self.exit_status(handle)}) before logging {text!r}; "
                                 f"log:\n{_clip(current)}")
            if time.monotonic() > deadline:
                raise GuestError(f"{self._names.get(handle, handle)} did not log {text!r} in "
                                 f"{timeout:.0f} s; log:\n{_clip(current)}")
            time.sleep(0.2)

    def read_file(self, path: str) -> str:
        """A guest file's text (undecodable bytes replaced)."""
        data = self._call("read_file", {"path": str(path)})["data"]
        return base64.b64decode(data).decode(errors="replace")

    def put_file(self, path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> str:
        """Write a file in the guest (parents created; atomic rename); returns the guest path.

        Use this for anything made after boot: host files written under /tmp later may not show
        in the guest (its /tmp is an overlay over a 9p mount with cache=loose).
        """
        raw = data.encode() if isinstance(data, str) else data
        self._call("put_file", {"path": str(path), "mode": mode,
                                "data": base64.b64encode(raw).decode()})
        return str(path)

    # ------------------------------------------------------------------ internals

    def _boot(self, argv: list[str], forwards: list[tuple[int, int]]) -> None:
        try:
            with open(self.console_log, "wb") as console:
                self._vm_result = run_vm(argv, env=self.env, timeout=self.timeout,
                                         memory_mb=self.memory_mb, forwards=forwards,
                                         stdout=console, stop=self._stop_event)
        except BaseException as exc:  # reported by start() or the next call
            self._vm_error = exc
        finally:
            self._close_channel(self._vm_ended())

    def _vm_ended(self) -> str:
        if self._vm_error is not None:
            return f"the VM harness failed: {self._vm_error!r}"
        result = self._vm_result
        if result is None:
            return "the VM ended"
        tail = "\n".join(result.console_tail[-20:])
        return (f"the VM ended (status {result.status}"
                f"{', timed out' if result.timed_out else ''})"
                + (f"; last boot console lines:\n{tail}" if result.boot_s is None else ""))

    def _accept(self, listener: socket.socket, token: str, t0: float) -> socket.socket:
        listener.settimeout(1.0)
        deadline = t0 + self.boot_timeout
        next_note = t0 + 15
        assert self._thread is not None
        while True:
            now = time.monotonic()
            if now > deadline:
                raise GuestError(f"the guest worker did not connect in {self.boot_timeout:.0f} "
                                 f"s; console:\n{self.console()}")
            if not self._thread.is_alive():
                raise GuestError(f"{self._vm_ended()}\nbefore the worker connected; "
                                 f"console:\n{self.console()}")
            if now > next_note:
                self.log(f"still waiting for the guest worker ({now - t0:.0f} s)")
                next_note = now + 15
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            # One line, bounded: the worker's hello. Anything else is not our worker.
            conn.settimeout(max(1.0, min(30.0, deadline - time.monotonic())))
            try:
                hello = json.loads(conn.makefile("rb").readline() or b"{}")
            except (OSError, ValueError):
                hello = {}
            if isinstance(hello, dict) and hello.get("hello") == token:
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn
            self.log("ignored a control connection without the right hello")
            conn.close()

    def _read_replies(self) -> None:
        assert self._sock is not None
        reason = "the guest closed the control connection"
        try:
            for line in self._sock.makefile("rb"):
                reply = json.loads(line)
                with self._pending_lock:
                    waiter = self._pending.pop(int(reply.get("id", -1)), None)
                if waiter is not None:
                    waiter[1].append(reply)
                    waiter[0].set()
        except (OSError, ValueError) as exc:
            reason = f"the control connection failed: {exc!r}"
        # Give the VM thread a moment to finish, so the reason can say how the VM ended.
        vm_thread = self._thread
        if vm_thread is not None:
            vm_thread.join(timeout=5)
            if not vm_thread.is_alive():
                reason = f"{reason}; {self._vm_ended()}"
        self._close_channel(reason)

    def _close_channel(self, reason: str) -> None:
        with self._pending_lock:
            if self._closed is None:
                self._closed = reason
            waiters = list(self._pending.values())
            self._pending.clear()
        for event, _ in waiters:
            event.set()  # no reply appended: the caller reports self._closed
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def _call(self, op: str, params: dict[str, Any], *, wait: float = CALL_SLACK
              ) -> dict[str, Any]:
        """Send one request and wait (at most `wait` seconds) for its answer."""
        if self._sock is None:
            raise GuestError(f"{op}: the guest is not started")
        rid = next(self._ids)
        event = threading.Event()
        box: list[dict[str, Any]] = []
        with self._pending_lock:
            if self._closed is not None:
                raise GuestError(f"{op}: {self._closed}\nconsole:\n{self.console()}")
            self._pending[rid] = (event, box)
        data = (json.dumps({"id": rid, "op": op, **params}) + "\n").encode()
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            with self._pending_lock:
                self._pending.pop(rid, None)
            raise GuestError(f"{op}: cannot send to the guest: {exc}") from exc
        if not event.wait(wait):
            with self._pending_lock:
                self._pending.pop(rid, None)
            raise GuestError(f"{op}: no answer from the guest in {wait:.0f} s "
                             f"({self._summary(params)})")
        if not box:
            raise GuestError(f"{op}: {self._closed}\nconsole:\n{self.console()}")
        reply = box[0]
        if not reply.get("ok"):
            raise GuestError(f"{op} failed in the guest ({self._summary(params)}): "
                             f"{reply.get('error')}")
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    @staticmethod
    def _summary(params: Mapping[str, Any]) -> str:
        shown = {k: v for k, v in params.items() if k not in ("data", "input") and v}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())

    @staticmethod
    def _describe(what: str, done: subprocess.CompletedProcess[str]) -> str:
        return (f"guest command {subprocess.list2cmdline(done.args)} {what}\n"
                f"--- stdout ---\n{_clip(done.stdout)}\n--- stderr ---\n{_clip(done.stderr)}")
