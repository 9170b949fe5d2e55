"""The health and metrics endpoint of `lvs-operator` and `lvs-agent`: /healthz, /readyz,
/metrics on one small HTTP server.

Why a thread and not the operator's event loop: the probes must answer (and say why) while
the loop is busy or stuck, which a server on that same loop could not; the loop's own
liveness is one of the checks (`LoopWatch`). The agent's loop is synchronous, so a thread is
the only way there anyway. Each request is answered in its own short-lived thread; checks
only read state, they never call the API or the kernel.

A check is a callable returning (ok, message): 200 with the message when ok, 503 otherwise
(also when the check raises). /metrics is the Prometheus text format (or OpenMetrics when
the scraper asks for it) of the registry the process passes in.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["Check", "HealthServer", "LoopWatch", "PassWatch", "address_arg", "parse_address"]

log = logging.getLogger("lvs_operator.observability")

Check = Callable[[], tuple[bool, str]]


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (every address) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"want HOST:PORT (e.g. 0.0.0.0:8080), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, e.g. [::]:8080; got {text!r}")
    return host, int(port)


def address_arg(text: str) -> tuple[str, int]:
    """parse_address for argparse's `type=`: a usage error instead of a traceback."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _run(check: Check) -> tuple[bool, str]:
    try:
        ok, message = check()
    except Exception as exc:  # a broken check is a failed check, never a dead server
        return False, f"check failed: {type(exc).__name__}: {exc}"
    return bool(ok), str(message)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/livez"):
            self._check(self.server.healthz)
        elif path == "/readyz":
            self._check(self.server.readyz)
        elif path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(self.server.registry)
            except Exception as exc:
                log.exception("collecting metrics failed")
                self._send(500, f"collecting metrics failed: {exc}\n".encode())
                return
            self._send(200, body, content_type)
        else:
            self._send(404, b"not found: try /healthz, /readyz or /metrics\n")

    def _check(self, check: Check) -> None:
        ok, message = _run(check)
        self._send(200 if ok else 503, (message.rstrip("\n") + "\n").encode())

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: not one log line each."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], healthz: Check, readyz: Check,
                 registry: CollectorRegistry) -> None:
        self.healthz, self.readyz, self.registry = healthz, readyz, registry
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class HealthServer:
    """/healthz, /readyz and /metrics on `address`, served from a daemon thread.

    `start()` binds (so a taken port fails at start-up, not later) and returns at once;
    `port` is the bound port (useful with port 0)."""

    def __init__(self, address: tuple[str, int], *, healthz: Check, readyz: Check,
                 registry: CollectorRegistry) -> None:
        self.address = address
        self._healthz, self._readyz, self._registry = healthz, readyz, registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the health server is not started")
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._server = _Server(self.address, self._healthz, self._readyz, self._registry)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.5}, name="health-server", daemon=True)
        self._thread.start()
        log.info("serving /healthz, /readyz and /metrics on %s:%d", self.address[0] or "*",
                 self.port)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class LoopWatch:
    """Proof that an asyncio loop still runs: a task notes the time every `period` seconds,
    and `check(limit)` fails when the last note is older than `limit` (the loop is blocked or
    gone). Read from the health server's thread."""

    def __init__(self, period: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self.beat = clock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.beat = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watch")

    async def _run(self) -> None:
        while True:
            self.beat = self._clock()
            await asyncio.sleep(self.period)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def stalled_for(self) -> float:
        """Seconds since the loop last ran the watch (0 while it runs normally)."""
        return max(0.0, self._clock() - self.beat - self.period)

    def check(self, limit: float) -> tuple[bool, str]:
        if self._task is not None and self._task.done():
            return False, "the event loop watch has stopped"
        stalled = self.stalled_for()
        if stalled > limit:
            return False, f"the event loop has not run for {stalled:.1f} s"
        return True, "event loop running"


class PassWatch:
    """Liveness and readiness of a synchronous pass loop (`lvs-agent --plan FILE --watch`):
    the loop calls `beat()` on every turn and `passed(what)` after each pass. Live while it
    beats within max(3 x interval, 60 s); ready after the first pass. Read from the health
    server's threads."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(3 * interval, 60.0)
        self._clock = clock
        self._beat = clock()
        self._passed: str | None = None

    def beat(self) -> None:
        self._beat = self._clock()

    def passed(self, what: str) -> None:
        self._beat = self._clock()
        self._passed = what

    def liveness(self) -> tuple[bool, str]:
        idle = self._clock() - self._beat
        if idle > self.limit:
            return False, f"the agent loop has not run for {idle:.0f} s (limit {self.limit:.0f} s)"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if self._passed is None:
            return False, "the first pass has not finished yet"
        return True, self._passed
