"""The console format: one short sentence per handled message; JSON keeps the full key."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

import structlog

from listener.handlers.log import LogHandler
from listener.model import Message
from listener.observability.logging import get_logger

Configure = Callable[..., io.StringIO]

# What a newcomer's demo shows: a usual subject, two usual addresses, one attachment.
NORMAL = {
    "mailbox": "orders@contoso.com",
    "folder": "inbox",
    "item_id": "AAMkItem1",
    "internet_message_id": "<1@fabrikam.com>",
    "subject": "Invoice 2024-117 for order 42",
    "from": {"email": "alice@fabrikam.com", "name": "Alice"},
    "attachments": [{"attachment_id": "A0", "name": "invoice.pdf", "size": 3}],
    "has_attachments": True,
}


def _lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line.strip()]


def test_handled_message_is_one_short_line_leading_with_what_people_scan(
    configured: Configure,
) -> None:
    """mailbox, sender, subject, attachments, then a 12-hex key: one line under 120 characters."""
    buffer = configured(fmt="console")
    message = Message.model_validate(NORMAL)
    with structlog.contextvars.bound_contextvars(credential="sales", poll_id="1cd48da05b9a"):
        LogHandler("log")(message)
    [line] = _lines(buffer)
    assert len(line) < 120, line
    assert message.idempotency_key not in line
    assert f"key={message.idempotency_key[:12]}" in line
    where = [line.index(part) for part in ("orders@contoso.com", "alice@fabrikam.com", "Invoice")]
    assert where == sorted(where), line
    assert "+1 attachment" in line
    assert re.match(r"^\d\d:\d\d:\d\d handled ", line), line


def test_a_long_subject_is_cut_and_a_warning_level_shown(configured: Configure) -> None:
    """A 200-character subject is cut at 60; a log handler at warning level says so."""
    buffer = configured(fmt="console")
    LogHandler("log", level="warning")(Message.model_validate({**NORMAL, "subject": "x" * 200}))
    [line] = _lines(buffer)
    assert "[warning] handled" in line
    assert "x" * 59 + "…" in line
    assert "x" * 60 not in line


def test_json_line_keeps_every_field_and_the_full_key(configured: Configure) -> None:
    """The JSON line of the same message has the 64-hex key and the folder and handler."""
    buffer = configured(fmt="json")
    message = Message.model_validate(NORMAL)
    LogHandler("log")(message)
    [record] = [json.loads(line) for line in _lines(buffer)]
    assert record["event"] == "message.handled"
    assert record["key"] == message.idempotency_key
    assert len(record["key"]) == 64
    assert (record["folder"], record["handler"], record["attachments"]) == ("inbox", "log", 1)
    assert record["timestamp"].endswith("Z")


def test_other_events_get_short_keys_and_times_on_the_console(configured: Configure) -> None:
    """Any 64-hex value is cut to 12 characters on the console; the time is HH:MM:SS."""
    buffer = configured(fmt="console")
    key = "d84a43c8a209fb5751a1e92cf57be756ebfc9584c738ac367230dc6ad8d73fe6"
    get_logger("listener.poller").info("message.failed", key=key, attempt=2)
    [line] = _lines(buffer)
    assert key not in line
    assert "key=d84a43c8a209" in line
    assert re.match(r"^\d\d:\d\d:\d\d ", line), line
