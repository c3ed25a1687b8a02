"""Content as streams: ``Message.open_mime()`` and ``Attachment.open()`` beside the bytes forms."""

from __future__ import annotations

import base64
import io
from typing import IO

import pytest

from listener.model import Attachment, Message


class _Counting(io.BytesIO):
    """Remembers how many bytes were read from it."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


class StreamLoader:
    """A streaming :class:`ContentLoader` that records every file it hands out."""

    def __init__(self, mime: bytes, contents: dict[str, bytes]) -> None:
        self._mime = mime
        self._contents = contents
        self.opened: list[_Counting] = []

    def _file(self, data: bytes) -> IO[bytes]:
        f = _Counting(data)
        self.opened.append(f)
        return f

    def open_mime(self, message: Message) -> IO[bytes]:
        return self._file(self._mime)

    def open_attachment(self, message: Message, attachment: Attachment) -> IO[bytes]:
        return self._file(self._contents[attachment.attachment_id])


class BytesLoader:
    """The first loader protocol: bytes only."""

    def load_mime(self, message: Message) -> bytes:
        return b"Subject: old\r\n\r\n"

    def load_attachment(self, message: Message, attachment: Attachment) -> bytes:
        return b"old content"


def _message(*attachments: Attachment) -> Message:
    return Message(mailbox="a@example.com", folder="inbox", item_id="I1", attachments=attachments)


def test_streams_and_bytes_give_the_same_content_and_every_file_is_closed() -> None:
    """``open_mime``/``open`` read what ``mime``/``content`` return; the bytes forms close it."""
    loader = StreamLoader(b"Subject: x\r\n\r\nbody", {"A": b"", "B": b"\x00" * 10})
    message = _message(
        Attachment(attachment_id="A", name="empty.txt", size=0),
        Attachment(attachment_id="B", name="b.bin", size=10),
    ).bind(loader)

    with message.open_mime() as f:
        assert f.read() == b"Subject: x\r\n\r\nbody"
    assert message.mime() == b"Subject: x\r\n\r\nbody"
    assert [a.content() for a in message.attachments] == [b"", b"\x00" * 10]
    with message.attachments[1].open() as f:
        assert f.read(4) == b"\x00" * 4
    assert all(f.closed for f in loader.opened)


def test_a_bytes_only_loader_still_serves_both_forms() -> None:
    """A loader written for the bytes protocol (``load_mime``) still works, streams included."""
    message = _message(Attachment(attachment_id="A", name="a.txt", size=11)).bind(BytesLoader())
    assert message.mime() == b"Subject: old\r\n\r\n"
    with message.attachments[0].open() as f:
        assert f.read() == b"old content"


@pytest.mark.parametrize(
    ("reported", "actual", "inlined"),
    [(3, b"abc", True), (0, b"", True), (3, b"much more than three bytes", False)],
)
def test_inlining_reads_at_most_one_byte_past_the_limit(
    reported: int, actual: bytes, inlined: bool
) -> None:
    """A size the server under-reports is not inlined, and never read whole into memory."""
    loader = StreamLoader(b"", {"A": actual})
    message = _message(Attachment(attachment_id="A", name="a", size=reported)).bind(loader)

    data = message.to_dict(attachments_inline_max=3)

    if inlined:
        assert base64.b64decode(data["attachments"][0]["content_base64"]) == actual
    else:
        assert "content_base64" not in data["attachments"][0]
        assert loader.opened[0].read_bytes == 4  # the limit + 1
    assert all(f.closed for f in loader.opened)
