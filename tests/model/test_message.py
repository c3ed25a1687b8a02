"""The event value: frozen, JSON round-trip, UTC times, on-demand content, schema."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from listener.model import (
    Address,
    Attachment,
    Message,
    idempotency_key,
    message_id_key,
    message_json_schema,
)


class FakeLoader:
    """Serves content from dicts and counts loads (nothing may be cached on the value)."""

    def __init__(self, mime: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> None:
        self.mime = mime
        self.contents: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []

    def load_mime(self, message: Message) -> bytes:
        self.calls.append(("mime", message.item_id))
        return self.mime

    def load_attachment(self, message: Message, attachment: Attachment) -> bytes:
        self.calls.append((message.item_id, attachment.attachment_id))
        return self.contents[attachment.attachment_id]


def full_message(**overrides: object) -> Message:
    data: dict[str, object] = {
        "mailbox": "Orders@Example.com",
        "folder": "inbox",
        "item_id": "AAMk=",
        "source": "ews",
        "internet_message_id": "<1@example.net>",
        "conversation_id": "AAQk",
        "subject": "Order 42 — ünïcode ✓",
        "sender": Address(email="robot@example.net"),
        "from": Address(email="alice@example.net", name="Alice"),
        "reply_to": (Address(email="reply@example.net"),),
        "to": (Address(email="orders@example.com"),),
        "cc": (Address(email="cc@example.org", name="C C"),),
        "bcc": (),
        "received_at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        "sent_at": datetime(2024, 5, 6, 9, 8, 0, tzinfo=timezone(timedelta(hours=2))),
        "importance": "high",
        "categories": ("Red",),
        "is_read": False,
        "has_attachments": True,
        "headers": (("Received", "a"), ("X-Tag", "one"), ("x-tag", "two")),
        "text_body": "hello",
        "html_body": "<p>hello</p>",
        "attachments": (
            Attachment(attachment_id="A1", name="a.pdf", content_type="application/pdf", size=3),
            Attachment(attachment_id="A2", name="big.bin", size=10_000),
            Attachment(attachment_id="A3", name="fwd.eml", kind="item", size=None),
        ),
    }
    data.update(overrides)
    return Message.model_validate(data)


def test_json_round_trip_is_equal() -> None:
    """A message serialised to JSON and read back is the same value, with the same hash."""
    message = full_message()
    again = Message.model_validate_json(message.to_json())
    assert again == message
    assert hash(again) == hash(message)


def test_json_uses_from_alias_and_z_times() -> None:
    """The JSON says ``from`` (not ``from_``) and UTC times with a ``Z`` suffix."""
    data = json.loads(full_message().to_json())
    assert data["from"] == {"email": "alice@example.net", "name": "Alice"}
    assert "from_" not in data
    assert data["received_at"] == "2024-05-06T07:08:09Z"
    assert data["sent_at"] == "2024-05-06T07:08:00Z"  # converted from +02:00


def test_naive_times_are_taken_as_utc() -> None:
    """A naive datetime is taken as UTC, not shifted by the host's zone."""
    message = full_message(received_at=datetime(2024, 1, 1, 12, 0, 0))
    assert message.received_at == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert json.loads(message.to_json())["received_at"] == "2024-01-01T12:00:00Z"


@pytest.mark.parametrize(
    ("field", "value"),
    [("subject", "changed"), ("is_read", True), ("to", ()), ("idempotency_key", "x")],
)
def test_message_is_frozen(field: str, value: object) -> None:
    """Assigning to any field of a message raises."""
    message = full_message()
    with pytest.raises(ValidationError):
        setattr(message, field, value)


def test_nested_values_are_frozen() -> None:
    """Addresses and attachments inside a message are frozen too; lists become tuples."""
    message = Message.model_validate(
        {"mailbox": "m", "folder": "f", "item_id": "i", "to": [{"email": "a@b"}]}
    )
    assert isinstance(message.to, tuple)
    with pytest.raises(ValidationError):
        message.to[0].email = "x"  # type: ignore[misc]


def test_unknown_fields_are_refused() -> None:
    """A typo in a field name is an error, not a silently dropped value."""
    with pytest.raises(ValidationError, match="subjekt"):
        Message.model_validate({"mailbox": "m", "folder": "f", "item_id": "i", "subjekt": "x"})


def test_idempotency_key_is_stable_and_specific() -> None:
    """The key ignores mailbox case and the item id; it changes with the Message-ID."""
    a = full_message()
    assert a.idempotency_key == message_id_key("orders@example.com", "<1@example.net>")
    assert a.idempotency_key == idempotency_key(a)
    assert full_message(mailbox="ORDERS@example.com").idempotency_key == a.idempotency_key
    assert full_message(item_id="other").idempotency_key == a.idempotency_key
    assert full_message(internet_message_id="<2@example.net>").idempotency_key != a.idempotency_key
    assert full_message(internet_message_id=None).idempotency_key != a.idempotency_key
    assert len(a.idempotency_key) == 64


def test_given_idempotency_key_is_kept() -> None:
    """A key read back from JSON is kept as is."""
    assert full_message(idempotency_key="k1").idempotency_key == "k1"


def test_mime_and_attachments_load_on_demand_each_time() -> None:
    """``mime()`` and ``content()`` go to the loader on every call: nothing big is cached."""
    loader = FakeLoader()
    loader.contents["A1"] = b"pdf"
    message = full_message().bind(loader)
    assert message.mime() == loader.mime
    assert message.mime() == loader.mime
    assert message.attachments[0].content() == b"pdf"
    assert loader.calls == [("mime", "AAMk="), ("mime", "AAMk="), ("AAMk=", "A1")]


def test_unbound_message_says_so() -> None:
    """Without a loader, ``mime()`` and ``content()`` raise a clear error."""
    message = full_message()
    assert not message.bound
    with pytest.raises(RuntimeError, match="not bound"):
        message.mime()
    with pytest.raises(RuntimeError, match="not bound"):
        message.attachments[0].content()


def test_loader_is_not_part_of_the_value() -> None:
    """A bound and an unbound copy are equal, and the loader never reaches JSON or repr."""
    bound = full_message().bind(FakeLoader())
    assert bound == full_message()
    assert "FakeLoader" not in repr(bound)
    assert "FakeLoader" not in bound.to_json()


def test_attachment_shared_between_messages_loads_through_its_own_message() -> None:
    """An Attachment instance given to two messages loads with each message's own loader."""
    shared = Attachment(attachment_id="A1", name="a.txt", size=1)
    first, second = FakeLoader(), FakeLoader()
    first.contents["A1"], second.contents["A1"] = b"1", b"2"
    m1 = Message(mailbox="m", folder="f", item_id="one", attachments=(shared,)).bind(first)
    m2 = Message(mailbox="m", folder="f", item_id="two", attachments=(shared,)).bind(second)
    assert (m1.attachments[0].content(), m2.attachments[0].content()) == (b"1", b"2")


def test_inline_attachments_up_to_the_limit() -> None:
    """``attachments_inline_max`` inlines small attachments as base64 and only those."""
    loader = FakeLoader()
    loader.contents["A1"] = b"pdf"
    message = full_message().bind(loader)
    data = json.loads(message.to_json(attachments_inline_max=100))
    assert base64.b64decode(data["attachments"][0]["content_base64"]) == b"pdf"
    assert "content_base64" not in data["attachments"][1]  # 10,000 bytes: too big
    assert "content_base64" not in data["attachments"][2]  # unknown size: not loaded
    assert loader.calls == [("AAMk=", "A1")]
    # A receiver can read the inlined event back into the model.
    assert Message.model_validate(data) == message


def test_headers_lookup_is_case_insensitive() -> None:
    """``header`` gives the first value, ``header_values`` every value, ignoring name case."""
    message = full_message()
    assert message.header("X-TAG") == "one"
    assert message.header_values("x-tag") == ("one", "two")
    assert message.header("missing") is None


def test_schema_describes_the_json() -> None:
    """Every key of the JSON event is in the schema, all required, times as date-time."""
    schema = message_json_schema()
    data = json.loads(full_message().to_json())
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(data) == set(schema["properties"])
    assert set(schema["required"]) == set(data)
    assert schema["additionalProperties"] is False
    received = schema["properties"]["received_at"]["anyOf"][0]
    assert received["format"] == "date-time"
    attachment = schema["$defs"]["Attachment"]
    assert set(data["attachments"][0]) < set(attachment["properties"])
    assert "content_base64" in attachment["properties"]
    json.dumps(schema)  # serialisable as is
