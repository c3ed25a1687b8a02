"""Where ``throughput.py --handler`` delivers: a local webhook receiver, or a queue or stream of
its own on the real broker servers of this machine.

- ``count``: the python handler ``_harness:count`` (``_harness:sleeping_count`` with a latency),
  counted in the daemon (``$BENCH_COUNT_FILE``).
- ``webhook``: a threaded HTTP server in this process (HTTP/1.1, keep-alive, as a receiver
  behind a load balancer is) that reads the body, sleeps ``--handler-latency`` and answers 200.
- ``amqp``: a durable queue ``ews-bench-…`` on RabbitMQ (127.0.0.1:5672, guest/guest), published
  to through the default exchange (routing key = queue name), persistent, ``mandatory``, with
  publisher confirms: what the handler does with its defaults.
- ``nats``: a JetStream stream ``EWS_BENCH_…`` capturing ``ews-bench-….>`` (127.0.0.1:4222);
  the handler waits for JetStream's ack of every message.
- ``redis_stream``: the stream key ``ews-bench:…`` on Redis (127.0.0.1:6379), XADD with the
  handler's de-duplication key (``SET NX``, its default window), under a prefix of the run.

Each target is a context manager that creates what it needs and removes it afterwards, and
counts what arrived (``received()``). ``probe()`` times the listener's own handler, built from the
same table in this process, over a few messages: the handler time per message that the
throughput's limit is computed with (the daemon's handler calls run the same code).

The ports follow ``tests/handlers/brokers.py`` (``EWS_LISTENER_TEST_*_PORT``). A server that does
not answer is a ``TargetUnavailable`` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HANDLERS", "Target", "TargetUnavailable", "make_target"]

HANDLERS = ("count", "webhook", "amqp", "nats", "redis_stream")
AMQP = ("127.0.0.1", int(os.environ.get("EWS_LISTENER_TEST_AMQP_PORT", "5672")))
NATS = ("127.0.0.1", int(os.environ.get("EWS_LISTENER_TEST_NATS_PORT", "4222")))
REDIS = ("127.0.0.1", int(os.environ.get("EWS_LISTENER_TEST_REDIS_PORT", "6379")))
_AMQP_PASSWORD_ENV = "BENCH_AMQP_PASSWORD"


class TargetUnavailable(RuntimeError):
    """The server a handler delivers to is not reachable."""


def _reachable(what: str, address: tuple[str, int]) -> None:
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as e:
        raise TargetUnavailable(f"{what} at {address[0]}:{address[1]} is unreachable: {e}") from e


class Target:
    """A handler's ``[handlers.NAME]`` table, the environment it needs, and what it received."""

    kind = "count"

    def __init__(self, latency: float) -> None:
        self.latency = latency  # seconds the handler (or the receiver) takes per message
        self.run = uuid.uuid4().hex[:10]
        self._probed = 0

    @property
    def table(self) -> dict[str, object]:
        if self.latency:
            return {
                "type": "python",
                "target": "_harness:sleeping_count",
                "options": {"seconds": self.latency},
            }
        return {"type": "python", "target": "_harness:count"}

    @property
    def env(self) -> dict[str, str]:
        return {}

    @property
    def counted_in_daemon(self) -> bool:
        """True: ``$BENCH_COUNT_FILE`` counts (the python handler); else :meth:`received`."""
        return True

    def received(self) -> int:
        """Messages the target holds, less those :meth:`probe` sent."""
        return 0

    def probe(self, calls: int = 20) -> float:
        """Mean seconds of one call of the listener's handler built from :attr:`table`."""
        if self.counted_in_daemon:
            return self.latency  # the python handler: the sleep (the count costs ~µs)
        from pydantic import TypeAdapter

        from listener.handlers import HandlerConfig, build_handler
        from listener.model import Message

        messages = [
            Message.model_validate(
                {
                    "mailbox": "probe@contoso.com",
                    "folder": "inbox",
                    "item_id": f"probe{n}",
                    "internet_message_id": f"<probe.{n}.{self.run}@example.net>",
                    "subject": f"Order {n}",
                    "from": {"email": "customer@example.net", "name": "Customer"},
                }
            )
            for n in range(calls + 1)
        ]
        # The daemon's environment (a broker's password): secrets are read at the first call.
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            config: Any = TypeAdapter(HandlerConfig).validate_python(self.table)
            handler = build_handler("probe", config)
            try:
                handler(messages[0])  # connects: not part of the time per message
                started = time.perf_counter()
                for message in messages[1:]:
                    handler(message)
                seconds = (time.perf_counter() - started) / calls
            finally:
                close = getattr(handler, "close", None)
                if close is not None:
                    close()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self._probed += calls + 1
        return seconds

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        return


class _Backlogged(ThreadingHTTPServer):
    """The receiver's server; its listen backlog set before ``listen`` (socketserver's is 5, and
    assigning ``request_queue_size`` once the server exists changes nothing)."""

    daemon_threads = True
    request_queue_size = 128


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: httpx reuses its connections
    delay = 0.0
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            type(self).count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


class WebhookTarget(Target):
    kind = "webhook"
    _receiver: type[_Receiver] | None = None

    @property  # type: ignore[override]
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        # --grid changes the latency between runs: the running receiver follows.
        self._latency = seconds
        if self._receiver is not None:
            self._receiver.delay = seconds

    def __enter__(self) -> WebhookTarget:
        receiver = type("Receiver", (_Receiver,), {"delay": self.latency, "count": 0})
        self._server = _Backlogged(("127.0.0.1", 0), receiver)
        self._receiver = receiver
        threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def table(self) -> dict[str, object]:
        port = self._server.server_address[1]
        return {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"}

    @property
    def counted_in_daemon(self) -> bool:
        return False

    def received(self) -> int:
        assert self._receiver is not None, "inside `with` only"
        return int(self._receiver.count) - self._probed


class AmqpTarget(Target):
    kind = "amqp"

    def __enter__(self) -> AmqpTarget:
        import pika

        _reachable("RabbitMQ", AMQP)
        self.queue = f"ews-bench-{self.run}"
        self._connection = pika.BlockingConnection(pika.ConnectionParameters(*AMQP))
        self._channel = self._connection.channel()
        self._channel.queue_declare(self.queue, durable=True)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._channel.queue_delete(self.queue)
        with contextlib.suppress(Exception):
            self._connection.close()

    @property
    def table(self) -> dict[str, object]:
        return {
            "type": "amqp",
            "url": f"amqp://guest@{AMQP[0]}:{AMQP[1]}/%2F",
            "password": {"source": "env", "name": _AMQP_PASSWORD_ENV},
            "exchange": "",
            "routing_key": self.queue,
        }

    @property
    def env(self) -> dict[str, str]:
        return {_AMQP_PASSWORD_ENV: "guest"}

    @property
    def counted_in_daemon(self) -> bool:
        return False

    def received(self) -> int:
        declared = self._channel.queue_declare(self.queue, passive=True)
        return int(declared.method.message_count) - self._probed


def _jetstream(operation: Any) -> Any:
    import nats

    async def run() -> Any:
        nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
        try:
            return await operation(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


class NatsTarget(Target):
    kind = "nats"

    def __enter__(self) -> NatsTarget:
        _reachable("NATS", NATS)
        self.subject = f"ews-bench-{self.run}"
        self.stream = f"EWS_BENCH_{self.run.upper()}"

        async def add(js: Any) -> None:
            await js.add_stream(name=self.stream, subjects=[f"{self.subject}.>"])

        _jetstream(add)
        return self

    def __exit__(self, *exc: object) -> None:
        async def delete(js: Any) -> None:
            await js.delete_stream(self.stream)

        with contextlib.suppress(Exception):
            _jetstream(delete)

    @property
    def table(self) -> dict[str, object]:
        return {
            "type": "nats",
            "url": f"nats://{NATS[0]}:{NATS[1]}",
            "subject": self.subject + ".{mailbox_domain}",
        }

    @property
    def counted_in_daemon(self) -> bool:
        return False

    def received(self) -> int:
        async def info(js: Any) -> Any:
            return await js.stream_info(self.stream)

        return int(_jetstream(info).state.messages) - self._probed


class RedisStreamTarget(Target):
    kind = "redis_stream"

    def __enter__(self) -> RedisStreamTarget:
        import redis

        _reachable("Redis", REDIS)
        self.stream = f"ews-bench:{self.run}"
        self.dedup_prefix = f"ews-bench:dedup:{self.run}:"
        self._client = redis.Redis(*REDIS)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._client.delete(self.stream)
            batch: list[Any] = []
            for key in self._client.scan_iter(f"{self.dedup_prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._client.delete(*batch)
                    batch = []
            if batch:
                self._client.delete(*batch)
        self._client.close()

    @property
    def table(self) -> dict[str, object]:
        return {
            "type": "redis_stream",
            "url": f"redis://{REDIS[0]}:{REDIS[1]}/0",
            "stream": self.stream,
            "dedup_prefix": self.dedup_prefix,
        }

    @property
    def counted_in_daemon(self) -> bool:
        return False

    def received(self) -> int:
        return int(self._client.xlen(self.stream)) - self._probed


_KINDS: Mapping[str, type[Target]] = {
    "count": Target,
    "webhook": WebhookTarget,
    "amqp": AmqpTarget,
    "nats": NatsTarget,
    "redis_stream": RedisStreamTarget,
}


def make_target(kind: str, latency: float) -> Target:
    """The target of ``--handler KIND``; ``latency`` in seconds (count and webhook only)."""
    return _KINDS[kind](latency)
