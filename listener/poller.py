"""One poll of one mailbox folder: the six steps of DESIGN.md, and nothing else.

1. hand over the retries that are due (pending queue, GetItem by id)
2. ask the source for the changes since the stored sync state (≤ batch size a page)
3. fetch the new items as ``Message`` values
4. route each to its handlers, skipping what the ledger says is done
5. post-process the successes in bulk; park transient failures, dead-letter permanent ones
6. commit ledger + pending + dead letters + the new sync state in ONE transaction, next page

The sync state moves forward only when every message of the page is either in the ledger or
parked, so a crash anywhere loses nothing; at worst a message is handed over again with the same
idempotency key.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from listener.abc import (
    DeadLetter,
    FetchFailure,
    Handler,
    ItemRef,
    LedgerEntry,
    MailSource,
    PendingEntry,
    StateStore,
)
from listener.errors import PermanentError, SourceError, SyncStateLost
from listener.identity import identify
from listener.model import Message, message_fingerprint
from listener.polling import FailurePolicy, PollerSettings, PollResult

__all__ = ["FailurePolicy", "PollResult", "Poller", "PollerSettings"]

log = structlog.get_logger("listener.poller")

# Stored sync states carry the kind of the source that issued them ("graph:https://…"); a state
# written before issue 13 has no prefix and is EWS's (base64, which has no colon).
_LEGACY_KIND = "ews"


def _stored(kind: str, state: str) -> str:
    return f"{kind}:{state}"


def _parse_stored(value: str) -> tuple[str, str]:
    """(kind, the source's own state) of a stored sync state."""
    kind, sep, state = value.partition(":")
    if sep and kind.isidentifier() and not state.startswith("//"):
        return kind, state
    return _LEGACY_KIND, value


def _batches(refs: Sequence[ItemRef], size: int) -> list[tuple[Sequence[ItemRef], bool]]:
    """``refs`` in chunks of ``size``, each with "is the last one"; one empty chunk for none."""
    chunks = [refs[i : i + size] for i in range(0, len(refs), size)] or [refs]
    return [(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]


@dataclass
class _Page:
    """The outcome of handing over one page (or one batch of retries)."""

    succeeded: list[Message] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    pending: list[PendingEntry] = field(default_factory=list)
    dead: list[tuple[ItemRef, DeadLetter]] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    # (old item id, new item id) of dead letters moved to the dead-letter folder
    relocated: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True
    saved: bool = False  # its records are committed (by the poll, or by flush() at shutdown)


Router = Callable[[Message], Sequence[str]]
Observer = Callable[[str, Mapping[str, Any]], None]


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds(value: object) -> float:
    """A handler's ``retry_after`` as seconds; 0 for anything that is not a usable number."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


class Poller:
    """Polls one folder of one mailbox; ``poll()`` is safe to call again after any failure."""

    def __init__(
        self,
        settings: PollerSettings,
        source: MailSource,
        store: StateStore,
        router: Router,
        handlers: Mapping[str, Handler],
        *,
        stop: threading.Event | None = None,
        observe: Observer | None = None,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.router = router
        self.handlers = handlers
        self._stop = stop or threading.Event()
        self._observe = observe or (lambda event, data: None)
        self._clock = clock
        self._rng = rng or random.Random()
        self._commit_lock = threading.Lock()
        self._unsaved: _Page | None = None
        self._flushed = False

    @property
    def name(self) -> str:
        return self.settings.name

    # --- the loop -------------------------------------------------------------------------------

    def poll(self) -> PollResult:
        """One poll: due retries, then every page of new changes until the folder is drained."""
        result = PollResult(self.name)
        with (
            structlog.contextvars.bound_contextvars(
                mailbox=self.name,
                credential=self.settings.credential,
                poll_id=uuid.uuid4().hex[:12],
            ),
            self._saving_on_error(),
        ):
            state, floor = self._starting_state()
            self._retry_due(result)  # 1
            while not self._stop.is_set():
                try:
                    page = self.source.changes(state, self.source.page_limit)  # 2
                except SyncStateLost as e:
                    if state is None:
                        raise
                    state, floor = None, self._resync_floor(str(e))
                    continue
                result.pages += 1
                for batch, last in _batches(page.created, self.settings.batch_size):
                    fetched = self._not_before(floor, self.source.fetch(batch))  # 3
                    outcome = self._hand_over(fetched, result)  # 4
                    # Shutting down: commit now, tidy up after the restart (it syncs this page
                    # again and tidies what the ledger says is done).
                    outcome.complete = outcome.complete and not self._stop.is_set()
                    end = _stored(self.source.kind, page.sync_state) if last else None
                    self._settle(outcome, result, end)  # 5, 6
                    if not outcome.complete:
                        return result
                if page.last_page:
                    break
                state = page.sync_state
        return result

    @contextmanager
    def _saving_on_error(self) -> Iterator[None]:
        """Whatever ends a poll early, what its handlers did is committed (sync state untouched).

        An exception after a handler returned (a bug, a store or observer failure) would
        otherwise lose the record of that hand-over, and the message would be handed over again.
        """
        try:
            yield
        except BaseException:
            try:
                self._save_unsaved()
            except Exception:
                log.exception("poll.save_after_error_failed")
            raise

    def _resync_floor(self, error: str) -> datetime | None:
        """The server lost our sync state, or it is another protocol's: sync again from the start
        of the folder.

        The ledger skips what was handed over already. With ``start_from`` "new" or "unread",
        mail received before the mailbox was first watched is not handed over now either (the
        time of that first sync is kept next to the sync state).
        """
        since = self.store.get_sync_state(self.name, self._since_key)
        # Five minutes of slack for the clock difference between us and the server: better a
        # few messages from just before the first sync than one lost.
        floor = datetime.fromisoformat(since) - timedelta(minutes=5) if since else None
        log.error(
            "sync_state.invalid",
            error=error,
            action="syncing the folder again from its start; the ledger skips what is done",
            floor=since,
        )
        return floor

    @property
    def _since_key(self) -> str:
        return f"{self.settings.folder}#watched-since"

    def _not_before(
        self, floor: datetime | None, fetched: Sequence[Message | FetchFailure]
    ) -> Sequence[Message | FetchFailure]:
        if floor is None:
            return fetched
        return [
            m
            for m in fetched
            if not (isinstance(m, Message) and m.received_at is not None and m.received_at < floor)
        ]

    def _starting_state(self) -> tuple[str | None, datetime | None]:
        """The stored sync state, or on the very first poll the one ``start_from`` asks for; with
        the floor below which mail is not handed over (only when syncing again from the start).

        A state another kind of source wrote (the mailbox moved from EWS to Microsoft Graph, or
        back) cannot be read by this one: the folder is synced from its start, the ledger
        skipping what the other protocol handed over (the keys do not depend on the protocol)
        and the ``start_from`` floor kept. That is the migration path of README "Moving off EWS".
        """
        stored = self.store.get_sync_state(self.name, self.settings.folder)
        if stored is not None:
            kind, state = _parse_stored(stored)
            if kind == self.source.kind:
                return state, None
            log.warning(
                "mailbox.source_switched",
                previous=kind,
                now=self.source.kind,
                action="syncing the folder from its start; the ledger skips what is done",
            )
            return None, self._resync_floor(f"the stored sync state is {kind}'s")
        if self.settings.start_from == "all":
            return None, None
        # "new" and "unread": begin at the folder's present end; "unread" parks what is unread
        # now in the pending queue (due at once), in the same commit as the starting state.
        now = self._clock()
        # Kept for a resync after an invalid sync state (see _resync_floor).
        self.store.commit(self.name, self._since_key, sync_state=now.isoformat())
        unread = self.source.unread() if self.settings.start_from == "unread" else ()
        end = self.source.current_state()
        parked = [
            PendingEntry(
                mailbox=self.name,
                item_id=r.item_id,
                idempotency_key="",
                handlers=(),
                attempts=0,
                next_attempt_at=now,
                last_error="",
                first_seen_at=now,
                source=self.source.kind,
            )
            for r in unread
        ]
        self.store.commit(
            self.name,
            self.settings.folder,
            sync_state=_stored(self.source.kind, end),
            pending=parked,
        )
        log.info("mailbox.first_sync", start_from=self.settings.start_from, parked=len(parked))
        return end, None

    # --- step 1: retries ------------------------------------------------------------------------

    def _retry_due(self, result: PollResult) -> None:
        while not self._stop.is_set():
            due = self.store.due_pending(self.name, self._clock(), self.settings.batch_size)
            if not due:
                return
            refs, entries, lost, finished = self._due_refs(due)
            fetched = [*self.source.fetch(refs), *lost]
            # Only what _hand_over reached leaves the queue (resolved, re-parked or dead): a stop
            # in the middle of the batch leaves the rest pending, due at once after the restart.
            outcome = self._hand_over(fetched, result, retrying=entries)
            outcome.resolved += finished
            reached = {*outcome.resolved, *(p.item_id for p in outcome.pending)}
            reached |= {ref.item_id for ref, _ in outcome.dead}
            outcome.resolved += [
                e.item_id
                for native, e in entries.items()
                if e.item_id != native and native in reached
            ]
            self._settle(outcome, result, None, tidy=True)
            if len(due) < self.settings.batch_size or not outcome.complete:
                return

    def _due_refs(
        self, due: Sequence[PendingEntry]
    ) -> tuple[list[ItemRef], dict[str, PendingEntry], list[FetchFailure], list[str]]:
        """The refs to fetch for ``due`` entries, the entry behind each fetched id, and the
        failures of entries whose mail cannot be found, and the entries found to be done.

        An entry another kind of source parked (the mailbox switched protocol since) names its
        mail by an id this source cannot read: it is found again by its Message-ID in the watched
        folder. Mail no longer there was either handed over by the sync from the start that the
        switch caused (the ledger says so: the entry is done) or left the folder (a dead letter
        that says so, replayable by Message-ID).
        """
        refs: list[ItemRef] = []
        entries: dict[str, PendingEntry] = {}
        lost: list[FetchFailure] = []
        finished: list[str] = []
        for entry in due:
            if entry.source == self.source.kind:
                refs.append(ItemRef(entry.item_id))
                entries[entry.item_id] = entry
                continue
            found = None
            if entry.internet_message_id:
                found = self.source.find(self.settings.folder, entry.internet_message_id)
            if found is not None:
                refs.append(found)
                entries[found.item_id] = entry
                continue
            key = entry.idempotency_key
            done = {handler for _, handler in self.store.done([key])} if key else set()
            if entry.handlers and set(entry.handlers) <= done:
                finished.append(entry.item_id)
                continue
            entries[entry.item_id] = entry
            why = (
                f"parked by the {entry.source} source before the mailbox switched to "
                f"{self.source.kind}; not found again in {self.settings.folder!r}"
            )
            lost.append(FetchFailure(ItemRef(entry.item_id), why, gone=True))
        return refs, entries, lost, finished

    # --- step 4: hand-over ----------------------------------------------------------------------

    def _hand_over(
        self,
        fetched: Sequence[Message | FetchFailure],
        result: PollResult,
        retrying: Mapping[str, PendingEntry] | None = None,
    ) -> _Page:
        page = _Page()
        self._unsaved = page
        retrying = retrying or {}
        fetched, done = identify(fetched, self.store)
        keys = [m.idempotency_key for m in fetched if isinstance(m, Message)]
        # A page synced again after a crash in its middle brings back what an earlier batch of
        # it dead-lettered; leave those to `dead-letters replay` (found by the chaos run).
        dead = self.store.dead_lettered(keys) if keys and not retrying else set()
        for item in fetched:
            if self._stop.is_set():
                page.complete = False
                break
            if isinstance(item, FetchFailure):
                self._fetch_failed(item, page, result, retrying.get(item.ref.item_id))
                continue
            if item.idempotency_key in dead:
                result.already_done += 1
                continue
            self._deliver(item, done, page, result, retrying.get(item.item_id))
        return page

    def _deliver(
        self,
        message: Message,
        done: Mapping[tuple[str, str], str],
        page: _Page,
        result: PollResult,
        previous: PendingEntry | None,
    ) -> None:
        names = list(previous.handlers) if previous and previous.handlers else None
        if names is None:
            names = list(dict.fromkeys(self.router(message)))
        if not names:
            result.unrouted += 1
            log.info("message.unrouted", subject=message.subject, key=message.idempotency_key)
            page.resolved.append(message.item_id)
            return
        todo = [n for n in names if (message.idempotency_key, n) not in done]
        if not todo:
            result.already_done += 1
            if not self._tidy(message):
                page.succeeded.append(message)  # tidied at step 5 (a crash came before)
            page.resolved.append(message.item_id)
            return
        transient: dict[str, str] = {}
        permanent: dict[str, str] = {}
        retry_after = 0.0
        for name in todo:
            handler = self.handlers[name]
            started = time.monotonic()
            try:
                handler(message)
            except PermanentError as e:
                permanent[name] = f"{type(e).__name__}: {e}"
                log.warning("handler.permanent_failure", handler=name, error=permanent[name])
                self._observe("failed", {"handler": name, "kind": "permanent"})
            except Exception as e:
                transient[name] = f"{type(e).__name__}: {e}"
                # A webhook's Retry-After (429/503) is a floor for the next attempt.
                retry_after = max(retry_after, _seconds(getattr(e, "retry_after", None)))
                log.warning(
                    "handler.transient_failure", handler=name, error=transient[name], exc_info=True
                )
                self._observe("failed", {"handler": name, "kind": "transient"})
            else:
                page.ledger.append(
                    LedgerEntry(
                        idempotency_key=message.idempotency_key,
                        handler=name,
                        mailbox=self.name,
                        item_id=message.item_id,
                        internet_message_id=message.internet_message_id,
                        handed_at=self._clock(),
                        fingerprint=message_fingerprint(message),
                    )
                )
                self._observe("handled", {"handler": name, "seconds": time.monotonic() - started})
        failed = {**transient, **permanent}
        if not failed:
            result.handed_over += 1
            page.succeeded.append(message)
            page.resolved.append(message.item_id)
            # debug: the `log` handler is the one readable line per message; metrics count them
            log.debug(
                "message.handed_over",
                subject=message.subject,
                handlers=todo,
                key=message.idempotency_key,
            )
            return
        attempts = (previous.attempts if previous else 0) + 1
        error = "; ".join(f"{n}: {e}" for n, e in failed.items())
        ref = ItemRef(message.item_id)
        if permanent or attempts >= self.settings.failure.max_attempts:
            self._dead_letter(
                page,
                result,
                ref,
                message.idempotency_key,
                tuple(failed),
                error,
                attempts,
                permanent=bool(permanent),
                subject=message.subject,
                internet_message_id=message.internet_message_id,
            )
            return
        now = self._clock()
        delay = self.settings.failure.retry_delay(attempts, self._rng, at_least=retry_after)
        page.pending.append(
            PendingEntry(
                mailbox=self.name,
                item_id=message.item_id,
                idempotency_key=message.idempotency_key,
                handlers=tuple(failed),
                attempts=attempts,
                next_attempt_at=now + timedelta(seconds=delay),
                last_error=error,
                first_seen_at=previous.first_seen_at if previous else now,
                source=self.source.kind,
                internet_message_id=message.internet_message_id,
            )
        )
        result.failed += 1
        log.info("message.retry_scheduled", attempts=attempts, delay=round(delay, 1), error=error)

    def _tidy(self, message: Message) -> bool:
        """Whether ``after_success`` has nothing left to do to ``message`` (read already, or
        carrying the category already).

        Only asked of messages the ledger says are done: tidying them again would change them,
        and Graph's delta reports every change, our own included, as a message to look at. In an
        initial round longer than a page (``start_from = "all"``, the resync after a protocol
        switch or a lost delta token) each page then brought back the previous one, marked again,
        and the round never reached its deltaLink (the migration hung in its resync):
        tests/e2e/test_graph.py ``test_an_initial_round_longer_than_a_page_ends`` and
        tests/e2e/test_graph_migration.py guard it.
        """
        action, argument = self.settings.after_success
        if action == "mark_read":
            return message.is_read
        if action == "categorize" and argument:
            return argument in message.categories
        return False

    def _fetch_failed(
        self,
        failure: FetchFailure,
        page: _Page,
        result: PollResult,
        previous: PendingEntry | None,
    ) -> None:
        ref = failure.ref
        if failure.gone and previous is None:
            # Deleted or moved away between the sync and the fetch: nothing left to hand over, and
            # if it moved into another watched folder, that folder's sync sees it as new.
            result.gone += 1
            log.info("message.gone", item_id=ref.item_id, error=failure.error)
            return
        attempts = (previous.attempts if previous else 0) + 1
        if failure.transient and attempts < self.settings.failure.max_attempts:
            now = self._clock()
            delay = self.settings.failure.retry_delay(attempts, self._rng)
            page.pending.append(
                PendingEntry(
                    mailbox=self.name,
                    item_id=ref.item_id,
                    idempotency_key=previous.idempotency_key if previous else "",
                    handlers=previous.handlers if previous else (),
                    attempts=attempts,
                    next_attempt_at=now + timedelta(seconds=delay),
                    last_error=failure.error,
                    first_seen_at=previous.first_seen_at if previous else now,
                    source=self.source.kind,
                    internet_message_id=previous.internet_message_id if previous else None,
                )
            )
            result.failed += 1
            return
        reason = failure.error
        if failure.gone:
            reason = f"the item left the folder before it could be handed over ({failure.error})"
        self._dead_letter(
            page,
            result,
            ref,
            previous.idempotency_key if previous else "",
            previous.handlers if previous else (),
            reason,
            attempts,
            permanent=not failure.transient,
            subject="",
            movable=not failure.gone,
            internet_message_id=previous.internet_message_id if previous else None,
            # A foreign entry's mail not found again keeps the id (and kind) it was parked with.
            source=previous.source if previous and previous.item_id == ref.item_id else None,
        )

    def _dead_letter(
        self,
        page: _Page,
        result: PollResult,
        ref: ItemRef,
        key: str,
        handlers: tuple[str, ...],
        error: str,
        attempts: int,
        *,
        permanent: bool,
        subject: str,
        movable: bool = True,
        internet_message_id: str | None = None,
        source: str | None = None,
    ) -> None:
        folder = self.settings.failure.dead_letter_folder
        letter = DeadLetter(
            id=None,
            mailbox=self.name,
            item_id=ref.item_id,
            idempotency_key=key,
            handlers=handlers,
            error=error,
            permanent=permanent,
            attempts=attempts,
            subject=subject,
            created_at=self._clock(),
            internet_message_id=internet_message_id,
            moved_to=folder if movable else None,
            source=source or self.source.kind,
        )
        page.dead.append((ref if movable else ItemRef(""), letter))
        page.resolved.append(ref.item_id)
        result.dead_lettered += 1
        for name in handlers or ("-",):
            self._observe("dead_lettered", {"handler": name})
        log.warning("message.dead_lettered", error=error, attempts=attempts, permanent=permanent)

    # --- steps 5 and 6 --------------------------------------------------------------------------

    def _settle(
        self, page: _Page, result: PollResult, sync_state: str | None, *, tidy: bool = False
    ) -> None:
        """Post-process and commit one batch; the sync state moves only with a complete page.

        A dead letter is recorded before its mail is moved to the dead-letter folder (one commit
        more, only for such batches): a crash at any point leaves the letter, and the letter says
        where the mail went (see ``DeadLetter.moved_to``). A stopping poll skips the tidy-up of a
        page (``tidy=False``): the restart syncs the page again and tidies what the ledger says.
        """
        if not page.complete:
            sync_state = None
        if page.complete or tidy:
            if (
                any(ref.item_id for ref, _ in page.dead)
                and self.settings.failure.dead_letter_folder
            ):
                self._commit(page, None)
            self._post_process(page, result)  # 5
        self._commit(page, sync_state)  # 6

    # --- step 5: post-processing ----------------------------------------------------------------

    def _post_process(self, page: _Page, result: PollResult) -> None:
        """Tidy up in bulk. A failure here never stops the commit: the hand-overs stand.

        (Found by the chaos run: a throttled or dropped UpdateItem used to abort the poll after
        the handlers had run, so the page was handed over again at the next poll.)
        """
        refs = [ItemRef(m.item_id) for m in page.succeeded]
        action, argument = self.settings.after_success
        if refs and action != "none":
            for ref, error in zip(refs, self._after_success(refs, action, argument), strict=False):
                if error:
                    log.warning(
                        "post_process.failed", action=action, item_id=ref.item_id, error=error
                    )
        folder = self.settings.failure.dead_letter_folder
        movable = [ref for ref, _ in page.dead if ref.item_id]
        if folder and movable:
            try:
                moved: Sequence[ItemRef | str] = self.source.move(movable, folder)
            except SourceError as e:
                # The letters keep the ids the items still have in the watched folder.
                log.warning("dead_letter.move_failed", folder=folder, error=str(e))
                moved = [str(e)] * len(movable)
            page.relocated = [
                (ref.item_id, new.item_id)
                for ref, new in zip(movable, moved, strict=True)
                if not isinstance(new, str)
            ]

    def _after_success(
        self, refs: Sequence[ItemRef], action: str, argument: str | None
    ) -> Sequence[object]:
        """Apply ``after_success`` to ``refs``; per ref None or the error."""
        try:
            if action == "mark_read":
                return self.source.mark_read(refs)
            if action == "move" and argument:
                return [r if isinstance(r, str) else None for r in self.source.move(refs, argument)]
            if action == "categorize" and argument:
                return self.source.categorize(refs, argument)
            if action == "delete":
                return self.source.delete(refs)
        except SourceError as e:
            return [str(e)] * len(refs)
        return []

    # --- step 6: commit -------------------------------------------------------------------------

    def _commit(self, page: _Page, sync_state: str | None) -> None:
        """Commit the page's records (once) with ``sync_state`` and the dead-letter moves."""
        with self._commit_lock:
            if self._flushed:
                return  # flush() ran at a forced shutdown: the process is leaving
            if page.saved:
                # Recorded already, before the move of its dead letters.
                if sync_state is not None or page.relocated:
                    self.store.commit(
                        self.name,
                        self.settings.folder,
                        sync_state=sync_state,
                        relocated=page.relocated,
                    )
                    page.relocated = []
                return
            self._commit_records(page, sync_state)

    def _commit_records(self, page: _Page, sync_state: str | None) -> None:
        parked = {p.item_id for p in page.pending}
        self.store.commit(
            self.name,
            self.settings.folder,
            sync_state=sync_state,
            successes=list(page.ledger),
            pending=list(page.pending),
            resolved=[i for i in page.resolved if i not in parked],
            dead=[letter for _, letter in page.dead],
            relocated=page.relocated,
        )
        page.relocated = []
        page.saved = True

    def flush(self) -> bool:
        """Save what the handlers of a stuck poll did, without moving the sync state.

        Called at shutdown when this poll outlives the grace period (blocked in a request to
        Exchange or the token endpoint): without it, the hand-overs of its batch would be
        repeated after the restart. The process is leaving: this poller commits nothing after.
        """
        self._flushed = True
        return self._save_unsaved()

    def _save_unsaved(self) -> bool:
        with self._commit_lock:
            page = self._unsaved
            if page is None or page.saved or not (page.ledger or page.pending or page.dead):
                return False
            self._commit_records(page, None)
            return True

    # --- dead-letter replay ---------------------------------------------------------------------

    def replay(self, letters: Sequence[DeadLetter]) -> PollResult:
        """Hand dead letters over again (their recorded handlers, or the routes when none)."""
        result = PollResult(self.name)
        with (
            structlog.contextvars.bound_contextvars(
                mailbox=self.name, credential=self.settings.credential, poll_id="replay"
            ),
            self._saving_on_error(),
        ):
            refs, fetched = self._fetch_letters(letters)
            entries = {
                ref.item_id: PendingEntry(
                    mailbox=self.name,
                    item_id=ref.item_id,
                    idempotency_key=d.idempotency_key,
                    handlers=d.handlers,
                    attempts=0,
                    next_attempt_at=self._clock(),
                    last_error=d.error,
                    first_seen_at=d.created_at,
                    source=self.source.kind,
                    internet_message_id=d.internet_message_id,
                )
                for d, ref in zip(letters, refs, strict=True)
            }
            outcome = self._hand_over(fetched, result, retrying=entries)
            self._settle(outcome, result, None, tidy=True)
            # Every letter handled here now lives on in the ledger, the pending queue or a new
            # dead letter; a crash before this line only means a replay that finds it done.
            processed = set(outcome.resolved) | {p.item_id for p in outcome.pending}
            self.store.remove_dead_letters(
                [
                    d.id
                    for d, ref in zip(letters, refs, strict=True)
                    if d.id is not None and ref.item_id in processed
                ]
            )
        return result

    def _fetch_letters(
        self, letters: Sequence[DeadLetter]
    ) -> tuple[list[ItemRef], list[Message | FetchFailure]]:
        """Fetch the mail of ``letters``, found by Message-ID where its id cannot serve.

        That is mail moved to the dead-letter folder after its letter was recorded but before its
        new id was (looked up in ``moved_to``), and mail of a letter another kind of source
        recorded before the mailbox switched protocol (looked up where it went, else in the
        watched folder).
        """
        kind = self.source.kind
        refs = [ItemRef(d.item_id) for d in letters]
        native = [i for i, d in enumerate(letters) if d.source == kind]
        fetched: list[Message | FetchFailure] = [
            FetchFailure(
                refs[i],
                f"recorded by the {d.source} source before the mailbox switched to {kind}, "
                "without a Message-ID to find the mail by",
                gone=True,
            )
            for i, d in enumerate(letters)
        ]
        for i, item in zip(native, self.source.fetch([refs[i] for i in native]), strict=True):
            fetched[i] = item
        for i, (letter, item) in enumerate(zip(letters, fetched, strict=True)):
            if not (isinstance(item, FetchFailure) and item.gone and letter.internet_message_id):
                continue
            folders = [letter.moved_to] if letter.moved_to else []
            if letter.source != kind:
                folders.append(self.settings.folder)
            for folder in folders:
                found = self.source.find(folder, letter.internet_message_id)
                if found is not None:
                    log.info("dead_letter.found_by_message_id", folder=folder)
                    refs[i] = found
                    fetched[i] = self.source.fetch([found])[0]
                    break
        return refs, fetched
