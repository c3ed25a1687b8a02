"""The webhook handler against a real HTTP(S) server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ews_listener_emulators._http import LoopbackServer, QuietHandler
from ews_listener_emulators.ca import EmulatorCA
from listener.errors import PermanentError, TransientError
from listener.handlers import (
    HandlerPermanentError,
    HandlerTransientError,
    WebhookHandler,
    WebhookHandlerConfig,
    build_handler,
)
from listener.handlers.webhook import parse_retry_after, sign
from tests.handlers.conftest import MakeMessage


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    hold: threading.Event | None = None  # answer only once this is set


class _Receiver(QuietHandler):
    def do_POST(self) -> None:
        owner: Receiver = self.server.owner  # type: ignore[attr-defined]
        body = self.read_body(10_000_000)
        assert body is not None
        owner.requests.put((self.path, dict(self.headers.items()), body))
        reply = owner.replies.get_nowait() if not owner.replies.empty() else Reply()
        if reply.hold is not None:
            reply.hold.wait(10)
        if reply.drop:
            self.drop_connection()
            return
        self.send_body(reply.status, reply.body, "text/plain", reply.headers)


class Receiver(LoopbackServer):
    """A webhook receiver that records requests and answers from a script."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(_Receiver, **kw)
        self.requests: queue.Queue[tuple[str, dict[str, str], bytes]] = queue.Queue()
        self.replies: queue.Queue[Reply] = queue.Queue()

    def last(self) -> tuple[str, dict[str, str], bytes]:
        return self.requests.get(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A plain-http receiver on a free loopback port."""
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmulatorCA:
    """The emulator's throw-away CA."""
    return EmulatorCA(tmp_path_factory.mktemp("ca"))


def test_posts_signed_json_with_idempotency_key(
    receiver: Receiver, make_message: MakeMessage
) -> None:
    """The body is the event JSON; the signature is the HMAC of exactly those bytes."""
    message = make_message()
    handler = WebhookHandler(
        "hook", receiver.url + "/in", secret=_Secret("s3cret"), headers={"X-Tenant": "acme"}
    )
    handler(message)
    path, headers, body = receiver.last()
    handler.close()
    assert path == "/in"
    assert json.loads(body) == json.loads(message.to_json())
    assert headers["Idempotency-Key"] == message.idempotency_key
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Ews-Listener-Signature"] == f"sha256={expected}"
    assert headers["X-Tenant"] == "acme"
    assert headers["Content-Type"].startswith("application/json")


def test_no_secret_no_signature(receiver: Receiver, make_message: MakeMessage) -> None:
    """Without a secret the signature header is absent."""
    WebhookHandler("hook", receiver.url)(make_message())
    assert "X-Ews-Listener-Signature" not in receiver.last()[1]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, None),
        (201, None),
        (204, None),
        (408, HandlerTransientError),
        (429, HandlerTransientError),
        (500, HandlerTransientError),
        (502, HandlerTransientError),
        (503, HandlerTransientError),
        (400, HandlerPermanentError),
        (401, HandlerPermanentError),
        (404, HandlerPermanentError),
        (410, HandlerPermanentError),
        (422, HandlerPermanentError),
        (301, HandlerPermanentError),
    ],
)
def test_status_classification(
    receiver: Receiver, make_message: MakeMessage, status: int, outcome: type[Exception] | None
) -> None:
    """2xx succeeds; 408, 429 and 5xx are transient; other answers permanent, with the status."""
    receiver.replies.put(Reply(status, b"  server\n says   no  " if status != 204 else b""))
    handler = WebhookHandler("hook", receiver.url)
    if outcome is None:
        handler(make_message())
        return
    with pytest.raises(outcome) as info:
        handler(make_message())
    assert info.value.status == status  # type: ignore[attr-defined]
    assert f"answered {status}" in str(info.value)
    assert "server says no" in str(info.value)  # a one-line excerpt of the body
    expected_base = TransientError if outcome is HandlerTransientError else PermanentError
    assert isinstance(info.value, expected_base)


def test_body_excerpt_is_short(receiver: Receiver, make_message: MakeMessage) -> None:
    """A huge error page is cut to a short excerpt."""
    receiver.replies.put(Reply(500, b"<html>" + b"x" * 100_000))
    with pytest.raises(HandlerTransientError) as info:
        WebhookHandler("hook", receiver.url)(make_message())
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), ("0", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_is_on_the_error(
    receiver: Receiver, make_message: MakeMessage, header: str, expected: float
) -> None:
    """``Retry-After`` (seconds or a past HTTP date) becomes ``retry_after`` in seconds."""
    receiver.replies.put(Reply(429, b"slow down", {"Retry-After": header}))
    with pytest.raises(HandlerTransientError) as info:
        WebhookHandler("hook", receiver.url)(make_message())
    assert info.value.retry_after == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("30", 30.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # 100 s after the epoch; "now" is 40
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delta-seconds and HTTP dates parse; junk is ignored; past dates mean now."""
    assert parse_retry_after(value, now=lambda: 40.0) == expected


def test_connection_refused_is_transient(make_message: MakeMessage) -> None:
    """Nobody listening is a network error: transient, without a status."""
    server = Receiver()
    server.start()
    url = server.url
    server.stop()
    with pytest.raises(HandlerTransientError) as info:
        WebhookHandler("hook", url)(make_message())
    assert info.value.status is None


def test_dropped_connection_is_transient(receiver: Receiver, make_message: MakeMessage) -> None:
    """A connection closed without an answer is transient."""
    receiver.replies.put(Reply(drop=True))
    with pytest.raises(HandlerTransientError):
        WebhookHandler("hook", receiver.url)(make_message())


def test_timeout_is_transient(receiver: Receiver, make_message: MakeMessage) -> None:
    """A receiver slower than ``timeout`` gives a transient error."""
    hold = threading.Event()
    receiver.replies.put(Reply(hold=hold))
    try:
        with pytest.raises(HandlerTransientError, match="Timeout"):
            WebhookHandler("hook", receiver.url, timeout=0.2)(make_message())
    finally:
        hold.set()


def test_url_secrets_stay_out_of_errors(receiver: Receiver, make_message: MakeMessage) -> None:
    """A token in the URL's query or user info never appears in errors or repr."""
    url = receiver.url.replace("http://", "http://user:pw-xyz@") + "/hook?token=tok-abc"
    receiver.replies.put(Reply(500, b"boom"))
    handler = WebhookHandler("hook", url)
    with pytest.raises(HandlerTransientError) as info:
        handler(make_message())
    for text in (str(info.value), repr(handler)):
        assert "tok-abc" not in text
        assert "pw-xyz" not in text


def test_inline_attachments(receiver: Receiver, make_message: MakeMessage) -> None:
    """Attachments up to ``attachments_inline_max`` bytes travel as base64 in the event."""
    message = make_message(attachments=[("small.txt", b"tiny"), ("big.bin", b"B" * 5000)])
    WebhookHandler("hook", receiver.url, attachments_inline_max=1000)(message)
    sent = json.loads(receiver.last()[2])
    assert base64.b64decode(sent["attachments"][0]["content_base64"]) == b"tiny"
    assert "content_base64" not in sent["attachments"][1]


def test_tls_trusts_the_configured_ca_despite_the_environment(
    ca: EmulatorCA,
    tmp_path: Path,
    make_message: MakeMessage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ca_bundle`` is what is trusted, whatever REQUESTS_CA_BUNDLE/SSL_CERT_FILE say."""
    other = EmulatorCA(tmp_path / "other")  # a CA that did not sign the server
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(other.ca_file))
    server = Receiver(ssl_context=ca.server_context())
    server.start()
    try:
        WebhookHandler("hook", server.url, ca_bundle=ca.ca_file)(make_message())
        assert server.last()[0] == "/"
        # And the environment's CA does not make an untrusted server acceptable either.
        with pytest.raises(HandlerTransientError, match="certificate verify failed"):
            WebhookHandler("hook", server.url, ca_bundle=other.ca_file)(make_message())
        with pytest.raises(HandlerTransientError, match="certificate verify failed"):
            WebhookHandler("hook", server.url)(make_message())
    finally:
        server.stop()


def test_build_from_config_with_a_secret_source(
    receiver: Receiver, make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``[handlers.NAME]`` table with an env secret signs with that secret; repr hides it."""
    monkeypatch.setenv("HOOK_SECRET", "from-env-secret")
    config = WebhookHandlerConfig.model_validate(
        {
            "type": "webhook",
            "url": receiver.url + "/x?sig=zzz",
            "secret": {"source": "env", "name": "HOOK_SECRET"},
            "headers": {"Authorization": "Bearer header-token"},
            "timeout": 5,
        }
    )
    handler = build_handler("hook", config)
    handler(make_message())
    _, headers, body = receiver.last()
    assert headers["X-Ews-Listener-Signature"] == sign("from-env-secret", body)
    assert headers["Authorization"] == "Bearer header-token"
    for text in (repr(config), repr(handler), str(config)):
        assert "header-token" not in text
        assert "from-env-secret" not in text
        assert "zzz" not in text
    handler.close()


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"url": "http://example.com/hook"}, "must use https"),
        ({"url": "ftp://example.com/hook"}, "https URL"),
        ({"url": "not a url"}, "https URL"),
        ({"timeout": 0}, "timeout"),
        ({"attachments_inline_max": -1}, "attachments_inline_max"),
        ({"headers": {"X-A": "a\r\nInjected: 1"}}, "CR, LF"),
        ({"headers": {"Bad Name": "v"}}, "invalid HTTP header name"),
        ({"secret": {"source": "nowhere"}}, "secret"),
        ({"retries": 3}, "retries"),
    ],
)
def test_invalid_webhook_config(changes: dict[str, Any], fragment: str) -> None:
    """Bad webhook settings are refused at load with a message naming the problem."""
    data = {"type": "webhook", "url": "https://hooks.example.com/in", **changes}
    with pytest.raises(ValidationError) as info:
        WebhookHandlerConfig.model_validate(data)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x", "https://a.b/x"]
)
def test_loopback_http_is_allowed(url: str) -> None:
    """Plain http is accepted for loopback receivers only."""
    assert WebhookHandlerConfig(type="webhook", url=url).url == url


class _Secret:
    """A minimal SecretSource of our own."""

    def __init__(self, value: str) -> None:
        from pydantic import SecretStr

        self._value = SecretStr(value)

    def read(self) -> Any:
        return self._value

    def describe(self) -> str:
        return "test:**********"
