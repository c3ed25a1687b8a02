"""What the broker handler tests share: the servers on this machine and a TCP proxy to cut.

RabbitMQ (127.0.0.1:5672, guest/guest), NATS with JetStream (127.0.0.1:4222) and Redis
(127.0.0.1:6379) are shared with other tests running at the same time: every test uses names of
its own (a temporary queue, a stream and subjects with a random suffix, random keys) and removes
them. "The server goes away" is a :class:`TcpProxy` between the handler and the server that the
test stops and starts again; the servers themselves are never stopped. When a server is
unreachable its tests are skipped, or fail when ``CI`` is set (as ``tests/store/conftest.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from listener.handlers.webhook import WebhookHandler
from listener.model import Message

AMQP = ("127.0.0.1", int(os.environ.get("EWS_LISTENER_TEST_AMQP_PORT", "5672")))
NATS = ("127.0.0.1", int(os.environ.get("EWS_LISTENER_TEST_NATS_PORT", "4222")))
REDIS = ("127.0.0.1", int(os.environ.get("EWS_LISTENER_TEST_REDIS_PORT", "6379")))


def require_server(what: str, address: tuple[str, int]) -> None:
    """Skip (fail under CI) unless something accepts connections at ``address``."""
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as e:
        reason = f"{what} at {address[0]}:{address[1]} is unreachable: {e}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@functools.cache
def _webhook() -> WebhookHandler:
    return WebhookHandler("reference", "http://127.0.0.1:9/")  # never sends: body() only


def webhook_body(message: Message) -> bytes:
    """The exact bytes the webhook handler POSTs for ``message`` (the reference body)."""
    return _webhook().body(message)


def numbered(make_message: Callable[..., Message], n: int, **fields: Any) -> Message:
    """Message number ``n``: its own Message-ID, so its own idempotency key."""
    return make_message(internet_message_id=f"<{n}-{uuid.uuid4().hex}@example.net>", **fields)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; ``stop()`` cuts every connection and stops
    listening, ``start()`` listens again on the same port: the server, as the handler sees it,
    goes away and comes back."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() first: a bare close() leaves the socket listening until the thread
            # blocked in accept() returns, which it never does (Linux).
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            self._close(s)


@contextlib.contextmanager
def proxied(upstream: tuple[str, int]) -> Iterator[TcpProxy]:
    """A started proxy to ``upstream``, stopped afterwards."""
    proxy = TcpProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
