"""Versioned schema migrations, applied in order inside the transaction that opens the store.

Each step moves the schema from ``version - 1`` to ``version`` and is recorded in
``schema_version``; a database at a version newer than ``LATEST`` is refused rather than written
with assumptions that no longer hold. Adding a step: append a ``Migration`` with explicit DDL
(``ALTER TABLE ...``) and update ``_schema.py`` to the new shape. Version 1 creates the tables
from ``_schema.py``; before a later step changes one of those tables, copy its version 1 shape
into ``_create_v1`` so that a fresh database still passes through every step.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)

from listener.store import _schema
from listener.store._errors import StoreError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "current_version", "migrate"]

log = structlog.get_logger("listener.store")


@dataclass(frozen=True)
class Migration:
    """One schema step: ``apply`` brings a database at ``version - 1`` to ``version``."""

    version: int
    description: str
    apply: Callable[[Connection], None]


# The version 1 shapes of the tables later steps change (schema 3: ledger, dead_letters; schema 4:
# pending, dead_letters).
_V1 = MetaData()
_LEDGER_V1 = Table(
    "ledger",
    _V1,
    Column("idempotency_key", Text, primary_key=True),
    Column("handler", Text, primary_key=True),
    Column("mailbox", Text, nullable=False),
    Column("item_id", Text, nullable=False),
    Column("internet_message_id", Text, nullable=True),
    Column("handed_at", _schema.UtcDateTime, nullable=False),
    Index("ix_ledger_mailbox", "mailbox"),
)
_PENDING_V1 = Table(
    "pending",
    _V1,
    Column("mailbox", Text, primary_key=True),
    Column("item_id", Text, primary_key=True),
    Column("change_key", Text, nullable=True),
    Column("idempotency_key", Text, nullable=False),
    Column("handlers", JSON, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", _schema.UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("first_seen_at", _schema.UtcDateTime, nullable=False),
    Index("ix_pending_due", "mailbox", "next_attempt_at"),
)
_DEAD_LETTERS_V1 = Table(
    "dead_letters",
    _V1,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("item_id", Text, nullable=False),
    Column("change_key", Text, nullable=True),
    Column("idempotency_key", Text, nullable=False),
    Column("handlers", JSON, nullable=False),
    Column("error", Text, nullable=False),
    Column("permanent", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("created_at", _schema.UtcDateTime, nullable=False),
    Index("ix_dead_letters_mailbox", "mailbox"),
    sqlite_autoincrement=True,
)


def _create_v1(conn: Connection) -> None:
    _schema.metadata.create_all(conn, tables=[_schema.sync_state], checkfirst=True)
    _V1.create_all(conn, checkfirst=True)


def _index_dead_letter_keys(conn: Connection) -> None:
    # The poller skips items already dead-lettered when a page is synced again (after a crash
    # in the middle of it): one lookup by idempotency key per batch.
    # Plain DDL: an sqlalchemy Index would attach itself to the version 1 table definition.
    conn.execute(
        text("CREATE INDEX IF NOT EXISTS ix_dead_letters_key ON dead_letters (idempotency_key)")
    )


def _key_by_message_id(conn: Connection) -> None:
    # Issue 11: the idempotency key no longer hashes the EWS item id. Rows written before keep
    # key_scheme 1 until SqlStateStore.adopt_legacy_keys re-keys them (that needs each mailbox's
    # SMTP address, which only the configuration knows); the partial index finds them cheaply.
    # Columns are added only where missing: a database of version 0 may already have them.
    added = {
        "ledger": ("fingerprint TEXT", "key_scheme INTEGER NOT NULL DEFAULT 1"),
        "dead_letters": ("internet_message_id TEXT", "moved_to TEXT"),
    }
    for table, columns in added.items():
        present = {c["name"] for c in inspect(conn).get_columns(table)}
        for column in columns:
            if column.split()[0] not in present:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column}"))
    conn.execute(
        text("CREATE INDEX IF NOT EXISTS ix_ledger_legacy ON ledger (mailbox) WHERE key_scheme = 1")
    )


def _source_kinds(conn: Connection) -> None:
    # Issue 13: item ids belong to the kind of source that issued them (EWS or Microsoft Graph),
    # so a mailbox switched from one protocol to the other never hands one's id to the other.
    # Rows written before are EWS's. Change keys are EWS's business: no longer stored (dropped
    # where the database can; SQLite before 3.35 keeps the unused, nullable column).
    can_drop = conn.dialect.name != "sqlite" or sqlite3.sqlite_version_info >= (3, 35, 0)
    for table in ("pending", "dead_letters"):
        present = {c["name"] for c in inspect(conn).get_columns(table)}
        if "source" not in present:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN source TEXT NOT NULL DEFAULT 'ews'"))
        if table == "pending" and "internet_message_id" not in present:
            conn.execute(text("ALTER TABLE pending ADD COLUMN internet_message_id TEXT"))
        if "change_key" in present and can_drop:
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN change_key"))


def _leases(conn: Connection) -> None:
    # Issue 16: several replicas on one PostgreSQL database share the mailboxes through leases
    # (listener.store._leases). Created on SQLite too, where they stay empty: one process there.
    _schema.metadata.create_all(
        conn, tables=[_schema.mailbox_leases, _schema.replicas], checkfirst=True
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sync_state, ledger, pending and dead_letters", _create_v1),
    Migration(2, "index dead letters by idempotency key", _index_dead_letter_keys),
    Migration(
        3, "idempotency keys by Message-ID; dead letters findable after a move", _key_by_message_id
    ),
    Migration(
        4, "item ids tagged with their source kind; change keys no longer kept", _source_kinds
    ),
    Migration(5, "mailbox leases and replicas (several replicas on PostgreSQL)", _leases),
)
LATEST = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), "versions must be 1, 2, ..."


def current_version(conn: Connection) -> int:
    """The schema version recorded in the database; 0 when it has no ``schema_version`` table."""
    if not inspect(conn).has_table(_schema.schema_version.name):
        return 0
    version = conn.execute(select(func.max(_schema.schema_version.c.version))).scalar()
    return int(version or 0)


def migrate(conn: Connection, where: str, *, create: bool = True) -> int:
    """Bring the database to ``LATEST`` inside the caller's transaction; returns the version.

    The caller holds the database's write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory
    lock), so two processes starting at once run this one after the other: the second finds the
    work done.
    """
    version = current_version(conn)
    if version > LATEST:
        raise StoreError(
            f"state database {where} has schema version {version}, this ews-listener knows up to "
            f"{LATEST}: upgrade ews-listener or point state.url elsewhere"
        )
    if version == LATEST:
        return version
    if not create:
        raise StoreError(
            f"state database {where} has schema version {version}, this ews-listener needs "
            f"{LATEST}: run `ews-listener once` (or `run`) against it first to create or migrate it"
        )
    _schema.schema_version.create(conn, checkfirst=True)
    for step in MIGRATIONS:
        if step.version > version:
            step.apply(conn)
            conn.execute(
                insert(_schema.schema_version).values(
                    version=step.version, applied_at=datetime.now(UTC)
                )
            )
            log.info("store.migrated", database=where, version=step.version, step=step.description)
    return LATEST
