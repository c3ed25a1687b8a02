"""One poll of one mailbox folder: the six steps of DESIGN.md, and nothing else.

1. hand over the retries that are due (pending queue, GetItem by id)
2. ask the source for the changes since the stored sync state (≤ ``page_limit`` a page)
3. fetch the new items as ``Message`` values, in full batches across page boundaries
4. route each to its handlers, skipping what the ledger says is done; hand the batch over
   concurrently (bounded per mailbox, per handler and per process; ``ordered`` one at a time)
5. post-process the successes in bulk; park transient failures, dead-letter permanent ones
6. commit ledger + pending + dead letters + the new sync state in ONE transaction

Steps 2-3 of the next batch (a prefetch, one batch ahead) and 5-6 of the previous one (a settler
thread, strictly in order) run while a batch is handed over: see ``listener.pipeline``, which
holds those pieces and the pure decision of each message's fate (``listener.pipeline.fate``).

The delivery contract:

- The sync state moves forward only when every message of its page is in the ledger, pending or
  dead-lettered: a batch carries a page's state only when it completes that page, and batches
  commit in order. A crash anywhere loses nothing and repeats at most what was in flight (handed
  over, not yet committed), with the same idempotency keys.
- What this poll handed over but has not committed yet stays in memory (``_uncommitted``): a later
  batch of the same poll treats it as done, as the ledger would.
- A stop (SIGTERM) starts no new hand-over; those in flight finish, and everything reached is
  committed, the sync state not past what was not reached. ``flush()`` at a forced shutdown
  saves what the handlers did.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
from listener.errors import SourceError
from listener.identity import identify
from listener.model import Message, message_fingerprint
from listener.pipeline import (
    Batch,
    BatchReader,
    Delivered,
    Fate,
    GiveUp,
    Gone,
    HandlerPool,
    Job,
    Outcome,
    PollHooks,
    Prefetcher,
    Retry,
    Settler,
    decide,
    decide_fetch_failure,
    hand_over,
)
from listener.pipeline.cursor import resync_floor, starting_state, stored
from listener.pipeline.handover import run_handlers
from listener.pipeline.lookup import due_refs, fetch_letters
from listener.pipeline.settings import FailurePolicy, PollerSettings, PollResult

__all__ = ["FailurePolicy", "PollResult", "Poller", "PollerSettings"]

log = structlog.get_logger("listener.poller")
# The stdlib logger behind ``log``: a per-message debug line is skipped before structlog binds a
# logger for it (the lazy proxy binds on every call, ~4 % of the CPU per message on loopback).
_stdlib_log = logging.getLogger("listener.poller")

# An unchanged sync state the server returned different from the stored one (an idle poll's,
# see Poller._keeps) is written at least this often (seconds), so the stored one never ages.
STATE_REFRESH = 3600.0


@dataclass
class _Settlement:
    """What handing over one batch left to post-process and commit."""

    succeeded: list[Message] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    pending: list[PendingEntry] = field(default_factory=list)
    dead: list[tuple[ItemRef, DeadLetter]] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    # (old item id, new item id) of dead letters moved to the dead-letter folder
    relocated: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True  # every message of the batch reached
    saved: bool = False  # its records are committed (by the poll, or by flush() at shutdown)
    sync_state: str | None = None  # to commit with it (stored form)
    tidy: bool = False  # post-process even when incomplete (retries and replays)
    ended: float = 0.0  # time.monotonic() when its hand-over ended

    @property
    def empty(self) -> bool:
        """Nothing to post-process or commit: no records, no sync state, no moves."""
        return not (
            self.succeeded
            or self.ledger
            or self.pending
            or self.dead
            or self.resolved
            or self.relocated
            or self.sync_state is not None
        )


@dataclass(frozen=True, kw_only=True)
class _Item:
    """What the records of one message or fetch failure say about it."""

    ref: ItemRef
    key: str
    subject: str = ""
    internet_message_id: str | None = None
    movable: bool = True  # its mail can go to the dead-letter folder
    source: str | None = None  # the kind that issued ``ref`` (None: this source)


Router = Callable[[Message], Sequence[str]]


def _now() -> datetime:
    return datetime.now(UTC)


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
        hooks: PollHooks | None = None,
        pool: HandlerPool | None = None,
        ordered: Callable[[Message], bool] | None = None,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.router = router
        self.handlers = handlers
        self.hooks = hooks or PollHooks()
        # The process shares one pool (listener.app); a poller on its own (tests, tools) has one
        # just big enough for its mailbox.
        self._pool = pool or HandlerPool(max(1, settings.handler_concurrency))
        self._ordered = ordered or (lambda message: False)
        self._stop = stop or threading.Event()
        self._clock = clock
        self._rng = rng or random.Random()
        self._commit_lock = threading.Lock()  # one commit at a time (the settler, flush())
        self._lock = threading.Lock()  # the in-memory state below, never held across I/O
        self._unsaved: list[_Settlement] = []  # in order
        # (key, handler) → fingerprint, and dead-lettered keys: handed over by this poll, not
        # committed yet (see the module docstring)
        self._uncommitted: dict[tuple[str, str], str] = {}
        self._uncommitted_dead: set[str] = set()
        self._flushed = False
        self._state_stored_at: float | None = None  # time.monotonic() of our last state commit

    @property
    def name(self) -> str:
        return self.settings.name

    # --- the loop -------------------------------------------------------------------------------

    def poll(self) -> PollResult:
        """One poll: due retries, then every batch of new changes until the folder is drained."""
        result = PollResult(self.name)
        self._forget_unsaved()
        with self._bound(uuid.uuid4().hex[:12]), self._saving_on_error():
            state, floor = starting_state(self.settings, self.source, self.store, self._clock)
            self._retry_due(result)  # 1
            reader = BatchReader(
                self.source,
                state,
                batch_size=self.settings.batch_size,
                floor=floor,
                resync=lambda error: resync_floor(self.settings, self.store, error),
            )
            try:
                with Prefetcher(reader) as batches, Settler(self._settle) as settler:
                    while not self._stop.is_set():
                        batch = batches.next(ahead=not self._stop.is_set())  # 2, 3
                        if batch is None:
                            break
                        settlement = self._hand_over(batch.fetched, result)  # 4
                        # Shutting down: commit now, tidy up after the restart (it syncs this page
                        # again and tidies what the ledger says is done).
                        settlement.complete = settlement.complete and not self._stop.is_set()
                        keep = self._keeps(state, batch)  # an idle poll writes nothing
                        if settlement.complete and batch.sync_state is not None and not keep:
                            settlement.sync_state = stored(self.source.kind, batch.sync_state)
                        last = batches.exhausted or not settlement.complete
                        if last and settlement.empty:
                            break  # an idle poll's end: nothing to post-process or commit
                        settler.submit(settlement, inline=last)  # 5, 6
                        if last:
                            break
            finally:
                result.pages = reader.pages
        return result

    def _keeps(self, start: str | None, batch: Batch) -> bool:
        """Whether the stored sync state ``start`` may stay instead of ``batch.sync_state``.

        Only for a batch with no mail whose every page the source called unchanged
        (``ChangePage.unchanged``): the server listed no change since ``start``, so a sync from
        ``start`` lists exactly what one from the new state would. Keeping it repeats nothing
        and loses nothing, a crash before the next poll included (that poll syncs from
        ``start`` and finds what arrived since). It saves an idle poll its commit: the one write
        (and the lease-fence check) it would make, the most costly part of an idle poll on
        PostgreSQL (benchmarks/README.md, "Idle mailboxes at scale"). A state the server
        returned unchanged is never written again; a different one is written at least every
        ``STATE_REFRESH`` seconds, so the stored state never grows old on the server.
        """
        if start is None or batch.fetched or not batch.unmoved:
            return False
        if batch.sync_state == start:
            return True
        with self._lock:
            stored_at = self._state_stored_at
        return stored_at is not None and time.monotonic() - stored_at < STATE_REFRESH

    def _forget_unsaved(self) -> None:
        """A new poll starts from the store (an earlier one that failed saved what it could)."""
        with self._lock:
            self._unsaved.clear()
            self._uncommitted.clear()
            self._uncommitted_dead.clear()

    @contextmanager
    def _bound(self, poll_id: str) -> Iterator[None]:
        with structlog.contextvars.bound_contextvars(
            mailbox=self.name, credential=self.settings.credential, poll_id=poll_id
        ):
            yield

    @contextmanager
    def _saving_on_error(self) -> Iterator[None]:
        """Whatever ends a poll early, what its handlers did is committed (sync state untouched).

        An exception after a handler returned (a bug, a store or hook failure) would otherwise
        lose the record of that hand-over, and the message would be handed over again.
        """
        try:
            yield
        except BaseException:
            try:
                self._save_unsaved()
            except Exception:
                log.exception("poll.save_after_error_failed")
            raise

    # --- step 1: retries ------------------------------------------------------------------------

    def _retry_due(self, result: PollResult) -> None:
        """Step 1, a batch of due entries at a time, each committed before the next is asked for
        (an entry leaves the queue only with that commit, so no overlap here)."""
        while not self._stop.is_set():
            due = self.store.due_pending(self.name, self._clock(), self.settings.batch_size)
            if not due:
                return
            result.retried += len(due)
            refs, entries, lost, finished = due_refs(
                due, self.source, self.store, self.settings.folder
            )
            fetched = [*self.source.fetch(refs), *lost]
            # Only what _hand_over reached leaves the queue (resolved, re-parked or dead): a stop
            # in the middle of the batch leaves the rest pending, due at once after the restart.
            settlement = self._hand_over(fetched, result, retrying=entries)
            settlement.resolved += finished
            reached = {*settlement.resolved, *(p.item_id for p in settlement.pending)}
            reached |= {ref.item_id for ref, _ in settlement.dead}
            settlement.resolved += [
                e.item_id
                for native, e in entries.items()
                if e.item_id != native and native in reached
            ]
            settlement.tidy = True
            self._settle(settlement)
            if len(due) < self.settings.batch_size or not settlement.complete:
                return

    # --- step 4: hand-over ----------------------------------------------------------------------

    def _hand_over(
        self,
        fetched: Sequence[Message | FetchFailure],
        result: PollResult,
        retrying: Mapping[str, PendingEntry] | None = None,
    ) -> _Settlement:
        """Route the batch and hand it over (``listener.pipeline.handover``), booking each
        message's fate as it is known."""
        settlement = _Settlement()
        with self._lock:
            self._unsaved.append(settlement)
        retrying = retrying or {}
        fetched, done = identify(fetched, self._handed_over)
        keys = [m.idempotency_key for m in fetched if isinstance(m, Message)]
        # A page synced again after a crash in its middle brings back what an earlier batch of
        # it dead-lettered; leave those to `dead-letters replay`
        # (test_page_synced_again_does_not_dead_letter_twice).
        dead = self._dead_lettered(keys) if keys and not retrying else set()
        jobs: list[Job] = []
        for item in fetched:
            if isinstance(item, FetchFailure):
                self._fetch_failed(item, settlement, result, retrying.get(item.ref.item_id))
                continue
            if item.idempotency_key in dead:
                result.already_done += 1
                continue
            previous = retrying.get(item.item_id)
            names = list(previous.handlers) if previous and previous.handlers else None
            if names is None:
                names = list(dict.fromkeys(self.router(item)))
            if not names:
                result.unrouted += 1
                log.info("message.unrouted", subject=item.subject, key=item.idempotency_key)
                settlement.resolved.append(item.item_id)
                continue
            todo = tuple(n for n in names if (item.idempotency_key, n) not in done)
            if not todo:
                result.already_done += 1
                if not self._tidy(item):
                    settlement.succeeded.append(item)  # tidied at step 5 (a crash came before)
                settlement.resolved.append(item.item_id)
                continue
            ordered = self.settings.ordered or self._ordered(item)
            jobs.append(Job(message=item, handlers=todo, previous=previous, ordered=ordered))
        unstarted = hand_over(
            jobs,
            run=lambda job: run_handlers(job, self.handlers, self._pool),
            pool=self._pool,
            limit=max(1, self.settings.handler_concurrency),
            stop=self._stop,
            on_done=lambda job, outcomes: self._handed(job, outcomes, settlement, result),
        )
        settlement.complete = not unstarted
        settlement.ended = time.monotonic()
        return settlement

    def _handed(
        self, job: Job, outcomes: Sequence[Outcome], settlement: _Settlement, result: PollResult
    ) -> None:
        """Book what the handlers of one message did, then tell the hooks (a hook that raises
        cannot lose the record)."""
        message = job.message
        for outcome in outcomes:
            if outcome.ok:
                entry = LedgerEntry(
                    idempotency_key=message.idempotency_key,
                    handler=outcome.handler,
                    mailbox=self.name,
                    item_id=message.item_id,
                    internet_message_id=message.internet_message_id,
                    handed_at=self._clock(),
                    fingerprint=message_fingerprint(message),
                )
                settlement.ledger.append(entry)
                with self._lock:
                    self._uncommitted[(entry.idempotency_key, entry.handler)] = (
                        entry.fingerprint or ""
                    )
        fate = decide(outcomes, job.previous, self.settings.failure, self._clock(), self._rng)
        item = _Item(
            ref=ItemRef(message.item_id),
            key=message.idempotency_key,
            subject=message.subject,
            internet_message_id=message.internet_message_id,
        )
        self._carry_out(fate, item, settlement, result, job.previous)
        if isinstance(fate, Delivered):
            result.handed_over += 1
            settlement.succeeded.append(message)
            # debug: the `log` handler is the one readable line per message; metrics count them
            if _stdlib_log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "message.handed_over",
                    subject=message.subject,
                    handlers=list(job.handlers),
                    key=message.idempotency_key,
                )
        for outcome in outcomes:
            if outcome.ok:
                self.hooks.handed_over(self.name, outcome.handler, outcome.seconds)
            else:
                self.hooks.handler_failed(
                    self.name, outcome.handler, permanent=outcome.permanent, seconds=outcome.seconds
                )

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
        settlement: _Settlement,
        result: PollResult,
        previous: PendingEntry | None,
    ) -> None:
        fate = decide_fetch_failure(
            failure, previous, self.settings.failure, self._clock(), self._rng
        )
        item = _Item(
            ref=failure.ref,
            key=previous.idempotency_key if previous else "",
            internet_message_id=previous.internet_message_id if previous else None,
            movable=not failure.gone,
            # A foreign entry's mail not found again keeps the id (and kind) it was parked with.
            source=previous.source
            if previous and previous.item_id == failure.ref.item_id
            else None,
        )
        if isinstance(fate, Gone):
            log.info("message.gone", item_id=failure.ref.item_id, error=failure.error)
        self._carry_out(fate, item, settlement, result, previous)

    def _carry_out(
        self,
        fate: Fate,
        item: _Item,
        settlement: _Settlement,
        result: PollResult,
        previous: PendingEntry | None,
    ) -> None:
        """Make the records ``fate`` asks for (``decide`` made the decision)."""
        if isinstance(fate, Delivered):
            settlement.resolved.append(item.ref.item_id)
        elif isinstance(fate, Gone):
            result.gone += 1
        elif isinstance(fate, Retry):
            now = self._clock()
            settlement.pending.append(
                PendingEntry(
                    mailbox=self.name,
                    item_id=item.ref.item_id,
                    idempotency_key=item.key,
                    handlers=fate.handlers,
                    attempts=fate.attempts,
                    next_attempt_at=fate.at,
                    last_error=fate.error,
                    first_seen_at=previous.first_seen_at if previous else now,
                    source=self.source.kind,
                    internet_message_id=item.internet_message_id,
                )
            )
            result.failed += 1
            log.info(
                "message.retry_scheduled",
                attempts=fate.attempts,
                delay=round(fate.delay, 1),
                error=fate.error,
            )
            self.hooks.retry_scheduled(self.name, attempts=fate.attempts, delay=fate.delay)
        elif isinstance(fate, GiveUp):
            self._dead_letter(fate, item, settlement, result)

    def _dead_letter(
        self, fate: GiveUp, item: _Item, settlement: _Settlement, result: PollResult
    ) -> None:
        folder = self.settings.failure.dead_letter_folder
        letter = DeadLetter(
            id=None,
            mailbox=self.name,
            item_id=item.ref.item_id,
            idempotency_key=item.key,
            handlers=fate.handlers,
            error=fate.error,
            permanent=fate.permanent,
            attempts=fate.attempts,
            subject=item.subject,
            created_at=self._clock(),
            internet_message_id=item.internet_message_id,
            moved_to=folder if item.movable else None,
            source=item.source or self.source.kind,
        )
        settlement.dead.append((item.ref if item.movable else ItemRef(""), letter))
        settlement.resolved.append(item.ref.item_id)
        if item.key:
            with self._lock:
                self._uncommitted_dead.add(item.key)
        result.dead_lettered += 1
        log.warning(
            "message.dead_lettered",
            error=fate.error,
            attempts=fate.attempts,
            permanent=fate.permanent,
        )
        for name in fate.handlers or ("-",):
            self.hooks.dead_lettered(self.name, name)

    def _handed_over(self, keys: Sequence[str]) -> dict[tuple[str, str], str | None]:
        """``StateStore.handed_over`` plus what this poll handed over and has not committed.

        The snapshot is taken before the store is read: a commit in between (the settler's) has
        its entries in the store by then, and they leave ``_uncommitted`` only after it.
        """
        wanted = set(keys)
        with self._lock:
            found: dict[tuple[str, str], str | None] = {
                k: p for k, p in self._uncommitted.items() if k[0] in wanted
            }
        found.update(self.store.handed_over(keys))
        return found

    def _dead_lettered(self, keys: Sequence[str]) -> set[str]:
        with self._lock:
            found = self._uncommitted_dead.intersection(keys)
        return found | self.store.dead_lettered(keys)

    # --- steps 5 and 6 --------------------------------------------------------------------------

    def _settle(self, settlement: _Settlement) -> None:
        """Post-process and commit one batch (on the settler's thread, or the poll's for its last
        batch, a retry batch or a replay); the sync state moves only with a complete batch.

        A dead letter is recorded before its mail is moved to the dead-letter folder (one commit
        more, only for such batches): a crash at any point leaves the letter, and the letter says
        where the mail went (see ``DeadLetter.moved_to``). A stopping poll skips the tidy-up of a
        batch: the restart syncs its page again and tidies what the ledger says is done.
        """
        if settlement.complete or settlement.tidy:
            if (
                any(ref.item_id for ref, _ in settlement.dead)
                and self.settings.failure.dead_letter_folder
            ):
                self._commit(settlement, None)
            self._post_process(settlement)  # 5
        self._commit(settlement, settlement.sync_state if settlement.complete else None)  # 6
        messages = len(settlement.succeeded) + len(settlement.pending) + len(settlement.dead)
        self.hooks.batch_settled(self.name, messages, time.monotonic() - settlement.ended)

    # --- step 5: post-processing ----------------------------------------------------------------

    def _post_process(self, page: _Settlement) -> None:
        """Tidy up in bulk. A failure here never stops the commit: the hand-overs stand.

        A throttled or dropped UpdateItem used to abort the poll after the handlers had run, so
        the page was handed over again at the next poll
        (``test_failed_tidy_up_does_not_hand_over_again``).
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

    def _commit(self, page: _Settlement, sync_state: str | None) -> None:
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
            else:
                self._commit_records(page, sync_state)
            if sync_state is not None:
                with self._lock:
                    self._state_stored_at = time.monotonic()

    def _commit_records(self, page: _Settlement, sync_state: str | None) -> None:
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
        with self._lock:
            for entry in page.ledger:
                self._uncommitted.pop((entry.idempotency_key, entry.handler), None)
            for _, letter in page.dead:
                self._uncommitted_dead.discard(letter.idempotency_key)
            if page in self._unsaved:
                self._unsaved.remove(page)

    def flush(self) -> bool:
        """Save what the handlers of a stuck poll did, without moving the sync state.

        Called at shutdown when this poll outlives the grace period (blocked in a request to
        Exchange or the token endpoint): without it, the hand-overs of its batch would be
        repeated after the restart. The process is leaving: this poller commits nothing after.
        """
        self._flushed = True
        return self._save_unsaved()

    def _save_unsaved(self) -> bool:
        """Commit the records of every batch not yet committed, in order, without a sync state."""
        with self._commit_lock:
            with self._lock:
                settlements = list(self._unsaved)
            saved = False
            for settlement in settlements:
                if settlement.saved or not (
                    settlement.ledger or settlement.pending or settlement.dead
                ):
                    continue
                self._commit_records(settlement, None)
                saved = True
            return saved

    # --- dead-letter replay ---------------------------------------------------------------------

    def replay(self, letters: Sequence[DeadLetter]) -> PollResult:
        """Hand dead letters over again (their recorded handlers, or the routes when none)."""
        result = PollResult(self.name)
        self._forget_unsaved()
        with self._bound("replay"), self._saving_on_error():
            refs, fetched = fetch_letters(letters, self.source, self.settings.folder)
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
            outcome.tidy = True
            self._settle(outcome)
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
