"""Errors a person can act on: read-only, locked, corrupt, unreachable; never a password."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from listener.errors import ListenerError
from listener.store import SqlStateStore, StoreError, open_store
from listener.store._engine import parse_url
from listener.store._errors import translate_errors

NOBODY = 65534


def open_unprivileged(url: str) -> tuple[int, str]:
    """Exit code (3: StoreError) and message of opening ``url`` as a user permissions apply to.

    A forked child, which drops to ``nobody`` when the tests run as root (file permissions mean
    nothing to root); a fresh interpreter would not do, as the venv's Python lives under /root.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                open_store(url).close()
                message, code = "opened", 0
            except StoreError as error:
                message, code = str(error), 3
            os.write(write_end, message.encode())
        except BaseException as error:
            os.write(write_end, repr(error).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ews-store-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(path)


# --- SQLite -----------------------------------------------------------------------------------


def test_sqlite_read_only_directory_is_a_clear_error(shared_dir: Path) -> None:
    """A database that cannot be created in a read-only directory names the directory."""
    target = shared_dir / "locked-down"
    target.mkdir(mode=0o555)
    target.chmod(0o555)
    code, output = open_unprivileged(f"sqlite:///{target}/state.db")
    assert code == 3, output
    assert f"its directory {target} is read-only for this user" in output
    assert "point state.url elsewhere" in output


def test_sqlite_read_only_file_is_a_clear_error(shared_dir: Path) -> None:
    """An existing database file the user cannot write is refused at open, not at first commit."""
    data = shared_dir / "data"
    data.mkdir()
    db = data / "state.db"
    open_store(f"sqlite:///{db}").close()
    db.chmod(0o444)
    if os.geteuid() == 0:
        # The directory is the unprivileged user's own; only the file is out of reach.
        os.chown(data, NOBODY, NOBODY)
        for side in data.glob("state.db-*"):
            side.unlink()
    code, output = open_unprivileged(f"sqlite:///{db}")
    assert code == 3, output
    assert f"state database {db} is read-only for this user" in output


def test_sqlite_open_creates_parent_directories_and_uses_wal(tmp_path: Path) -> None:
    """Missing parent directories are created, and the file is in WAL mode."""
    db = tmp_path / "a" / "b" / "state.db"
    open_store(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_locked_beyond_busy_timeout_is_a_clear_error(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout gives a StoreError."""
    db = tmp_path / "state.db"
    store = open_store(f"sqlite:///{db}", busy_timeout=0.05)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="stayed locked by another process") as caught:
            store.commit("box", "inbox", sync_state="s")
        assert "0.05 s" in str(caught.value)
        other.execute("ROLLBACK")
        store.commit("box", "inbox", sync_state="s")  # usable again once the lock is gone
        assert store.get_sync_state("box", "inbox") == "s"
    finally:
        other.close()
        store.close()


def test_sqlite_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a SQLite database is refused with what to do about it."""
    db = tmp_path / "state.db"
    db.write_bytes(b"definitely not sqlite " * 512)
    with pytest.raises(StoreError, match="not a SQLite database or is corrupt") as caught:
        open_store(f"sqlite:///{db}")
    assert str(db) in str(caught.value)
    assert isinstance(caught.value, ListenerError)


def test_sqlite_in_memory_store_works(tmp_path: Path) -> None:
    """``sqlite://`` gives a private in-memory store (for tests and dry runs)."""
    store = open_store("sqlite://")
    try:
        store.commit("box", "inbox", sync_state="s")
        assert store.get_sync_state("box", "inbox") == "s"
    finally:
        store.close()


# --- URLs and PostgreSQL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///x.db", "sqlite+pysqlite"),
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
    ],
)
def test_url_schemes_map_to_supported_drivers(url: str, driver: str) -> None:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; SQLite means the standard module."""
    assert parse_url(url).drivername == driver


@pytest.mark.parametrize(
    "url", ["mysql://user:hunter2@host/db", "postgresql+psycopg2://user:hunter2@host/db"]
)
def test_unsupported_url_is_refused_with_password_masked(url: str) -> None:
    """Other databases and drivers are refused; the message masks the password."""
    with pytest.raises(StoreError, match="unsupported database") as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


def test_malformed_url_is_not_echoed() -> None:
    """A URL that does not parse is not repeated (it may hold a password)."""
    with pytest.raises(StoreError, match="not a database URL") as caught:
        open_store("::hunter2::")
    assert "hunter2" not in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_postgres_is_a_clear_error_with_password_masked() -> None:
    """An unreachable PostgreSQL names the masked URL and the reason, and never the password."""
    port = _closed_port()
    with pytest.raises(StoreError) as caught:
        open_store(f"postgresql://listener:hunter2@127.0.0.1:{port}/state", connect_timeout=2)
    message = str(caught.value)
    assert f"postgresql+psycopg://listener:***@127.0.0.1:{port}/state" in message
    assert "cannot reach state database" in message
    assert "refused" in message.lower()
    # Not chained either: a driver may have put the connection string in its own exception.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert "hunter2" not in "".join(traceback.format_exception_only(caught.value))


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_postgres_store_repr_and_errors_mask_the_password(store_url: str) -> None:
    """A password in a working PostgreSQL URL appears in neither repr nor error messages."""
    url = parse_url(store_url).set(password="hunter2")  # trust auth ignores it
    store: SqlStateStore = open_store(url.render_as_string(hide_password=False))
    try:
        assert "hunter2" not in repr(store)
        assert "***" in repr(store)
        store.close()
        with pytest.raises(StoreError) as caught:
            store.check()
        assert "hunter2" not in str(caught.value)
    finally:
        store.close()


def test_sqlite_driver_read_only_error_is_translated(tmp_path: Path) -> None:
    """SQLite's own "readonly database" error (seen when os.access cannot tell) is made clear."""
    db = tmp_path / "state.db"
    open_store(f"sqlite:///{db}").close()
    url = sa.make_url(f"sqlite:///file:{db}?mode=ro&uri=true")
    engine = sa.create_engine(url)
    try:
        with (
            pytest.raises(StoreError, match="is read-only") as caught,
            translate_errors(url),
            engine.begin() as conn,
        ):
            conn.execute(sa.text("DELETE FROM ledger"))
        assert "-wal and -shm" in str(caught.value)
    finally:
        engine.dispose()
