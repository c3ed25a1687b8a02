"""The redis_stream handler against the Redis server on 127.0.0.1:6379."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from listener.errors import PermanentError, TransientError
from listener.handlers import RedisStreamHandlerConfig, build_handler
from listener.handlers.redis_stream import RedisStreamHandler
from listener.model import Message
from tests.handlers.brokers import REDIS, numbered, proxied, require_server, unique, webhook_body
from tests.handlers.conftest import MakeMessage

redis = pytest.importorskip("redis")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test; its keys (streams and dedup keys) are deleted afterwards."""
    require_server("Redis", REDIS)
    p = unique("ewstest:")
    yield p
    client = redis.Redis(*REDIS)
    keys = list(client.scan_iter(f"{p}*")) + list(client.scan_iter(f"ews-listener:dedup:{p}*"))
    if keys:
        client.delete(*keys)
    client.close()


def handler(prefix: str, port: int = REDIS[1], **kw: Any) -> RedisStreamHandler:
    return RedisStreamHandler(
        "bus", f"redis://127.0.0.1:{port}/0", stream=kw.pop("stream", prefix + "{mailbox}"), **kw
    )


def entries(stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = redis.Redis(*REDIS)
    try:
        result: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)
        return result
    finally:
        client.close()


def test_fields_and_stream_key(prefix: str, make_message: MakeMessage) -> None:
    """The ``event`` field is the webhook's JSON; the other fields are the webhook's headers."""
    message = make_message()
    h = handler(prefix)
    try:
        h(message)
    finally:
        h.close()
    [(_, fields)] = entries(prefix + "orders@example_com")
    assert fields == {
        b"event": webhook_body(message),
        b"Content-Type": b"application/json; charset=utf-8",
        b"Idempotency-Key": message.idempotency_key.encode(),
        b"X-Ews-Listener-Mailbox": b"orders@example.com",
    }


def test_built_from_configuration(prefix: str, make_message: MakeMessage) -> None:
    """``[handlers.NAME] type = "redis_stream"`` builds a working handler."""
    config = RedisStreamHandlerConfig.model_validate(
        {"type": "redis_stream", "url": f"redis://127.0.0.1:{REDIS[1]}/0", "stream": prefix + "s"}
    )
    h = build_handler("bus", config)
    try:
        h(make_message())
    finally:
        h.close()
    assert len(entries(prefix + "s")) == 1


def test_repeat_within_the_window_adds_nothing(prefix: str, make_message: MakeMessage) -> None:
    """The dedup rule: the same key twice within the window adds one entry; the key expires."""
    message = make_message()
    h = handler(prefix, stream=prefix + "s", dedup_window=60)
    try:
        h(message)
        h(message)
        key = h.dedup_key(prefix + "s", message)
        [(entry_id, _)] = entries(prefix + "s")
        assert h.client.get(key) == entry_id
        assert 0 < h.client.ttl(key) <= 60
        h.client.delete(key)  # as if the window had passed
        h(message)
    finally:
        h.close()
    assert len(entries(prefix + "s")) == 2  # past the window: added again


def test_without_dedup_every_call_adds(prefix: str, make_message: MakeMessage) -> None:
    """``dedup_window = 0``: a plain XADD each time."""
    message = make_message()
    h = handler(prefix, stream=prefix + "s", dedup_window=0)
    try:
        h(message)
        h(message)
    finally:
        h.close()
    assert len(entries(prefix + "s")) == 2


def test_maxlen_trims_approximately(prefix: str, make_message: MakeMessage) -> None:
    """``maxlen``: the stream stays about that long (MAXLEN ~ trims whole nodes)."""
    h = handler(prefix, stream=prefix + "s", maxlen=10)
    try:
        for n in range(300):
            h(numbered(make_message, n))
    finally:
        h.close()
    assert 10 <= len(entries(prefix + "s")) < 300


def test_wrong_type_is_permanent(prefix: str, make_message: MakeMessage) -> None:
    """The key holds a string, not a stream: PermanentError (WRONGTYPE)."""
    redis.Redis(*REDIS).set(prefix + "s", "not a stream")
    h = handler(prefix, stream=prefix + "s")
    try:
        with pytest.raises(PermanentError, match="WRONGTYPE"):
            h(make_message())
    finally:
        h.close()


def test_threads_share_one_handler(prefix: str, make_message: MakeMessage) -> None:
    """8 threads x 25 messages through one handler (pool of 3): all added once, each intact."""
    messages = [numbered(make_message, n) for n in range(200)]
    h = handler(prefix, stream=prefix + "s", pool_size=3)
    errors: list[BaseException] = []

    def work(part: list[Message]) -> None:
        try:
            for m in part:
                h(m)
                h(m)  # and a repeat, which adds nothing
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(messages[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    h.close()
    assert not errors
    got = {f[b"Idempotency-Key"].decode(): f[b"event"] for _, f in entries(prefix + "s")}
    assert len(entries(prefix + "s")) == len(messages) == len(got)
    for m in messages:
        assert got[m.idempotency_key] == webhook_body(m)


def test_server_away_then_back(prefix: str, make_message: MakeMessage) -> None:
    """While Redis is unreachable calls raise TransientError; once it is back they succeed, each
    message added exactly once (the dedup rule absorbs a retry whose first try got through)."""
    messages = [numbered(make_message, n) for n in range(10)]
    with proxied(REDIS) as proxy:
        h = handler(prefix, port=proxy.port, stream=prefix + "s", timeout=1.0)
        try:
            for m in messages[:4]:
                h(m)
            proxy.stop()
            for m in messages[4:7]:
                with pytest.raises(TransientError, match="connection failed or lost"):
                    h(m)
            proxy.start()
            for m in [messages[3], *messages[4:]]:  # messages[3] again: a retry, not added
                h(m)
        finally:
            h.close()
    ids = sorted(f[b"Idempotency-Key"].decode() for _, f in entries(prefix + "s"))
    assert ids == sorted(m.idempotency_key for m in messages)


def test_login_refused_is_transient_and_the_password_never_shows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make_message: MakeMessage
) -> None:
    """An unknown user: TransientError naming the fix; the password in no error, repr or log."""
    require_server("Redis", REDIS)
    secret = unique("Wr0ng-")
    monkeypatch.setenv("EWS_TEST_REDIS_PASSWORD", secret)
    config = RedisStreamHandlerConfig.model_validate(
        {
            "type": "redis_stream",
            "url": f"redis://{unique('nobody')}@127.0.0.1:{REDIS[1]}/0",
            "password": {"source": "env", "name": "EWS_TEST_REDIS_PASSWORD"},
            "stream": "x",
        }
    )
    caplog.set_level(logging.DEBUG)
    h = build_handler("bus", config)
    try:
        with pytest.raises(TransientError, match="login refused") as info:
            h(make_message())
    finally:
        h.close()
    for text in (str(info.value), repr(info.value), repr(h), repr(config), caplog.text):
        assert secret not in text
