"""A small in-memory MailSource: the poller's contract without a mail server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr, parsedate_to_datetime

from listener.abc import ChangePage, FetchFailure, ItemRef, ProbeStep
from listener.errors import SourceError, SyncStateLost
from listener.model import Address, Attachment, Message


@dataclass
class FakeItem:
    item_id: str
    subject: str
    sender: str = "alice@example.com"
    is_read: bool = False
    categories: list[str] = field(default_factory=list)
    folder: str = "inbox"
    received_at: datetime | None = None
    message_id: str | None = None  # the Internet Message-ID; a move keeps it
    sent_at: datetime | None = None
    mime: bytes | None = None  # what was delivered (deliver_mime), served by load_mime
    files: tuple[tuple[str, bytes], ...] | None = None  # (name, content); None: one "a.txt"


class FakeSource:
    """Folders of items; the sync state is the position in the folder's creation log."""

    kind = "fake"
    page_limit = 512

    def __init__(self, mailbox: str = "box@example.com", folder: str = "inbox") -> None:
        self.mailbox = mailbox
        self.folder = folder
        self.items: dict[str, FakeItem] = {}
        self.log: list[str] = []  # item ids in the order they arrived in the watched folder
        self._ids = itertools.count(1)
        self.fail_changes: SourceError | None = None
        self.forget_states = False  # the server lost every sync state it handed out
        # An empty sync says ``unchanged`` (as EWS does); "new" also hands out a state that
        # differs from the one asked with but means the same position (a leading zero), as a
        # server whose mailbox-wide counter moved with a change in another folder does.
        self.unchanged: str | None = None  # None, "same" or "new"
        self.gone: set[str] = set()
        self.calls: list[str] = []
        self.now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # received time of the next delivery

    def deliver(
        self,
        subject: str,
        *,
        is_read: bool = False,
        sender: str = "a@example.com",
        message_id: str | None = "",
    ) -> str:
        """A new item; ``message_id`` "" gives it a unique one, None none at all."""
        item_id = f"ID{next(self._ids)}"
        self.items[item_id] = FakeItem(
            item_id,
            subject,
            sender=sender,
            is_read=is_read,
            received_at=self.now,
            message_id=f"<{item_id}@example.com>" if message_id == "" else message_id,
        )
        self.log.append(item_id)
        return item_id

    def deliver_mime(self, raw: bytes, *, folder: str | None = None, is_read: bool = False) -> str:
        """A new item parsed from RFC 5322 ``raw`` (kept for ``mime()``, its attachments for
        their content) in ``folder``; only delivery to the watched folder enters its log."""
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        item_id = f"ID{next(self._ids)}"
        date = parsed["Date"]
        self.items[item_id] = FakeItem(
            item_id,
            str(parsed["Subject"] or ""),
            sender=parseaddr(str(parsed["From"] or ""))[1],
            is_read=is_read,
            folder=folder or self.folder,
            received_at=self.now,
            message_id=str(parsed["Message-ID"]).strip() if parsed["Message-ID"] else None,
            sent_at=parsedate_to_datetime(str(date)) if date else None,
            mime=raw,
            files=tuple(
                (part.get_filename() or "", bytes(part.get_payload(decode=True) or b""))
                for part in parsed.iter_attachments()
            ),
        )
        if self.items[item_id].folder == self.folder:
            self.log.append(item_id)
        return item_id

    def move_as_person(self, item_id: str, folder: str) -> None:
        """Move an item as a person would; moved into the watched folder it is created there
        (its earlier place in the log is blanked, so one sync never names it twice)."""
        self.items[item_id].folder = folder
        if folder == self.folder:
            self.log = ["" if i == item_id else i for i in self.log] + [item_id]

    def in_folder(self, folder: str | None = None) -> list[FakeItem]:
        return [i for i in self.items.values() if i.folder == (folder or self.folder)]

    # --- MailSource ---

    def changes(self, sync_state: str | None, max_changes: int) -> ChangePage:
        self.calls.append("changes")
        if self.fail_changes is not None:
            raise self.fail_changes
        if sync_state is not None and not sync_state.isdigit():
            # Another kind's state (an EWS base64 state, a Graph delta link): as the real
            # sources do, it is lost rather than misread (tests/sources, foreign states).
            raise SyncStateLost("not a sync state of the fake", code="ForeignSyncState")
        if self.forget_states and sync_state is not None:
            raise SyncStateLost("sync state unknown")
        start = int(sync_state or 0)
        window = self.log[start : start + max_changes]
        created = tuple(
            ItemRef(i) for i in window if i in self.items and self.items[i].folder == self.folder
        )
        end = start + len(window)
        if self.unchanged and sync_state is not None and not window:
            state = sync_state if self.unchanged == "same" else f"0{int(sync_state)}"
            return ChangePage((), state, True, unchanged=True)
        return ChangePage(created, str(end), end >= len(self.log))

    def current_state(self) -> str:
        return str(len(self.log))

    def unread(self) -> Sequence[ItemRef]:
        return [ItemRef(i.item_id) for i in self.in_folder() if not i.is_read]

    def fetch(self, refs: Sequence[ItemRef]) -> list[Message | FetchFailure]:
        self.calls.append(f"fetch:{len(refs)}")
        out: list[Message | FetchFailure] = []
        for ref in refs:
            item = self.items.get(ref.item_id)
            if item is None or ref.item_id in self.gone:
                out.append(FetchFailure(ref, "ErrorItemNotFound", gone=True))
                continue
            out.append(
                Message(
                    received_at=item.received_at,
                    mailbox=self.mailbox,
                    folder=self.folder,
                    item_id=item.item_id,
                    source="fake",
                    internet_message_id=item.message_id,
                    subject=item.subject,
                    from_=Address(email=item.sender),
                    sent_at=item.sent_at,
                    is_read=item.is_read,
                    categories=tuple(item.categories),
                    attachments=(
                        (Attachment(attachment_id="A1", name="a.txt", size=3),)
                        if item.files is None
                        else tuple(
                            Attachment(attachment_id=f"A{n}", name=name, size=len(content))
                            for n, (name, content) in enumerate(item.files, 1)
                        )
                    ),
                ).bind(self)
            )
        return out

    def _missing(self, ref: ItemRef) -> str | None:
        """The error text of a bulk operation on an item that is no more (as a server's)."""
        return None if ref.item_id in self.items else f"ErrorItemNotFound: {ref.item_id}"

    def mark_read(self, refs: Sequence[ItemRef]) -> list[str | None]:
        self.calls.append(f"mark_read:{len(refs)}")
        out = [self._missing(ref) for ref in refs]
        for ref, error in zip(refs, out, strict=True):
            if error is None:
                self.items[ref.item_id].is_read = True
        return out

    def move(self, refs: Sequence[ItemRef], folder_path: str) -> list[ItemRef | str]:
        self.calls.append(f"move:{len(refs)}")
        out: list[ItemRef | str] = []
        for ref in refs:
            error = self._missing(ref)
            if error is not None:
                out.append(error)
                continue
            item = self.items.pop(ref.item_id)
            item.item_id = f"{ref.item_id}-moved"
            item.folder = folder_path
            self.items[item.item_id] = item
            out.append(ItemRef(item.item_id))
        return out

    def categorize(self, refs: Sequence[ItemRef], category: str) -> list[str | None]:
        out = [self._missing(ref) for ref in refs]
        for ref, error in zip(refs, out, strict=True):
            if error is None and category not in self.items[ref.item_id].categories:
                self.items[ref.item_id].categories.append(category)
        return out

    def delete(self, refs: Sequence[ItemRef]) -> list[str | None]:
        out = [self._missing(ref) for ref in refs]
        for ref, error in zip(refs, out, strict=True):
            if error is None:
                self.items[ref.item_id].folder = "deleteditems"
        return out

    def find(self, folder_path: str, internet_message_id: str) -> ItemRef | None:
        self.calls.append(f"find:{folder_path}")
        for item in self.in_folder(folder_path):
            if item.message_id == internet_message_id:
                return ItemRef(item.item_id)
        return None

    def probe(self) -> Iterator[ProbeStep]:
        yield ProbeStep("folder", True, f"{self.folder!r} in memory")
        yield ProbeStep("items", True, f"{len(self.in_folder())} item(s)")

    def close(self) -> None:
        return

    # --- ContentLoader ---

    def load_mime(self, message: Message) -> bytes:
        self.calls.append("load_mime")
        item = self.items.get(message.item_id)
        if item is not None and item.mime is not None:
            return item.mime
        return f"Subject: {message.subject}\r\n\r\nbody\r\n".encode()

    def load_attachment(self, message: Message, attachment: Attachment) -> bytes:
        self.calls.append("load_attachment")
        item = self.items.get(message.item_id)
        if item is not None and item.files is not None:
            return item.files[int(attachment.attachment_id[1:]) - 1][1]
        return b"abc"


class RecordingHandler:
    """Records every call; fails as told (per subject) before succeeding."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[str] = []
        self.fail_times: dict[str, int] = {}
        self.permanent: set[str] = set()

    def __call__(self, message: Message) -> None:
        from listener.errors import PermanentError

        self.received.append(message.idempotency_key)
        if message.subject in self.permanent:
            raise PermanentError(f"{message.subject} cannot be handled")
        left = self.fail_times.get(message.subject, 0)
        if left:
            self.fail_times[message.subject] = left - 1
            raise RuntimeError(f"transient failure for {message.subject}")

    def close(self) -> None:
        return
