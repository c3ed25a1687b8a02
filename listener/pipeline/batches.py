"""Steps 2 and 3 of a poll: full batches of new mail across page boundaries, fetched one ahead.

``BatchReader`` asks the source for pages of changes (≤ ``page_limit`` each) only as its buffer
runs short and cuts batches of exactly ``batch_size`` from that buffer, so a batch may end one page
and begin the next: 512 + 512 new items in batches of 100 cost 11 GetItem, not 12
(``tests/poller/test_pipeline.py``). Each batch carries the sync state of the last page it
completes, if any: committed with that batch, it moves the cursor past pages every message of
which is then settled (the earlier batches of the page committed before it, in order).

``Prefetcher`` reads the next batch on a thread of its own while the poll hands the current one
over: the GetItem round trip (and, at a page's end, the SyncFolderItems one) overlaps the
handlers. One batch ahead, not more: a stop discards at most one fetched batch, and the memory
of a poll stays two batches of messages.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from listener.abc import FetchFailure, ItemRef, MailSource
from listener.errors import SyncStateLost
from listener.model import Message

__all__ = ["Batch", "BatchReader", "Prefetcher"]


@dataclass(frozen=True, kw_only=True)
class Batch:
    """New items of the folder, fetched; ``sync_state`` is the source's own state to commit with
    them (None: the page they belong to goes on in the next batch)."""

    fetched: Sequence[Message | FetchFailure]
    sync_state: str | None
    # Every page read so far was ``ChangePage.unchanged`` (and no resync): ``sync_state`` is as
    # good as the state the reader started from.
    unmoved: bool = False


def not_before(
    floor: datetime | None, fetched: Sequence[Message | FetchFailure]
) -> Sequence[Message | FetchFailure]:
    """Without the messages received before ``floor`` (a resync keeps ``start_from``)."""
    if floor is None:
        return fetched
    return [
        m
        for m in fetched
        if not (isinstance(m, Message) and m.received_at is not None and m.received_at < floor)
    ]


class BatchReader:
    """Batches of ``batch_size`` new items from ``state`` on, until the folder is drained."""

    def __init__(
        self,
        source: MailSource,
        state: str | None,
        *,
        batch_size: int,
        floor: datetime | None,
        resync: Callable[[str], datetime | None],
    ) -> None:
        self.source = source
        self.batch_size = batch_size
        self.pages = 0
        self._state = state
        self._floor = floor
        self._resync = resync  # the server lost the state: log, and the floor of the new sync
        self._refs: deque[ItemRef] = deque()
        self._queued = 0  # refs ever buffered
        self._taken = 0  # refs ever cut into batches
        self._ends: deque[tuple[int, str]] = deque()  # (refs buffered by then, a page's state)
        self._drained = False
        self._moved = state is None  # a page that listed a change, or a sync from the start

    @property
    def exhausted(self) -> bool:
        """Nothing left: every page read and every batch cut."""
        return self._drained and not self._refs and not self._ends

    def next(self) -> Batch | None:
        """The next batch, None once exhausted; raises what the source raises."""
        while len(self._refs) < self.batch_size and not self._drained:
            self._read_page()
        if self.exhausted:
            return None
        refs = [self._refs.popleft() for _ in range(min(self.batch_size, len(self._refs)))]
        self._taken += len(refs)
        state = None
        while self._ends and self._ends[0][0] <= self._taken:
            state = self._ends.popleft()[1]
        fetched = not_before(self._floor, self.source.fetch(refs)) if refs else []
        return Batch(fetched=fetched, sync_state=state, unmoved=not self._moved)

    def _read_page(self) -> None:
        try:
            page = self.source.changes(self._state, self.source.page_limit)
        except SyncStateLost as e:
            if self._state is None:
                raise
            # Sync again from the start of the folder: it lists what is buffered again.
            self._state, self._floor = None, self._resync(str(e))
            self._moved = True
            self._refs.clear()
            self._ends.clear()
            self._queued = self._taken
            return
        self.pages += 1
        if not page.unchanged or page.created:
            self._moved = True
        self._refs.extend(page.created)
        self._queued += len(page.created)
        self._ends.append((self._queued, page.sync_state))
        self._state = page.sync_state
        self._drained = page.last_page


class Prefetcher:
    """``BatchReader.next`` one batch ahead, on a thread of its own (started on first need)."""

    def __init__(self, reader: BatchReader) -> None:
        self.reader = reader
        self._executor: ThreadPoolExecutor | None = None
        self._ahead: Future[Batch | None] | None = None

    @property
    def exhausted(self) -> bool:
        """Nothing left: the batch last returned was the last one."""
        return self._ahead is None and self.reader.exhausted

    def next(self, *, ahead: bool = True) -> Batch | None:
        """The next batch; with ``ahead`` the one after it is being read when this returns."""
        if self._ahead is not None:
            future, self._ahead = self._ahead, None
            batch = future.result()
        else:
            batch = self.reader.next()
        if ahead and batch is not None and not self.reader.exhausted:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
            context = contextvars.copy_context()
            self._ahead = self._executor.submit(context.run, self.reader.next)
        return batch

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Wait for a read still under way (its batch is dropped: the next poll reads it again)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
