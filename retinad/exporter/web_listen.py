"""Sockets of the web server: binding listen addresses, and the bare-TCP replies of a
refused TLS handshake.

node_exporter's address forms: "host:port", "[v6]:port", ":port" (every address,
dual-stack where the host has IPv6); port 0 is any free port (tests).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from typing import cast

from retinad.config.load import parse_listen_address
from retinad.errors import RetinadError


class Listener:
    """One bound address and the thread accepting on it."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address, self.sock = address, sock
        self.closing = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def bound(self) -> tuple[str, int]:
        return cast(tuple[str, int], self.sock.getsockname()[:2])


PLAIN_HTTP_TO_TLS = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
"""Go's net/http answer to plain HTTP on a TLS port, so curl users see what is wrong."""


def send_raw(conn: socket.socket, data: bytes) -> None:
    """Write past the TLS layer, on the bare TCP socket."""
    with contextlib.suppress(OSError):
        socket.socket.sendall(conn, data)


def linger(conn: socket.socket) -> None:
    """Close gracefully after a refused handshake: closing with the client's unread bytes
    in the buffer sends a TCP reset, which can destroy the TLS alert before the client
    reads it. So stop writing, drain briefly, and let the client hang up first."""
    deadline = time.monotonic() + 2.0
    with contextlib.suppress(OSError):
        socket.socket.shutdown(conn, socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not socket.socket.recv(conn, 4096):
                break


def open_listener(addr: str) -> socket.socket:
    """A listening socket for "host:port", "[v6]:port" or ":port" (port 0: any free port).

    ":port" binds "::" with IPV6_V6ONLY off, so one socket takes IPv4 and IPv6, and falls
    back to 0.0.0.0 on a host without IPv6.
    """
    try:
        host, port = parse_listen_address(addr, allow_port_zero=True)
    except ValueError as err:
        raise RetinadError(f'cannot listen on "{addr}": {err}') from None
    try:
        if host:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, sockaddr = infos[0][0], infos[0][4]
            return _bind(family, sockaddr)
        try:
            return _bind(socket.AF_INET6, ("::", port), dual_stack=True)
        except OSError as err:
            if err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                return _bind(socket.AF_INET, ("0.0.0.0", port))
            raise
    except socket.gaierror as err:
        reason = (err.strerror or str(err)).lower()
        raise RetinadError(f'cannot listen on "{addr}": cannot resolve "{host}": {reason}') from err
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise RetinadError(f'cannot listen on "{addr}": {reason}') from err


def _bind(family: int, sockaddr: tuple[object, ...], *, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- request handling ----------------------------------------------------------------------
