"""A small ContentLoader of our own and a message factory for the handler tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from listener.model import Attachment, Message


class FakeLoader:
    """Serves MIME and attachment content from memory; can fail on purpose."""

    def __init__(self) -> None:
        self.mime = b"From: alice@example.net\r\nSubject: Order 42\r\n\r\nHello\r\n"
        self.contents: dict[str, bytes] = {}
        self.mime_calls = 0
        self.fail: Exception | None = None

    def load_mime(self, message: Message) -> bytes:
        self.mime_calls += 1
        if self.fail is not None:
            raise self.fail
        return self.mime

    def load_attachment(self, message: Message, attachment: Attachment) -> bytes:
        return self.contents[attachment.attachment_id]


MakeMessage = Callable[..., Message]


@pytest.fixture
def loader() -> FakeLoader:
    """A fresh in-memory content loader."""
    return FakeLoader()


@pytest.fixture
def make_message(loader: FakeLoader) -> MakeMessage:
    """Build a bound message; ``attachments`` is a list of (name, content) pairs."""

    def make(attachments: list[tuple[str, bytes]] = (), **fields: Any) -> Message:  # type: ignore[assignment]
        atts = []
        for i, (name, content) in enumerate(attachments):
            att_id = f"A{i}"
            loader.contents[att_id] = content
            atts.append(Attachment(attachment_id=att_id, name=name, size=len(content)))
        data: dict[str, Any] = {
            "mailbox": "orders@example.com",
            "folder": "inbox",
            "item_id": "AAMkItem1",
            "internet_message_id": "<1@example.net>",
            "subject": "Order 42",
            "from": {"email": "alice@example.net", "name": "Alice"},
            "attachments": atts,
            "has_attachments": bool(atts),
        }
        data.update(fields)
        return Message.model_validate(data).bind(loader)

    return make


def ends_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` ends within ``seconds`` (a zombie waiting for a reaper counts as
    ended). The kernel delivers SIGKILL asynchronously: poll, don't sleep blind."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False
