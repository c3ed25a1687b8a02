"""A threaded HTTP/1.1 server base shared by the token server and the EWS emulator.

Why the standard library's ``ThreadingHTTPServer`` and not an async framework: the emulator must do
things a framework hides on purpose (drop a connection mid-response, hold a chunked stream open,
refuse connections while "down" and come back on the same port), its clients are blocking
``requests``/``httpx`` code, and one thread per keep-alive connection is plenty for hundreds of
requests per second on two cores. TLS handshakes run in the connection's own thread, so a slow
client never stalls ``accept()``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LoopbackServer", "QuietHandler"]

_DIGITS = re.compile(r"[0-9]+")


class QuietHandler(BaseHTTPRequestHandler):
    """A keep-alive request handler that does not print to stderr."""

    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    refused = 0  # the status ``body_length`` answered with, when it refused a request

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two sends; with Nagle's algorithm on, the body waits for the
        # client's delayed ACK (40 ms on Linux), which capped a keep-alive connection at ~25
        # requests/s.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a complete response with Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body_length(self, limit: int) -> int | None:
        """The declared body length, or None after refusing the request without reading it.

        A ``Content-Length`` that is not one run of digits (``-1`` made ``rfile.read`` read until
        the client hung up: 45 → 561 MB RSS before authentication, issue 11 point 10) or that
        repeats with different values is a 400; a chunked body (we never accept one) a 411; more
        than ``limit`` bytes a 413. Each closes the connection, since the unread body would be
        taken for the next request. ``refused`` holds the status sent.
        """
        values = {v.strip() for v in self.headers.get_all("Content-Length") or ()}
        status = 0
        if self.headers.get("Transfer-Encoding"):
            status = 411
        elif len(values) > 1 or not all(_DIGITS.fullmatch(v) for v in values):
            status = 400
        elif values and (len(value := values.pop()) > 15 or int(value) > limit):
            status = 413
        if status:
            self.refused = status
            self.send_body(status, b"", "text/plain", {"Connection": "close"})
            self.close_connection = True
            return None
        return int(self.headers.get("Content-Length") or 0)

    def read_body(self, limit: int) -> bytes | None:
        """The request body, or None (after answering 400/411/413) when ``body_length`` refuses."""
        length = self.body_length(limit)
        if length is None:
            return None
        return self.rfile.read(length) if length else b""

    def discard_body(self, length: int) -> None:
        """Read ``length`` bytes and throw them away, 64 KiB at a time (memory stays flat).

        Answering without reading the body would leave it to be parsed as the next request, and
        closing instead makes the kernel reset a connection with unread data, which can destroy the
        answer before the client reads it.
        """
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)

    def drop_connection(self) -> None:
        """Close the TCP connection now, without a response (a network failure, as seen)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: Callable[..., BaseHTTPRequestHandler],
        ssl_context: ssl.SSLContext | None,
        owner: LoopbackServer,
    ) -> None:
        self.ssl_context = ssl_context
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        if self.ssl_context is not None:
            try:
                conn.settimeout(10)
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            with self.connections_lock:
                self.connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (or connections we drop on purpose) are not errors worth a trace.
        return

    def drop_all(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackServer:
    """Runs a handler class on 127.0.0.1 in a background thread; can stop and restart on its port.

    ``handler_class`` instances reach this object as ``self.server.owner``.
    """

    def __init__(
        self,
        handler_class: Callable[..., BaseHTTPRequestHandler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._handler_class = handler_class
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context is not None else "http"

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``https://127.0.0.1:8443``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> LoopbackServer:
        """Listen (on the same port as before when restarted) and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), self._handler_class, self._ssl_context, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection; ``start()`` brings it back."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def drop_connections(self) -> None:
        """Cut every open connection (clients see a reset or an incomplete response)."""
        if self._server is not None:
            self._server.drop_all()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
