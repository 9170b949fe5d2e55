"""The I/O side of the health checks: one TCP connect or HTTP GET, blocking, bounded.

Each probe is a plain blocking socket with a deadline: ``timeout`` bounds the whole probe
(connect, send and read together), so the agent can run probes in a small thread pool and
know when each one ends. Addresses must be IP literals (IPv4 or IPv6): nothing is ever
resolved.

For DR/TUN real servers the probe goes to the VIP with ``mark`` (SO_MARK, which needs
CAP_NET_ADMIN or CAP_NET_RAW) set to the real server's own fwmark health service, and with
``source`` bound to the director's own address: from the VIP holder, a probe sourced from the
VIP gets its reply eaten by the real server, which owns the VIP too; the reply then comes
from the VIP, which the VIP holder accepts only with accept_local (the compiler sets it) and
not under strict rp_filter. Sockets are closed with SO_LINGER 0 (an RST), which
turns the probe's IPVS connection entry into CLOSE for 10 s instead of TIME_WAIT for 120 s.

A probe that could not even be attempted because of a local problem (SO_MARK refused, source
address not local) returns ``local_error=True``: keepalived reschedules such a check without
counting a failure (``check_tcp.c`` ``tcp_connect_thread``), which is ``HealthTracker.skip``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

SO_MARK = getattr(socket, "SO_MARK", 36)
_LINGER_RST = struct.pack("ii", 1, 0)
_MAX_HEADER_BYTES = 64 * 1024
_USER_AGENT = "lvs-operator-healthcheck"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str
    seconds: float
    local_error: bool = False
    """True when the probe could not be attempted (our side's fault, not the server's)."""


class _LocalError(Exception):
    pass


class _Failed(Exception):
    pass


def source_toward(address: str) -> str:
    """The local address the kernel would send from toward `address` (a routing lookup by a
    connected UDP socket, no packet sent): the director's own address for a health-path probe."""
    ip = _literal(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, 9))
        return str(sock.getsockname()[0])


def _literal(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address (probes never resolve names)") from None


def _open(
    address: str,
    port: int,
    *,
    deadline: float,
    mark: int | None,
    source: str | None,
    clock: Callable[[], float],
) -> socket.socket:
    """A connected socket, or _LocalError / _Failed."""
    ip = _literal(address)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    if source is not None and _literal(source).version != ip.version:
        raise ValueError(f"source {source} and target {address} are different address families")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        if mark is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            except OSError as e:
                raise _LocalError(f"cannot set SO_MARK {mark}: {e.strerror or e}") from None
        if source is not None:
            try:
                sock.bind((source, 0))
            except OSError as e:
                raise _LocalError(f"cannot bind to {source}: {e.strerror or e}") from None
        _settimeout(sock, deadline, clock, "connect")
        try:
            sock.connect((address, port))
        except TimeoutError:
            raise _Failed("connect timeout") from None
        except ConnectionRefusedError:
            raise _Failed("connection refused") from None
        except OSError as e:
            raise _Failed(f"connect failed: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _settimeout(
    sock: socket.socket, deadline: float, clock: Callable[[], float], phase: str
) -> None:
    left = deadline - clock()
    if left <= 0:
        raise _Failed(f"{phase} timeout")
    sock.settimeout(left)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def tcp_check(
    address: str,
    port: int,
    *,
    timeout: float,
    mark: int | None = None,
    source: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """keepalived TCP_CHECK: healthy when the TCP handshake completes within ``timeout``."""
    start = clock()
    try:
        sock = _open(address, port, deadline=start + timeout, mark=mark, source=source, clock=clock)
    except _LocalError as e:
        return ProbeResult(False, str(e), clock() - start, local_error=True)
    except _Failed as e:
        return ProbeResult(False, str(e), clock() - start)
    _close(sock)
    return ProbeResult(True, "connected", clock() - start)


def _host_header(address: str, port: int, host: str | None) -> str:
    if host:
        return host
    ip = _literal(address)
    name = f"[{address}]" if ip.version == 6 else address
    return name if port == 80 else f"{name}:{port}"


def _request(path: str, host: str) -> bytes:
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise ValueError(f"invalid HTTP path {path!r}")
    if any(c in host for c in "\r\n"):
        raise ValueError("invalid Host header")
    return (
        f"GET {path} HTTP/1.0\r\n"
        f"User-Agent: {_USER_AGENT}\r\n"
        f"Host: {host}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


def _recv(sock: socket.socket, deadline: float, clock: Callable[[], float]) -> bytes:
    _settimeout(sock, deadline, clock, "read")
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise _Failed("read timeout") from None
    except OSError as e:
        raise _Failed(f"read failed: {e.strerror or e}") from None


def _parse_head(head: bytes) -> tuple[int, int | None]:
    """(status, content-length or None) from the bytes before the blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise _Failed(f"malformed status line {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    return status, length


def http_check(
    address: str,
    port: int,
    *,
    path: str = "/",
    expected_status: Collection[int] = (200,),
    digest: str | None = None,
    host: str | None = None,
    timeout: float,
    mark: int | None = None,
    source: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """keepalived HTTP_GET: one ``GET path HTTP/1.0``; healthy when the status is expected and,
    with ``digest``, the MD5 of the body (everything after the headers, to the end of the
    connection or Content-Length) equals it. An empty response is a failure ("no data
    received", as in keepalived). The Host header is ``host``, or the address (and port if
    not 80)."""
    start = clock()
    deadline = start + timeout
    request = _request(path, _host_header(address, port, host))
    want = {int(c) for c in expected_status}
    want_digest = digest.lower() if digest else None
    try:
        sock = _open(address, port, deadline=deadline, mark=mark, source=source, clock=clock)
    except _LocalError as e:
        return ProbeResult(False, str(e), clock() - start, local_error=True)
    except _Failed as e:
        return ProbeResult(False, str(e), clock() - start)
    try:
        detail = _exchange(sock, request, deadline, clock, want, want_digest)
    except _Failed as e:
        return ProbeResult(False, str(e), clock() - start)
    finally:
        _close(sock)
    return ProbeResult(True, detail, clock() - start)


def _exchange(
    sock: socket.socket,
    request: bytes,
    deadline: float,
    clock: Callable[[], float],
    want: set[int],
    want_digest: str | None,
) -> str:
    _settimeout(sock, deadline, clock, "send")
    try:
        sock.sendall(request)
    except TimeoutError:
        raise _Failed("send timeout") from None
    except OSError as e:
        raise _Failed(f"send failed: {e.strerror or e}") from None
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = _recv(sock, deadline, clock)
        if not chunk:
            if not buf:
                raise _Failed("no data received")
            raise _Failed("connection closed inside the HTTP header")
        buf += chunk
        if len(buf) > _MAX_HEADER_BYTES and b"\r\n\r\n" not in buf:
            raise _Failed("HTTP header too long")
    head, _, body = buf.partition(b"\r\n\r\n")
    status, length = _parse_head(head)
    if status not in want:
        raise _Failed(f"HTTP status {status}, expected {sorted(want)}")
    if want_digest is None:
        return f"HTTP status {status}"
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0

    def take(data: bytes) -> None:
        nonlocal received
        if length is not None:
            data = data[: max(0, length - received)]
        md5.update(data)
        received += len(data)

    take(body)
    while length is None or received < length:
        chunk = _recv(sock, deadline, clock)
        if not chunk:
            break
        take(chunk)
    got = md5.hexdigest()
    if got != want_digest:
        raise _Failed(f"MD5 digest {got} of {received} bytes, expected {want_digest}")
    return f"HTTP status {status}, MD5 digest matches"
