"""agent/probes.py against real sockets on the loopback only; every probe is bounded."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lvs_operator.agent.probes import ProbeResult, http_check, tcp_check

LO = "127.0.0.1"
BODY = b"<html>I am r1</html>\n"
BODY_MD5 = hashlib.md5(BODY, usedforsecurity=False).hexdigest()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Server:
    """A listening socket on the loopback whose connections a handler serves, one thread."""

    def __init__(
        self, handler: Callable[[socket.socket], None] | None, host: str = LO, backlog: int = 8
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.port: int = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if handler is not None:
            self._handler = handler
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)
            conn.settimeout(2.0)
            with contextlib.suppress(OSError):
                self._handler(conn)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for c in self.held:
            c.close()
        self.sock.close()


@contextlib.contextmanager
def serving(
    handler: Callable[[socket.socket], None] | None, host: str = LO, backlog: int = 8
) -> Iterator[Server]:
    srv = Server(handler, host, backlog)
    try:
        yield srv
    finally:
        srv.close()


def http_handler(
    srv_requests: list[bytes],
    status: str = "200 OK",
    body: bytes = BODY,
    content_length: bool = True,
) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        srv_requests.append(data)
        head = f"HTTP/1.0 {status}\r\nContent-Type: text/html\r\n"
        if content_length:
            head += f"Content-Length: {len(body)}\r\n"
        conn.sendall(head.encode() + b"\r\n" + body)
        conn.close()

    return handle


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((LO, 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- TCP


def test_tcp_listening_socket_is_ok() -> None:
    with serving(lambda c: None) as srv:
        r = tcp_check(LO, srv.port, timeout=2.0)
    assert r == ProbeResult(True, "connected", r.seconds)
    assert r.seconds < 1.0


def test_tcp_closed_port_is_refused_quickly() -> None:
    r = tcp_check(LO, closed_port(), timeout=5.0)
    assert not r.ok and not r.local_error
    assert r.detail == "connection refused"
    assert r.seconds < 0.5


def test_tcp_connect_timeout_is_bounded() -> None:
    # A listener that never accepts, with its accept queue full: Linux drops further SYNs
    # (tcp_abort_on_overflow=0), so the handshake never completes.
    with serving(None, backlog=0) as srv:
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect((LO, srv.port))
                fillers.append(s)
            time.sleep(0.05)
            start = time.monotonic()
            r = tcp_check(LO, srv.port, timeout=0.4)
            took = time.monotonic() - start
        finally:
            for s in fillers:
                s.close()
    assert not r.ok and r.detail == "connect timeout"
    assert 0.35 <= took < 1.0


def test_tcp_closes_with_rst_not_time_wait() -> None:
    # SO_LINGER 0: the checker's side sends RST, so the server sees a reset, not a FIN.
    seen: list[str] = []

    def handle(conn: socket.socket) -> None:
        try:
            data = conn.recv(1)
            seen.append("eof" if data == b"" else "data")
        except ConnectionResetError:
            seen.append("reset")

    with serving(handle) as srv:
        assert tcp_check(LO, srv.port, timeout=2.0).ok
        deadline = time.monotonic() + 2.0
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == ["reset"]


def test_names_are_never_resolved() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        tcp_check("localhost", 80, timeout=1.0)
    with pytest.raises(ValueError, match="not an IP address"):
        http_check("example.invalid", 80, timeout=1.0)


def test_source_bind_ok_and_foreign_source_is_a_local_error() -> None:
    with serving(lambda c: None) as srv:
        assert tcp_check(LO, srv.port, timeout=2.0, source=LO).ok
        r = tcp_check(LO, srv.port, timeout=2.0, source="192.0.2.77")  # not a local address
    assert not r.ok and r.local_error
    assert r.detail.startswith("cannot bind to 192.0.2.77")


def test_source_family_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="address families"):
        tcp_check(LO, 80, timeout=1.0, source="::1")


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback in this environment")
def test_tcp_ipv6() -> None:
    with serving(lambda c: None, host="::1") as srv:
        assert tcp_check("::1", srv.port, timeout=2.0, source="::1").ok
    assert tcp_check("::1", closed_port(), timeout=2.0).detail == "connection refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW (root)")
def test_so_mark_as_root() -> None:
    seen: list[int] = []

    def handle(conn: socket.socket) -> None:
        seen.append(1)

    with serving(handle) as srv:
        r = tcp_check(LO, srv.port, timeout=2.0, mark=0x10001, source=LO)
        h = http_check(LO, closed_port(), timeout=1.0, mark=0x10002)
    assert r.ok, r.detail
    assert not h.ok and h.detail == "connection refused"


# --------------------------------------------------------------------------- HTTP


def test_http_status_match_and_request_shape() -> None:
    reqs: list[bytes] = []
    with serving(http_handler(reqs)) as srv:
        r = http_check(LO, srv.port, path="/healthz?x=1", timeout=2.0)
        r2 = http_check(LO, srv.port, host="www.example.test", timeout=2.0)
    assert r.ok and r.detail == "HTTP status 200", r.detail
    assert r2.ok
    first = reqs[0].decode()
    assert first.startswith("GET /healthz?x=1 HTTP/1.0\r\n")
    assert f"\r\nHost: {LO}:{srv.port}\r\n" in first
    assert "\r\nHost: www.example.test\r\n" in reqs[1].decode()


def test_http_status_mismatch() -> None:
    reqs: list[bytes] = []
    with serving(http_handler(reqs, status="503 Service Unavailable")) as srv:
        bad = http_check(LO, srv.port, timeout=2.0)
        good = http_check(LO, srv.port, expected_status={200, 503}, timeout=2.0)
    assert not bad.ok and bad.detail == "HTTP status 503, expected [200]"
    assert good.ok


@pytest.mark.parametrize("content_length", [True, False])
def test_http_digest_match_and_mismatch(content_length: bool) -> None:
    reqs: list[bytes] = []
    with serving(http_handler(reqs, content_length=content_length)) as srv:
        ok = http_check(LO, srv.port, digest=BODY_MD5, timeout=2.0)
        bad = http_check(LO, srv.port, digest="0" * 32, timeout=2.0)
    assert ok.ok and ok.detail == "HTTP status 200, MD5 digest matches", ok.detail
    assert not bad.ok
    assert bad.detail == f"MD5 digest {BODY_MD5} of {len(BODY)} bytes, expected {'0' * 32}"


def test_http_accepts_but_never_answers_times_out_within_bound() -> None:
    with serving(lambda c: time.sleep(0.8)) as srv:
        r = http_check(LO, srv.port, timeout=0.5)
    assert not r.ok and r.detail == "read timeout"
    assert 0.45 <= r.seconds < 1.0


def test_http_slow_body_is_bounded_by_the_whole_timeout() -> None:
    def dribble(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
        for _ in range(20):
            conn.sendall(b"x")
            time.sleep(0.1)

    with serving(dribble) as srv:
        r = http_check(LO, srv.port, digest=BODY_MD5, timeout=0.6)
    assert not r.ok and r.detail == "read timeout"
    assert r.seconds < 1.0


def test_http_empty_response_and_garbage() -> None:
    def hang_up(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.close()

    with serving(hang_up) as srv:
        empty = http_check(LO, srv.port, timeout=2.0)
    assert not empty.ok and empty.detail == "no data received"

    def garbage(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    with serving(garbage) as srv:
        r = http_check(LO, srv.port, timeout=2.0)
    assert not r.ok and r.detail.startswith("malformed status line")


def test_http_closed_port_is_refused() -> None:
    r = http_check(LO, closed_port(), timeout=2.0)
    assert not r.ok and r.detail == "connection refused" and r.seconds < 0.5


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback in this environment")
def test_http_ipv6_host_header_is_bracketed() -> None:
    reqs: list[bytes] = []
    with serving(http_handler(reqs), host="::1") as srv:
        r = http_check("::1", srv.port, digest=BODY_MD5, timeout=2.0)
    assert r.ok, r.detail
    assert f"\r\nHost: [::1]:{srv.port}\r\n" in reqs[0].decode()
