"""The nats handler against the NATS JetStream server on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from listener.errors import PermanentError, TransientError
from listener.handlers import NatsHandlerConfig, build_handler
from listener.handlers.nats import NatsHandler
from listener.model import Message
from tests.handlers.brokers import NATS, numbered, proxied, require_server, unique, webhook_body
from tests.handlers.conftest import MakeMessage

nats = pytest.importorskip("nats")


def _admin(operation: Any) -> Any:
    async def run() -> Any:
        nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
        try:
            return await operation(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


class Stream:
    """A JetStream stream of this test capturing ``prefix.>``."""

    def __init__(self, prefix: str, duplicate_window: float = 120.0) -> None:
        self.prefix = prefix
        self.name = prefix.upper()

        async def add(js: Any) -> None:
            await js.add_stream(
                name=self.name, subjects=[f"{prefix}.>"], duplicate_window=duplicate_window
            )

        _admin(add)

    def messages(self) -> list[Any]:
        async def read(js: Any) -> list[Any]:
            info = await js.stream_info(self.name)
            first, last = info.state.first_seq, info.state.last_seq
            if info.state.messages == 0:
                return []
            return [await js.get_msg(self.name, seq) for seq in range(first, last + 1)]

        result: list[Any] = _admin(read)
        return result

    def delete(self) -> None:
        async def delete(js: Any) -> None:
            await js.delete_stream(self.name)

        _admin(delete)


@pytest.fixture
def stream() -> Iterator[Stream]:
    """A fresh stream, deleted afterwards."""
    require_server("NATS", NATS)
    s = Stream(unique("ewstest"))
    yield s
    s.delete()


def handler(prefix: str, port: int = NATS[1], **kw: Any) -> NatsHandler:
    return NatsHandler(
        "bus",
        f"nats://127.0.0.1:{port}",
        subject=kw.pop("subject", prefix + ".{mailbox_domain}.{sender_domain}"),
        **kw,
    )


def test_body_headers_and_subject(stream: Stream, make_message: MakeMessage) -> None:
    """The body is the webhook's JSON; Nats-Msg-Id and the webhook's headers carry the key."""
    message = make_message()
    h = handler(stream.prefix)
    try:
        h(message)
    finally:
        h.close()
    [got] = stream.messages()
    assert got.data == webhook_body(message)
    assert got.subject == f"{stream.prefix}.example_com.example_net"
    assert got.headers == {
        "Nats-Msg-Id": message.idempotency_key,
        "Content-Type": "application/json; charset=utf-8",
        "Idempotency-Key": message.idempotency_key,
        "X-Ews-Listener-Mailbox": "orders@example.com",
    }


def test_built_from_configuration(stream: Stream, make_message: MakeMessage) -> None:
    """``[handlers.NAME] type = "nats"`` builds a working handler."""
    config = NatsHandlerConfig.model_validate(
        {"type": "nats", "url": f"nats://127.0.0.1:{NATS[1]}", "subject": stream.prefix + ".a"}
    )
    h = build_handler("bus", config)
    try:
        h(make_message())
    finally:
        h.close()
    assert [m.subject for m in stream.messages()] == [f"{stream.prefix}.a"]


def test_no_stream_is_permanent(make_message: MakeMessage) -> None:
    """A subject no stream captures ("no responders"): PermanentError."""
    require_server("NATS", NATS)
    h = handler(unique("nostream"))
    try:
        with pytest.raises(PermanentError, match="no stream"):
            h(make_message())
    finally:
        h.close()


def test_repeat_within_the_duplicate_window_is_stored_once(
    stream: Stream, make_message: MakeMessage
) -> None:
    """The same key twice within the window: acked both times, stored once."""
    message = make_message()
    h = handler(stream.prefix)
    try:
        h(message)
        h(message)
    finally:
        h.close()
    assert len(stream.messages()) == 1


def test_threads_share_one_handler(stream: Stream, make_message: MakeMessage) -> None:
    """8 threads x 25 messages through one handler: all stored, each intact."""
    messages = [numbered(make_message, n) for n in range(200)]
    h = handler(stream.prefix)
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
    got = {m.headers["Nats-Msg-Id"]: m.data for m in stream.messages()}
    assert len(got) == len(messages)
    for m in messages:
        assert got[m.idempotency_key] == webhook_body(m)


def _until_success(h: NatsHandler, message: Message, seconds: float = 15.0) -> int:
    """Call until it succeeds (only TransientError meanwhile); the number of failures."""
    failures = 0
    deadline = time.monotonic() + seconds
    while True:
        try:
            h(message)
            return failures
        except TransientError:
            failures += 1
            if time.monotonic() > deadline:
                raise


def test_server_away_then_back(stream: Stream, make_message: MakeMessage) -> None:
    """While the server is unreachable calls raise TransientError; once it is back they succeed,
    and what was buffered and retried is stored once (the duplicate window)."""
    messages = [numbered(make_message, n) for n in range(10)]
    with proxied(NATS) as proxy:
        h = handler(stream.prefix, port=proxy.port, timeout=0.5, reconnect_wait=0.1)
        try:
            for m in messages[:4]:
                h(m)
            proxy.stop()
            for m in messages[4:7]:
                with pytest.raises(TransientError):
                    h(m)
            proxy.start()
            for m in messages[4:]:
                _until_success(h, m)
        finally:
            h.close()
    ids = [m.headers["Nats-Msg-Id"] for m in stream.messages()]
    assert sorted(ids) == sorted(m.idempotency_key for m in messages)


def test_first_connect_refused_is_transient_and_the_token_never_shows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make_message: MakeMessage
) -> None:
    """No server: TransientError within the timeout; the token in no error, repr or log."""
    secret = unique("tok-")
    monkeypatch.setenv("EWS_TEST_NATS_TOKEN", secret)
    config = NatsHandlerConfig.model_validate(
        {
            "type": "nats",
            "url": "nats://127.0.0.1:9",
            "token": {"source": "env", "name": "EWS_TEST_NATS_TOKEN"},
            "subject": "x",
            "timeout": 0.5,
        }
    )
    caplog.set_level(logging.DEBUG)
    h = build_handler("bus", config)
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match="cannot connect") as info:
            h(make_message())
        assert time.monotonic() - started < 5
    finally:
        h.close()
    for text in (str(info.value), repr(h), repr(config), caplog.text):
        assert secret not in text


def test_closed_handler_refuses_transiently(make_message: MakeMessage) -> None:
    """A call after close(): TransientError (the message is retried by a new handler)."""
    h = handler("x")
    h.close()
    with pytest.raises(TransientError, match="closed"):
        h(make_message())
