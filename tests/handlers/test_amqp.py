"""The amqp handler against the RabbitMQ server on 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from listener.errors import PermanentError, TransientError
from listener.handlers import AmqpHandlerConfig, build_handler
from listener.handlers.amqp import AmqpHandler
from listener.model import Message
from listener.secrets import EnvSecret, InlineSecret
from tests.handlers.brokers import AMQP, numbered, proxied, require_server, unique, webhook_body
from tests.handlers.conftest import MakeMessage

pika = pytest.importorskip("pika")
GUEST = InlineSecret(source="inline", value="guest")


class Queue:
    """A temporary queue bound to ``amq.topic`` with ``pattern``, read back with basic.get."""

    def __init__(self, pattern: str) -> None:
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(*AMQP))
        self.channel = self.connection.channel()
        self.name = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.name, "amq.topic", routing_key=pattern)

    def drain(self, expected: int, wait: float = 10.0) -> list[tuple[Any, Any, bytes]]:
        """Every message in the queue, waiting up to ``wait`` s for at least ``expected``."""
        got: list[tuple[Any, Any, bytes]] = []
        deadline = time.monotonic() + wait
        while True:
            method, properties, body = self.channel.basic_get(self.name, auto_ack=True)
            if method is not None:
                got.append((method, properties, body))
                continue
            if len(got) >= expected or time.monotonic() > deadline:
                return got
            self.connection.sleep(0.05)


@pytest.fixture
def topic() -> Iterator[tuple[str, Queue]]:
    """A routing-key prefix of this test and a queue receiving ``prefix.#``."""
    require_server("RabbitMQ", AMQP)
    prefix = unique("ewstest")
    queue = Queue(f"{prefix}.#")
    yield prefix, queue
    queue.connection.close()


def handler(prefix: str, port: int = AMQP[1], **kw: Any) -> AmqpHandler:
    kw.setdefault("password", GUEST)
    return AmqpHandler(
        "bus",
        f"amqp://guest@127.0.0.1:{port}/%2F",
        exchange=kw.pop("exchange", "amq.topic"),
        routing_key=kw.pop("routing_key", prefix + ".{mailbox}.{sender_domain}"),
        **kw,
    )


def test_body_properties_and_routing_key(
    topic: tuple[str, Queue], make_message: MakeMessage
) -> None:
    """The body is the webhook's JSON; persistent, message_id and headers carry the key."""
    prefix, queue = topic
    message = make_message()
    h = handler(prefix)
    try:
        h(message)
    finally:
        h.close()
    [(method, properties, body)] = queue.drain(1)
    assert body == webhook_body(message)
    assert method.routing_key == f"{prefix}.orders@example_com.example_net"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json; charset=utf-8"
    assert properties.message_id == message.idempotency_key
    assert properties.headers == {
        "Content-Type": "application/json; charset=utf-8",
        "Idempotency-Key": message.idempotency_key,
        "X-Ews-Listener-Mailbox": "orders@example.com",
    }


def test_built_from_configuration(topic: tuple[str, Queue], make_message: MakeMessage) -> None:
    """``[handlers.NAME] type = "amqp"`` builds a working handler."""
    prefix, queue = topic
    config = AmqpHandlerConfig.model_validate(
        {
            "type": "amqp",
            "url": f"amqp://guest@127.0.0.1:{AMQP[1]}/%2F",
            "password": {"source": "inline", "value": "guest"},
            "exchange": "amq.topic",
            "routing_key": prefix + ".{folder}",
        }
    )
    h = build_handler("bus", config)
    try:
        h(make_message())
    finally:
        h.close()
    [(method, _, _)] = queue.drain(1)
    assert method.routing_key == f"{prefix}.inbox"


def test_unroutable_and_unknown_exchange_are_permanent(
    topic: tuple[str, Queue], make_message: MakeMessage
) -> None:
    """mandatory + no queue bound, or no such exchange: PermanentError; the handler goes on."""
    prefix, queue = topic
    h = handler(prefix, routing_key="unbound-" + prefix)
    try:
        with pytest.raises(PermanentError, match="unroutable"):
            h(make_message())
    finally:
        h.close()
    h = handler(prefix, exchange=unique("no-such-exchange-"))
    try:
        with pytest.raises(PermanentError, match="404 NOT_FOUND"):
            h(make_message())
    finally:
        h.close()
    h = handler(prefix)
    try:
        h(make_message())  # a fresh link after the closed channel
    finally:
        h.close()
    assert len(queue.drain(1)) == 1


def test_not_mandatory_unroutable_succeeds(make_message: MakeMessage) -> None:
    """Without ``mandatory`` an unroutable message is acked (and dropped by the broker)."""
    require_server("RabbitMQ", AMQP)
    h = handler("x", routing_key=unique("unbound-"), mandatory=False)
    try:
        h(make_message())
    finally:
        h.close()


def test_threads_share_one_handler(topic: tuple[str, Queue], make_message: MakeMessage) -> None:
    """8 threads x 25 messages through one handler (pool of 3): all arrive, each intact."""
    prefix, queue = topic
    messages = [numbered(make_message, n) for n in range(200)]
    h = handler(prefix, pool_size=3)
    errors: list[BaseException] = []

    def work(part: list[Message]) -> None:
        try:
            for m in part:
                h(m)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(messages[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    h.close()
    assert not errors
    got = queue.drain(len(messages))
    by_id = {p.message_id: body for _, p, body in got}
    assert len(got) == len(messages) == len(by_id)
    for m in messages:
        assert by_id[m.idempotency_key] == webhook_body(m)


def test_broker_away_then_back(topic: tuple[str, Queue], make_message: MakeMessage) -> None:
    """While the broker is unreachable calls raise TransientError; after it is back they succeed
    and nothing is lost (a repeat, if any, carries the same message_id)."""
    prefix, queue = topic
    messages = [numbered(make_message, n) for n in range(10)]
    with proxied(AMQP) as proxy:
        h = handler(prefix, port=proxy.port, timeout=2.0)
        try:
            for m in messages[:4]:
                h(m)
            proxy.stop()
            for m in messages[4:7]:
                with pytest.raises(TransientError, match="connection failed or lost"):
                    h(m)
            proxy.start()
            for m in messages[4:]:
                h(m)  # the retry of each failed one, then the rest
        finally:
            h.close()
    got = queue.drain(len(messages))
    ids = [p.message_id for _, p, _ in got]
    assert set(ids) == {m.idempotency_key for m in messages}
    assert len(ids) == len(messages)  # refused connections: nothing was half-sent


def test_a_link_closed_while_pooled_is_replaced(
    topic: tuple[str, Queue], make_message: MakeMessage
) -> None:
    """A link closed behind the pool's back (the broker, the network) right after its last
    confirm is lent without polling its socket: that call may fail as transient, never
    succeed without the broker's confirm; the retry and every later call connect again and
    succeed; each message arrives once."""
    prefix, queue = topic
    messages = [numbered(make_message, n) for n in range(3)]
    with proxied(AMQP) as proxy:
        h = handler(prefix, port=proxy.port, timeout=2.0)
        try:
            h(messages[0])
            proxy.stop()  # closes the pooled link's connection
            proxy.start()
            errors: list[str] = []
            try:
                h(messages[1])
            except TransientError as e:
                errors.append(str(e))
                h(messages[1])  # the retry: a new connection
            h(messages[2])
        finally:
            h.close()
    got = queue.drain(len(messages))
    assert sorted(p.message_id for _, p, _ in got) == sorted(m.idempotency_key for m in messages)
    assert all("connection failed or lost" in e for e in errors), errors


def test_login_refused_is_transient_and_the_password_never_shows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make_message: MakeMessage
) -> None:
    """A wrong password: TransientError naming the fix; the value in no error, repr or log."""
    require_server("RabbitMQ", AMQP)
    secret = "Wr0ng-" + unique("pw")
    monkeypatch.setenv("EWS_TEST_AMQP_PASSWORD", secret)
    config = AmqpHandlerConfig.model_validate(
        {
            "type": "amqp",
            "url": f"amqp://guest@127.0.0.1:{AMQP[1]}/%2F",
            "password": {"source": "env", "name": "EWS_TEST_AMQP_PASSWORD"},
            "routing_key": "x",
        }
    )
    assert isinstance(config.password, EnvSecret)
    caplog.set_level(logging.DEBUG)
    h = build_handler("bus", config)
    try:
        with pytest.raises(TransientError, match="login refused") as info:
            h(make_message())
    finally:
        h.close()
    for text in (str(info.value), repr(info.value), repr(h), repr(config), caplog.text):
        assert secret not in text
    assert json.dumps(config.model_dump(mode="json")).count(secret) == 0
