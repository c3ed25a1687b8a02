"""``SqlStateStore``: the ``StateStore`` protocol on SQLAlchemy 2 Core (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL

from listener.abc import DeadLetter, LedgerEntry, PendingEntry
from listener.model import message_id_key
from listener.observability.redaction import redact
from listener.store import _migrations
from listener.store import _schema as tb
from listener.store._engine import WRITE_OPTION
from listener.store._errors import StoreError, describe_url, translate_errors
from listener.store._leases import Fence, LeaseTable, check_fence

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql

__all__ = ["SqlStateStore"]

log = structlog.get_logger("listener.store")

T = TypeVar("T")

# Keeps every ``IN (...)`` below SQLite's bound-parameter limit (999 before SQLite 3.32).
_CHUNK = 500
# First key of the PostgreSQL advisory lock taken while migrating ("ews" in ASCII); the second key
# is the schema, so stores in different schemas of one database do not wait for each other.
_PG_LOCK_NAMESPACE = 0x657773
_PG_MIGRATION_LOCK = text(
    "SELECT pg_advisory_xact_lock(:ns, hashtext(coalesce(current_schema(), '')))"
)

# The statements every poll runs, built once: constructing a statement and its cache key cost
# about a fifth of each of these small reads (SQLAlchemy compiles it once either way). The
# dialect's upserts are built once per store (``_add_to_ledger``, ``_park``, ``_save_sync_state``).
_SYNC_STATE = select(tb.sync_state.c.state).where(
    tb.sync_state.c.mailbox == bindparam("mailbox"),
    tb.sync_state.c.folder == bindparam("folder"),
)
_LEDGER_BY_KEYS = select(
    tb.ledger.c.idempotency_key, tb.ledger.c.handler, tb.ledger.c.fingerprint
).where(tb.ledger.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_DEAD_BY_KEYS = select(tb.dead_letters.c.idempotency_key).where(
    tb.dead_letters.c.idempotency_key.in_(bindparam("keys", expanding=True))
)
_DUE_PENDING = (
    select(tb.pending)
    .where(
        tb.pending.c.mailbox == bindparam("mailbox"),
        tb.pending.c.next_attempt_at <= bindparam("now"),
    )
    .order_by(tb.pending.c.next_attempt_at, tb.pending.c.item_id)
    .limit(bindparam("limit"))
)
_RESOLVE_PENDING = delete(tb.pending).where(
    tb.pending.c.mailbox == bindparam("mailbox"),
    tb.pending.c.item_id.in_(bindparam("item_ids", expanding=True)),
)
_PENDING_COUNT = select(func.count()).select_from(tb.pending)
_PENDING_COUNT_OF = _PENDING_COUNT.where(tb.pending.c.mailbox == bindparam("mailbox"))


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SqlStateStore:
    """Sync states, the ledger, pending retries and dead letters in one SQL database.

    Thread-safe. Writes to SQLite are serialised by a lock in this process, so poller threads
    never meet "database is locked" among themselves; the busy timeout only covers another process.
    Build it with ``listener.store.open_store``.
    """

    def __init__(
        self,
        engine: Engine,
        url: URL,
        *,
        busy_timeout: float,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._url = url
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._sqlite = url.get_backend_name() == "sqlite"
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self._sqlite else nullcontext()
        )
        # ":memory:" is one connection shared by every thread: reads must queue behind writes too.
        memory = self._sqlite and url.database in {None, "", ":memory:"}
        self._read_lock = self._write_lock if memory else nullcontext()
        self._closed = False
        self.where = describe_url(url)

    def __repr__(self) -> str:
        return f"SqlStateStore({self.where!r})"

    # --- plumbing -------------------------------------------------------------------------------

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        if self._sqlite:
            return sqlite.insert(table)
        # imported when used: a SQLite state (``once`` on one host) need not load it (~0.1 s)
        from sqlalchemy.dialects import postgresql  # noqa: PLC0415

        return postgresql.insert(table)

    @cached_property
    def _add_to_ledger(self) -> sqlite.Insert | postgresql.Insert:
        """A page's ledger rows; one already there (handed over again after a crash) is left."""
        return self._insert(tb.ledger).on_conflict_do_nothing(
            index_elements=[tb.ledger.c.idempotency_key, tb.ledger.c.handler]
        )

    @cached_property
    def _park(self) -> sqlite.Insert | postgresql.Insert:
        """Pending entries by (mailbox, item id): a parked message parked again is updated."""
        upsert = self._insert(tb.pending)
        return upsert.on_conflict_do_update(
            index_elements=[tb.pending.c.mailbox, tb.pending.c.item_id],
            set_={c.name: upsert.excluded[c.name] for c in tb.pending.columns if not c.primary_key},
        )

    @cached_property
    def _save_sync_state(self) -> sqlite.Insert | postgresql.Insert:
        upsert = self._insert(tb.sync_state)
        return upsert.on_conflict_do_update(
            index_elements=[tb.sync_state.c.mailbox, tb.sync_state.c.folder],
            set_={"state": upsert.excluded.state, "updated_at": upsert.excluded.updated_at},
        )

    def _errors(self, action: str) -> AbstractContextManager[None]:
        if self._closed:
            raise StoreError(f"state store {self.where} is closed")
        return translate_errors(self._url, busy_timeout=self._busy_timeout, action=action)

    @contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        with self._errors(action), self._read_lock, self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises."""
        with self._errors(action), self._write_lock, self._engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def migrate(self, *, create: bool = True) -> int:
        """Create or upgrade the schema (``open_store`` calls this); returns its version."""
        with self._write("migrating the schema") as conn:
            if not self._sqlite:
                # Two processes starting at once: the second waits here, then finds the work done.
                conn.execute(_PG_MIGRATION_LOCK, {"ns": _PG_LOCK_NAMESPACE})
            return _migrations.migrate(conn, self.where, create=create)

    # --- StateStore -----------------------------------------------------------------------------

    def get_sync_state(self, mailbox: str, folder: str) -> str | None:
        """The folder's stored sync state, or None before its first commit."""
        with self._read("reading a sync state") as conn:
            params = {"mailbox": mailbox, "folder": folder}
            return conn.execute(_SYNC_STATE, params).scalar_one_or_none()

    def done(self, keys: Sequence[str]) -> set[tuple[str, str]]:
        """The (idempotency_key, handler) pairs already in the ledger among ``keys``."""
        return set(self.handed_over(keys))

    def handed_over(self, keys: Sequence[str]) -> dict[tuple[str, str], str | None]:
        """The ledger's (idempotency_key, handler) pairs among ``keys``, each with the
        fingerprint of the message handed over under it (None when written before schema 3)."""
        found: dict[tuple[str, str], str | None] = {}
        with self._read("reading the ledger") as conn:
            for chunk in _chunks(sorted(set(keys))):
                rows = conn.execute(_LEDGER_BY_KEYS, {"keys": list(chunk)})
                found.update(((key, h), fp) for key, h, fp in rows)
        return found

    def adopt_legacy_keys(self, addresses: Mapping[str, str]) -> int:
        """Re-key the ledger entries written before schema 3 for these mailboxes.

        ``addresses`` maps a mailbox's configured name (the ledger's ``mailbox``) to its SMTP
        address. An entry with a Message-ID gets the key ``listener.model.message_id_key`` gives
        (the one the message has now, wherever it lives in the mailbox), in one transaction;
        entries without one keep their old key, which the poller still looks up for mail that
        has no Message-ID. Returns how many entries were re-keyed; cheap once none are left.
        """
        c = tb.ledger.c
        legacy = select(tb.ledger).where(
            c.key_scheme == 1, c.mailbox.in_(sorted(addresses)), c.internet_message_id.is_not(None)
        )
        moved = 0
        with self._write("re-keying the ledger") as conn:
            rows = [row._asdict() for row in conn.execute(legacy)]
            if not rows:
                return 0
            renamed = [
                {
                    **row,
                    "idempotency_key": message_id_key(
                        addresses[row["mailbox"]], row["internet_message_id"]
                    ),
                    "key_scheme": tb.KEY_SCHEME,
                }
                for row in rows
            ]
            conn.execute(self._add_to_ledger, renamed)
            for row in rows:
                conn.execute(
                    delete(tb.ledger).where(
                        c.idempotency_key == row["idempotency_key"],
                        c.handler == row["handler"],
                        c.key_scheme == 1,
                    )
                )
                moved += 1
        log.info("store.keys_adopted", database=self.where, entries=moved)
        return moved

    def dead_lettered(self, keys: Sequence[str]) -> set[str]:
        """The idempotency keys among ``keys`` that have a dead letter."""
        found: set[str] = set()
        with self._read("reading dead letters") as conn:
            for chunk in _chunks(sorted(set(keys))):
                rows = conn.execute(_DEAD_BY_KEYS, {"keys": list(chunk)})
                found.update(key for (key,) in rows)
        return found

    def due_pending(self, mailbox: str, now: datetime, limit: int) -> list[PendingEntry]:
        """Up to ``limit`` pending entries of ``mailbox`` due at ``now``, the longest-due first."""
        params = {"mailbox": mailbox, "now": now, "limit": limit}
        with self._read("reading pending retries") as conn:
            return [_pending_entry(row) for row in conn.execute(_DUE_PENDING, params)]

    def pending_count(self, mailbox: str | None = None) -> int:
        """How many messages wait for a retry (in ``mailbox``, or in all)."""
        with self._read("counting pending retries") as conn:
            if mailbox is None:
                return int(conn.execute(_PENDING_COUNT).scalar_one())
            return int(conn.execute(_PENDING_COUNT_OF, {"mailbox": mailbox}).scalar_one())

    def pending_counts(self) -> dict[str, int]:
        """How many messages wait for a retry, per mailbox (those with none left out), in one
        statement: the daemon's ``pending_messages`` gauge for every mailbox at once."""
        c = tb.pending.c
        query = select(c.mailbox, func.count()).group_by(c.mailbox)
        with self._read("counting pending retries") as conn:
            return {mailbox: int(n) for mailbox, n in conn.execute(query)}

    def commit(
        self,
        mailbox: str,
        folder: str,
        *,
        sync_state: str | None,
        successes: Sequence[LedgerEntry] = (),
        pending: Sequence[PendingEntry] = (),
        resolved: Sequence[str] = (),
        dead: Sequence[DeadLetter] = (),
        relocated: Sequence[tuple[str, str]] = (),
        fence: Fence | None = None,
    ) -> None:
        """Record one page's outcome in ONE transaction (see ``listener.abc.StateStore.commit``).

        A ledger entry already present is ignored: a message handed over again after a crash
        must not make the commit fail. Pending entries are upserted by (mailbox, item id), then
        ``resolved`` item ids of ``mailbox`` are deleted from pending.

        With a ``fence`` (several replicas, PostgreSQL), the transaction first locks the
        mailbox's lease and raises ``LeaseLost``, writing nothing, unless the lease is still the
        fence's owner and epoch and unexpired (``listener.store._leases.check_fence``).
        """
        # Duplicates in one call collapse (the last wins); rows go in key order so that two
        # PostgreSQL transactions touching the same keys lock them in the same order.
        ledger_rows = sorted(
            {(e.idempotency_key, e.handler): _ledger_row(e) for e in successes}.items()
        )
        pending_rows = sorted({(p.mailbox, p.item_id): _pending_row(p) for p in pending}.items())
        gone = sorted(set(resolved))
        with self._write("committing a page") as conn:
            if fence is not None:
                check_fence(conn, fence)
            if ledger_rows:
                conn.execute(self._add_to_ledger, [row for _, row in ledger_rows])
            if pending_rows:
                conn.execute(self._park, [row for _, row in pending_rows])
            for chunk in _chunks(gone):
                conn.execute(_RESOLVE_PENDING, {"mailbox": mailbox, "item_ids": list(chunk)})
            if dead:
                conn.execute(insert(tb.dead_letters), [_dead_row(d) for d in dead])
            for old_id, new_id in relocated:
                conn.execute(
                    update(tb.dead_letters)
                    .where(
                        tb.dead_letters.c.mailbox == mailbox,
                        tb.dead_letters.c.item_id == old_id,
                    )
                    .values(item_id=new_id)
                )
            if sync_state is not None:
                self._set_sync_state(conn, mailbox, folder, sync_state)

    def _set_sync_state(self, conn: Connection, mailbox: str, folder: str, state: str) -> None:
        row = {"mailbox": mailbox, "folder": folder, "state": state, "updated_at": self._clock()}
        conn.execute(self._save_sync_state, row)

    def dead_letters(self, mailbox: str | None = None) -> list[DeadLetter]:
        """Dead letters (of ``mailbox``, or all), oldest first."""
        query = select(tb.dead_letters).order_by(tb.dead_letters.c.id)
        if mailbox is not None:
            query = query.where(tb.dead_letters.c.mailbox == mailbox)
        with self._read("reading dead letters") as conn:
            return [_dead_letter(row) for row in conn.execute(query)]

    def dead_letter(self, letter_id: int) -> DeadLetter | None:
        """One dead letter by id, or None."""
        query = select(tb.dead_letters).where(tb.dead_letters.c.id == letter_id)
        with self._read("reading a dead letter") as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _dead_letter(row)

    def remove_dead_letters(self, ids: Sequence[int]) -> int:
        """Delete the dead letters with these ids; returns how many existed."""
        removed = 0
        with self._write("removing dead letters") as conn:
            for chunk in _chunks(sorted(set(ids))):
                query = delete(tb.dead_letters).where(tb.dead_letters.c.id.in_(chunk))
                removed += conn.execute(query).rowcount
        return removed

    def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards. Idempotent."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    @property
    def leases(self) -> LeaseTable:
        """The mailbox leases and replicas (PostgreSQL; ``listener.cluster``)."""
        if self._sqlite:
            raise StoreError(
                f"state database {self.where}: several replicas need a PostgreSQL state.url; "
                f"a SQLite file serves one process"
            )
        return LeaseTable(self._read, self._write, self._listen_connection)

    def _listen_connection(self) -> Any:
        """A psycopg connection of its own, out of the pool, for LISTEN (held for hours)."""
        with self._errors("opening a connection for LISTEN"):
            pooled = self._engine.raw_connection()
            driver = pooled.driver_connection
            pooled.detach()  # never returned to the pool: closed by its user
            return driver

    # --- for the CLI, health checks and tests ---------------------------------------------------

    def ledger(self, mailbox: str | None = None) -> list[LedgerEntry]:
        """Ledger entries (of ``mailbox``, or all), in the order they were handed over."""
        query = select(tb.ledger).order_by(
            tb.ledger.c.handed_at, tb.ledger.c.idempotency_key, tb.ledger.c.handler
        )
        if mailbox is not None:
            query = query.where(tb.ledger.c.mailbox == mailbox)
        with self._read("reading the ledger") as conn:
            return [_ledger_entry(row) for row in conn.execute(query)]

    def ledger_count(self, mailbox: str | None = None) -> int:
        """How many (message, handler) hand-overs the ledger holds."""
        query = select(func.count()).select_from(tb.ledger)
        if mailbox is not None:
            query = query.where(tb.ledger.c.mailbox == mailbox)
        with self._read("counting the ledger") as conn:
            return int(conn.execute(query).scalar_one())

    def pending(self, mailbox: str | None = None) -> list[PendingEntry]:
        """Pending entries (of ``mailbox``, or all), the soonest due first."""
        query = select(tb.pending).order_by(
            tb.pending.c.next_attempt_at, tb.pending.c.mailbox, tb.pending.c.item_id
        )
        if mailbox is not None:
            query = query.where(tb.pending.c.mailbox == mailbox)
        with self._read("reading pending retries") as conn:
            return [_pending_entry(row) for row in conn.execute(query)]

    def reset_sync_state(self, mailbox: str, folder: str) -> bool:
        """Forget the folder's sync state (the next poll starts per ``start_from``); True if any."""
        with self._write("resetting a sync state") as conn:
            result = conn.execute(
                delete(tb.sync_state).where(
                    tb.sync_state.c.mailbox == mailbox, tb.sync_state.c.folder == folder
                )
            )
            return result.rowcount > 0

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self._read("reading the schema version") as conn:
            return _migrations.current_version(conn)

    def check(self) -> None:
        """A cheap query for readiness probes; ``StoreError`` when the database is unusable."""
        with self._read("checking the state database") as conn:
            conn.execute(select(func.count()).select_from(tb.sync_state).limit(1)).scalar()


def _ledger_row(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "idempotency_key": entry.idempotency_key,
        "handler": entry.handler,
        "mailbox": entry.mailbox,
        "item_id": entry.item_id,
        "internet_message_id": entry.internet_message_id,
        "handed_at": entry.handed_at,
        "fingerprint": entry.fingerprint,
        "key_scheme": tb.KEY_SCHEME,
    }


def _ledger_entry(row: Row[Any]) -> LedgerEntry:
    values = row._asdict()
    del values["key_scheme"]
    return LedgerEntry(**values)


def _pending_row(entry: PendingEntry) -> dict[str, Any]:
    return {
        "mailbox": entry.mailbox,
        "item_id": entry.item_id,
        "idempotency_key": entry.idempotency_key,
        "handlers": list(entry.handlers),
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        # Masked here, the one way into the store: handlers' error texts quote what programs
        # wrote to stderr and receivers answered, tokens included (issue 11).
        "last_error": redact(entry.last_error),
        "first_seen_at": entry.first_seen_at,
        "source": entry.source,
        "internet_message_id": entry.internet_message_id,
    }


def _pending_entry(row: Row[Any]) -> PendingEntry:
    values = row._asdict()
    values.pop("change_key", None)  # SQLite before 3.35 keeps the column (schema 4)
    values["handlers"] = tuple(values["handlers"])
    return PendingEntry(**values)


def _dead_row(letter: DeadLetter) -> dict[str, Any]:
    return {
        "mailbox": letter.mailbox,
        "item_id": letter.item_id,
        "idempotency_key": letter.idempotency_key,
        "handlers": list(letter.handlers),
        "error": redact(letter.error),  # masked, as in _pending_row
        "permanent": letter.permanent,
        "attempts": letter.attempts,
        "subject": letter.subject,
        "created_at": letter.created_at,
        "internet_message_id": letter.internet_message_id,
        "moved_to": letter.moved_to,
        "source": letter.source,
    }


def _dead_letter(row: Row[Any]) -> DeadLetter:
    values = row._asdict()
    values.pop("change_key", None)  # SQLite before 3.35 keeps the column (schema 4)
    values["handlers"] = tuple(values["handlers"])
    values["permanent"] = bool(values["permanent"])
    return DeadLetter(**values)
