"""Configuration of the broker handlers: templates, URLs, secrets and missing libraries."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from listener.handlers import HandlerConfigError, build_handler
from listener.handlers._brokers import Template, token
from listener.handlers.config import HandlerConfig
from tests.handlers.conftest import MakeMessage

ADAPTER: TypeAdapter[Any] = TypeAdapter(HandlerConfig)
BASE = {
    "amqp": {"type": "amqp", "url": "amqp://guest@127.0.0.1/%2F", "routing_key": "k"},
    "nats": {"type": "nats", "url": "nats://127.0.0.1:4222", "subject": "s"},
    "redis_stream": {"type": "redis_stream", "url": "redis://127.0.0.1/0", "stream": "s"},
}


def test_template_renders_each_field_as_one_token(make_message: MakeMessage) -> None:
    """Dots, spaces and wildcards in values become ``_``; the literal text stays."""
    message = make_message(folder="Inbox/Orders", **{"from": {"email": "A.B@Sub.Example.net"}})
    template = Template.parse("mail.{mailbox}.{sender_domain}.{sender_local}.{folder}")
    assert template.render(message) == "mail.orders@example_com.sub_example_net.a_b.inbox_orders"
    assert token("") == "_"
    assert token("a*b>c d") == "a_b_c_d"


@pytest.mark.parametrize(
    ("kind", "field", "value", "expected"),
    [
        ("amqp", "routing_key", "mail.{sender_domian}", "unknown placeholder {sender_domian}"),
        ("amqp", "exchange", "x.{mailbox:>10}", "unknown placeholder {mailbox:>10}"),
        ("nats", "subject", "mail.{mailbox!r}", "unknown placeholder {mailbox!r}"),
        ("nats", "subject", "mail.*", "not a publishable subject"),
        ("nats", "subject", "mail..{mailbox}", "not a publishable subject"),
        ("redis_stream", "stream", "mail:{mailbox", "not a valid template"),
    ],
)
def test_bad_templates_are_refused_naming_field_and_value(
    kind: str, field: str, value: str, expected: str
) -> None:
    """A template error names the field, the value and (for a placeholder) the vocabulary."""
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python({**BASE[kind], field: value})
    text = str(info.value)
    assert expected in text
    assert f"{field}:" in text
    assert repr(value) in text


@pytest.mark.parametrize("kind", sorted(BASE))
def test_password_in_url_refused_and_not_echoed(kind: str) -> None:
    """``scheme://user:PASSWORD@host``: refused, pointing at ``password``; the value not shown."""
    scheme = BASE[kind]["url"].split(":", 1)[0]
    url = f"{scheme}://user:S3cr3t-value@127.0.0.1:1/"
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python({**BASE[kind], "url": url})
    message = info.value.errors()[0]["msg"]
    assert "password = {" in message
    assert "S3cr3t-value" not in message


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("amqp", "amqp://rabbit.example/%2F"),
        ("nats", "nats://nats.example:4222"),
        ("redis_stream", "redis://redis.example/0"),
    ],
)
def test_plaintext_to_other_hosts_refused(kind: str, url: str) -> None:
    """Plain connections only to loopback (the webhook's rule); TLS schemes or ``tls`` pass."""
    with pytest.raises(ValidationError, match="not encrypted"):
        ADAPTER.validate_python({**BASE[kind], "url": url})
    assert ADAPTER.validate_python({**BASE[kind], "url": url, "tls": True}).use_tls


def test_load_error_masks_a_password_in_the_url(tmp_path: Any) -> None:
    """check-config's message shows the URL without the password."""
    from listener.config import ConfigError, load_settings

    path = tmp_path / "c.toml"
    path.write_text(
        '[handlers.bus]\ntype = "redis_stream"\nurl = "redis://u:S3cr3t-value@127.0.0.1/0"\n'
        'stream = "s"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "S3cr3t-value" not in str(info.value)
    assert "handlers.bus.url" in str(info.value)


@pytest.mark.parametrize(
    ("kind", "module", "extra"),
    [("amqp", "pika", "amqp"), ("nats", "nats", "nats"), ("redis_stream", "redis", "redis")],
)
def test_missing_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, kind: str, module: str, extra: str
) -> None:
    """Without the client library, building fails with the pip command to run."""
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    config = ADAPTER.validate_python(BASE[kind])
    with pytest.raises(HandlerConfigError) as info:
        build_handler("bus", config)
    assert f"pip install 'ews-listener[{extra}]'" in str(info.value)
    assert "handlers.bus" in str(info.value)


@pytest.mark.parametrize("kind", sorted(BASE))
def test_build_does_no_io(kind: str) -> None:
    """Building connects to nothing and reads no secret (a broker that is down fails messages,
    not start-up): an unset environment variable does not matter until a message arrives."""
    config = ADAPTER.validate_python(
        {**BASE[kind], "password": {"source": "env", "name": "EWS_TEST_UNSET_VARIABLE_X"}}
    )
    handler = build_handler("bus", config)
    assert "bus" in repr(handler)
    handler.close()
