"""Engines for the two supported backends: a SQLite file (the default) and PostgreSQL.

SQLite is tuned for one process with many poller threads: WAL (readers never wait for the
writer), ``synchronous=NORMAL`` (durable at each checkpoint, never corrupt; a power cut may lose
the last commits, which the ledger's idempotency keys make harmless), a busy timeout for a second
process, and write transactions that start with ``BEGIN IMMEDIATE``: a deferred transaction that
later upgrades to a write lock gets ``SQLITE_BUSY`` at once in WAL mode, without waiting for the
busy timeout (https://www.sqlite.org/isolation.html, "BUSY_SNAPSHOT").
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from listener.store._errors import StoreError

__all__ = ["WRITE_OPTION", "EngineOptions", "build_engine", "parse_url"]

# Execution option a connection carries when it is about to write (see the "begin" hook).
WRITE_OPTION = "ews_listener_write"


@dataclass(frozen=True)
class EngineOptions:
    """Connection tuning; the defaults suit ~8 poller threads in one process."""

    busy_timeout: float = 5.0  # s: SQLite waits this long for another process's write lock
    connect_timeout: float = 10.0  # s: PostgreSQL connection attempts
    pool_size: int = 8  # one connection per worker thread without waiting
    max_overflow: int = 8  # bursts (CLI, readiness probe) beside the workers
    pool_timeout: float = 30.0  # s: waiting for a free pooled connection


def parse_url(url: str) -> URL:
    """``url`` as a SQLAlchemy URL for a supported backend; ``postgresql://`` means psycopg 3."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        # Not echoed: a malformed URL may still hold a password.
        raise StoreError(
            "state.url is not a database URL: expected sqlite:///path/to/state.db or "
            "postgresql://user@host:5432/database"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in {"", "pysqlite"}:
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in {"postgresql", "postgres"} and driver in {"", "psycopg"}:
        return parsed.set(drivername="postgresql+psycopg")
    raise StoreError(
        f"state.url {parsed.render_as_string(hide_password=True)}: unsupported database "
        f"{parsed.drivername!r}; use sqlite:///path/to/state.db or postgresql://user@host/db "
        f"(psycopg 3)"
    )


def _is_memory(url: URL) -> bool:
    return url.database in {None, "", ":memory:"}


def _create_private(path: Path) -> None:
    """Create the empty database file 0600: it holds subjects, senders and error texts.

    SQLite opens an existing empty file as a new database, and creates the -wal and -shm files
    with the database file's permissions (https://www.sqlite.org/tempfiles.html; ``unixOpen``
    copies the mode), so all three stay private whatever the umask (guarded by
    ``tests/store/test_file_modes.py``).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return  # another store created it a moment ago: SQLite takes it from here
    except OSError:
        return  # the directory checks below say what is wrong, in the user's terms
    os.close(fd)


def _prepare_sqlite_file(url: URL, *, create: bool) -> URL:
    """Create the file's directory and fail early, clearly, when the file cannot be written."""
    path = Path(str(url.database)).expanduser()
    where = str(path)
    if not path.exists():
        if not create:
            raise StoreError(f"state database {where} does not exist")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the directory of state database {where}: {error.strerror}: fix "
                f"the permissions or point state.url elsewhere"
            ) from None
        _create_private(path)
    # os.access answers for this process's real user; root passes and SQLite has the last word.
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"state database {where} cannot be used: its directory {path.parent} is read-only "
            f"for this user, and SQLite needs to create the database and its -wal and -shm "
            f"files there; fix the permissions or point state.url elsewhere"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(
            f"state database {where} is read-only for this user: fix its permissions or point "
            f"state.url elsewhere"
        )
    return url.set(database=str(path))


def _enable_wal(cursor: sqlite3.Cursor, busy_timeout: float) -> None:
    """Switch the file to WAL (persistent: a no-op read once done), retrying while it is busy.

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once, without
    its busy handler, when several connections open a fresh file together (seen with four stores
    opening one new database at the same moment); so wait here, up to the busy timeout.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + busy_timeout
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _sqlite_engine(url: URL, options: EngineOptions, *, create: bool) -> Engine:
    memory = _is_memory(url)
    pool: dict[str, Any]
    if memory:
        # One shared connection: every connection to ":memory:" would be a new empty database.
        pool = {"poolclass": StaticPool}
    else:
        url = _prepare_sqlite_file(url, create=create)
        pool = {
            "pool_size": options.pool_size,
            "max_overflow": options.max_overflow,
            "pool_timeout": options.pool_timeout,
        }
    engine = create_engine(
        url,
        connect_args={"timeout": options.busy_timeout, "check_same_thread": False},
        **pool,
    )
    busy_ms = max(0, int(options.busy_timeout * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Autocommit at the driver level: pysqlite's own implicit BEGIN would defeat the explicit
        # BEGIN / BEGIN IMMEDIATE issued in _on_begin (SQLAlchemy's documented pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                _enable_wal(cursor, options.busy_timeout)
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: URL, options: EngineOptions) -> Engine:
    return create_engine(
        url,
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout,
        # A server restart or an idle-connection reaper must not fail the next poll.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": max(1, round(options.connect_timeout))},
    )


def build_engine(url: URL, options: EngineOptions, *, create: bool = True) -> Engine:
    """An engine for ``url`` (from ``parse_url``); connects lazily."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, options, create=create)
    return _postgres_engine(url, options)
