"""A webhook receiver cannot make the listener read (and hold) an unbounded body (issue 11)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from listener.handlers import HandlerTransientError, WebhookHandler
from listener.handlers.webhook import BODY_LIMIT
from listener.observability.redaction import forget_secrets, redact
from tests.handlers.conftest import MakeMessage

TOTAL = 128 * 1024 * 1024
PIECE = b"x" * (1024 * 1024)


class _Flood(BaseHTTPRequestHandler):
    """Answers every POST with ``server.status`` and a 128 MiB body; counts what it got out."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        server: FloodServer = self.server  # type: ignore[assignment]
        self.send_response(server.status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(TOTAL))
        self.end_headers()
        try:
            for _ in range(TOTAL // len(PIECE)):
                self.wfile.write(PIECE)
                server.sent += len(PIECE)
        except OSError:
            pass  # the client hung up: what we want

    def log_message(self, format: str, *args: object) -> None:
        pass


class FloodServer(ThreadingHTTPServer):
    daemon_threads = True
    status = 200
    sent = 0


@pytest.fixture
def flood() -> Iterator[FloodServer]:
    """A real HTTP server on 127.0.0.1 answering with huge bodies."""
    server = FloodServer(("127.0.0.1", 0), _Flood)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: FloodServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


@pytest.mark.parametrize("status", [200, 500, 400])
def test_webhook_response_body_is_read_only_up_to_the_limit(
    flood: FloodServer, make_message: MakeMessage, status: int
) -> None:
    """A 128 MiB answer: at most BODY_LIMIT is read, the connection is dropped, memory bounded."""
    flood.status = status
    handler = WebhookHandler("hook", _url(flood), timeout=5.0)
    try:
        if status == 200:
            handler(make_message())
        else:
            with pytest.raises(Exception, match=f"answered {status}") as info:
                handler(make_message())
            assert len(str(info.value)) < 400  # an excerpt, not the body
            assert isinstance(info.value, HandlerTransientError) == (status == 500)
    finally:
        handler.close()
    # Socket buffers on loopback hold a few MiB; a whole read would reach all 128.
    assert flood.sent < 32 * 1024 * 1024
    assert BODY_LIMIT <= 64 * 1024


def test_webhook_header_values_are_masked_in_logs() -> None:
    """A configured header value (an API key) is a registered secret once the handler exists."""
    forget_secrets()
    try:
        WebhookHandler("hook", "https://hooks.example/x", headers={"X-Api-Key": "k-7741-zzzz"})
        assert redact("POST with k-7741-zzzz failed") == "POST with *** failed"
    finally:
        forget_secrets()
