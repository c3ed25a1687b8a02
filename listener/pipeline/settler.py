"""Steps 5 and 6 of a poll on a thread of its own: post-process and commit batches in order.

While batch N+1 is handed over, batch N is marked read (moved, …) and committed: the UpdateItem
round trip and the database transaction overlap the handlers. Strictly in order and one at a time,
each batch post-processed before it is committed (as before issue 14): a crash between the two
leaves a page whose sync state did not move, which the restart syncs again and tidies up (the
ledger says what is done). A batch's sync state is committed only after every earlier batch of the
poll: once one settle fails, the later ones are not settled at all (their records stay with the
poll, which saves them without a sync state when it ends: ``Poller._saving_on_error``).

One batch at a time: ``submit`` waits for the previous batch to be settled before it hands the
next over to the thread. So at most two batches are uncommitted at any moment, the one being
handed over and the one being settled beside it, which bounds what a SIGKILL can repeat
(``tests/e2e/test_graph_faults.py::test_sigkill_mid_batch_and_restart``), and a slow tidy-up
holds the hand-over back instead of piling up messages in memory. The last batch of a poll is
settled on the poll's thread (``inline``), after those before it: a poll of one batch, the usual
idle poll, starts no thread.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

import structlog

__all__ = ["Settler"]

log = structlog.get_logger("listener.poller")

T = TypeVar("T")


class Settler(Generic[T]):
    """Calls ``settle(item)`` for every submitted item, in order, on one thread."""

    def __init__(self, settle: Callable[[T], None]) -> None:
        self._settle = settle
        self._queue: queue.Queue[tuple[T] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, item: T, *, inline: bool = False) -> None:
        """Settle ``item`` once the one before it is settled: here and now with ``inline``, else
        on the settler's thread. Raises the error of an earlier settle, which also means this one
        is not settled."""
        self.drain()
        self.raise_if_failed()
        if inline:
            self._settle(item)
            return
        if self._thread is None:
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._work,), name="settler", daemon=True
            )
            self._thread.start()
        self._queue.put((item,))

    def drain(self) -> None:
        """Wait until every submitted item is settled (or skipped after an error)."""
        if self._thread is not None:
            self._queue.join()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                if entry is None:
                    return
                if self._error is None:
                    self._settle(entry[0])
            except BaseException as e:
                self._error = e
            finally:
                self._queue.task_done()

    def __enter__(self) -> Settler[T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Settle everything submitted, then stop the thread; raise a settle's error unless the
        block raised already."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if kind is None:
            self.raise_if_failed()
