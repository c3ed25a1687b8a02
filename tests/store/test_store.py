"""The StateStore contract, run unchanged against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from listener.abc import DeadLetter, LedgerEntry, PendingEntry
from listener.store import SCHEMA_VERSION, SqlStateStore, StoreError, open_store
from listener.store._engine import parse_url
from listener.store._schema import metadata

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PARIS = timezone(timedelta(hours=1))


def entry(key: str, handler: str = "h", mailbox: str = "box", at: datetime = T0) -> LedgerEntry:
    return LedgerEntry(
        idempotency_key=key,
        handler=handler,
        mailbox=mailbox,
        item_id=f"item-{key}",
        internet_message_id=f"<{key}@example.com>",
        handed_at=at,
    )


def parked(item: str, at: datetime = T0, mailbox: str = "box", attempts: int = 1) -> PendingEntry:
    return PendingEntry(
        mailbox=mailbox,
        item_id=item,
        idempotency_key=f"key-{item}",
        handlers=("a", "b"),
        attempts=attempts,
        next_attempt_at=at,
        last_error="boom",
        first_seen_at=T0,
    )


def letter(item: str, mailbox: str = "box") -> DeadLetter:
    return DeadLetter(
        id=None,
        mailbox=mailbox,
        item_id=item,
        idempotency_key=f"key-{item}",
        handlers=("a",),
        error="gone",
        permanent=True,
        attempts=3,
        subject="Hi",
        created_at=T0,
    )


def raw_engine(url: str) -> sa.Engine:
    return sa.create_engine(parse_url(url))


# --- round trips ------------------------------------------------------------------------------


def test_ledger_round_trip_keeps_the_instant_in_utc(store: SqlStateStore) -> None:
    """A ledger entry comes back equal, its time converted to an aware UTC datetime."""
    stamped = datetime(2026, 11, 28, 13, 30, 15, 123456, tzinfo=PARIS)
    store.commit("box", "inbox", sync_state=None, successes=[entry("k1", at=stamped)])
    [got] = store.ledger("box")
    assert got == entry("k1", at=stamped)
    assert got.handed_at.tzinfo is UTC
    assert got.handed_at.hour == 12


def test_pending_round_trip(store: SqlStateStore) -> None:
    """A pending entry comes back equal, with its handlers as a tuple and aware UTC times."""
    p = PendingEntry(
        mailbox="box",
        item_id="i1",
        idempotency_key="key",
        handlers=("a", "b"),
        attempts=2,
        next_attempt_at=T0.astimezone(PARIS),
        last_error="x" * 5000,
        first_seen_at=T0,
    )
    store.commit("box", "inbox", sync_state=None, pending=[p])
    [got] = store.pending("box")
    assert got == p
    assert got.next_attempt_at.tzinfo is UTC
    assert got.first_seen_at.tzinfo is UTC


def test_dead_letter_round_trip_assigns_an_id(store: SqlStateStore) -> None:
    """A dead letter comes back with an id assigned and every other field unchanged."""
    d = DeadLetter(
        id=None,
        mailbox="box",
        item_id="i1",
        idempotency_key="key",
        handlers=("a", "b"),
        error="bad",
        permanent=False,
        attempts=5,
        subject="Ünïcode",
        created_at=T0,
    )
    store.commit("box", "inbox", sync_state=None, dead=[d])
    [got] = store.dead_letters()
    assert got.id is not None
    assert got == dataclasses.replace(d, id=got.id)
    assert got.permanent is False
    assert got.created_at.tzinfo is UTC


def test_sync_state_long_text_moves_only_when_given(store: SqlStateStore) -> None:
    """Sync states of many kilobytes are stored whole; sync_state=None leaves the old one."""
    assert store.get_sync_state("box", "inbox") is None
    long_state = "H4sIAAAA" * 4000  # 32 KB, like a real EWS sync state of a busy folder
    store.commit("box", "inbox", sync_state=long_state)
    store.commit("box", "inbox", sync_state=None, successes=[entry("k")])
    assert store.get_sync_state("box", "inbox") == long_state
    store.commit("box", "inbox", sync_state="next")
    assert store.get_sync_state("box", "inbox") == "next"
    assert store.get_sync_state("box", "other") is None


def test_naive_datetimes_are_refused(store: SqlStateStore) -> None:
    """A naive datetime raises instead of being stored with a guessed time zone."""
    naive = entry("k", at=datetime(2026, 1, 2))
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        store.commit("box", "inbox", sync_state=None, successes=[naive])
    assert store.ledger_count() == 0


# --- commit -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(parked("p", at=datetime(2026, 1, 1)), id="naive-time"),  # fails in Python
        pytest.param(
            PendingEntry(
                mailbox="box",
                item_id="p",
                idempotency_key=None,  # type: ignore[arg-type]
                handlers=(),
                attempts=0,
                next_attempt_at=T0,
                last_error="",
                first_seen_at=T0,
            ),
            id="not-null",  # fails in the database
        ),
    ],
)
def test_commit_is_one_transaction(store: SqlStateStore, bad: PendingEntry) -> None:
    """A failure mid-commit leaves the ledger, pending, dead letters and sync state unchanged."""
    store.commit("box", "inbox", sync_state="s1", successes=[entry("before")])
    with pytest.raises((StoreError, sa.exc.StatementError)):
        store.commit(
            "box",
            "inbox",
            sync_state="s2",
            successes=[entry("k1"), entry("k2")],
            pending=[parked("ok"), bad],
            resolved=[],
            dead=[letter("d")],
        )
    assert [e.idempotency_key for e in store.ledger()] == ["before"]
    assert store.pending() == []
    assert store.dead_letters() == []
    assert store.get_sync_state("box", "inbox") == "s1"


def test_ledger_is_idempotent(store: SqlStateStore) -> None:
    """Handing a message over again (after a crash) neither fails nor duplicates the entry."""
    first = entry("k", at=T0)
    again = entry("k", at=T0 + timedelta(minutes=5))
    store.commit("box", "inbox", sync_state=None, successes=[first, first])
    store.commit("box", "inbox", sync_state="s", successes=[again, entry("k", handler="other")])
    assert store.ledger_count() == 2
    assert store.ledger_count("box") == 2
    assert store.ledger_count("elsewhere") == 0
    assert {e.handed_at for e in store.ledger() if e.handler == "h"} == {T0}
    assert store.get_sync_state("box", "inbox") == "s"


def test_done_finds_only_recorded_pairs_across_many_keys(store: SqlStateStore) -> None:
    """``done`` answers for more keys than one IN clause holds, and only with recorded pairs."""
    keys = [f"k{i}" for i in range(1200)]
    store.commit("box", "inbox", sync_state=None, successes=[entry(k) for k in keys[::3]])
    found = store.done([*keys, "unknown"])
    assert found == {(k, "h") for k in keys[::3]}
    assert store.done([]) == set()


def test_pending_upsert_and_resolve(store: SqlStateStore) -> None:
    """Pending is upserted by (mailbox, item id); resolve deletes only that mailbox's items."""
    store.commit("box", "inbox", sync_state=None, pending=[parked("i1"), parked("i2")])
    store.commit("other", "inbox", sync_state=None, pending=[parked("i1", mailbox="other")])
    later = T0 + timedelta(minutes=10)
    store.commit("box", "inbox", sync_state=None, pending=[parked("i1", at=later, attempts=2)])
    assert store.pending_count() == 3
    assert {(p.item_id, p.attempts) for p in store.pending("box")} == {("i1", 2), ("i2", 1)}
    store.commit("box", "inbox", sync_state=None, resolved=["i1", "missing"])
    assert [p.item_id for p in store.pending("box")] == ["i2"]
    assert store.pending_count("other") == 1
    assert store.pending_count("box") == 1
    assert store.pending_counts() == {"box": 1, "other": 1}
    store.commit("other", "inbox", sync_state=None, resolved=["i1"])
    assert store.pending_counts() == {"box": 1}


def test_due_pending_is_ordered_by_next_attempt_and_limited(store: SqlStateStore) -> None:
    """Only entries due at ``now`` come back, the longest-due first, at most ``limit``."""
    times = {"c": T0 + timedelta(seconds=30), "a": T0 - timedelta(hours=1), "b": T0, "z": T0}
    times["future"] = T0 + timedelta(days=1)
    store.commit("box", "inbox", sync_state=None, pending=[parked(i, t) for i, t in times.items()])
    old = parked("old", T0 - timedelta(days=9), mailbox="x")
    store.commit("x", "inbox", sync_state=None, pending=[old])
    now = T0 + timedelta(minutes=1)
    assert [p.item_id for p in store.due_pending("box", now, 10)] == ["a", "b", "z", "c"]
    assert [p.item_id for p in store.due_pending("box", now, 2)] == ["a", "b"]
    # the same instant in another time zone compares equal
    assert [p.item_id for p in store.due_pending("box", T0.astimezone(PARIS), 10)] == [
        "a",
        "b",
        "z",
    ]


def test_dead_letters_list_get_remove(store: SqlStateStore) -> None:
    """Dead letters are listed per mailbox in id order, fetched by id and removed by ids."""
    store.commit("box", "inbox", sync_state=None, dead=[letter("d1"), letter("d2")])
    store.commit("other", "inbox", sync_state=None, dead=[letter("d3", mailbox="other")])
    ids = [d.id for d in store.dead_letters() if d.id is not None]
    assert [d.item_id for d in store.dead_letters("box")] == ["d1", "d2"]
    assert ids == sorted(ids)
    first = store.dead_letter(ids[0])
    assert first is not None
    assert first.item_id == "d1"
    assert store.dead_letter(10_000) is None
    assert store.remove_dead_letters([ids[0], ids[2], 10_000]) == 2
    assert [d.item_id for d in store.dead_letters()] == ["d2"]
    assert store.remove_dead_letters([]) == 0


def test_removed_dead_letter_ids_are_not_reused(store: SqlStateStore) -> None:
    """After a purge a new letter gets a new id, so an id printed earlier never names it."""
    store.commit("box", "inbox", sync_state=None, dead=[letter("d1")])
    [old] = store.dead_letters()
    store.remove_dead_letters([old.id])  # type: ignore[list-item]
    store.commit("box", "inbox", sync_state=None, dead=[letter("d2")])
    [new] = store.dead_letters()
    assert new.id != old.id


def test_reset_sync_state(store: SqlStateStore) -> None:
    """Resetting forgets one folder's sync state and says whether there was one."""
    store.commit("box", "inbox", sync_state="s")
    store.commit("box", "archive", sync_state="t")
    assert store.reset_sync_state("box", "inbox") is True
    assert store.reset_sync_state("box", "inbox") is False
    assert store.get_sync_state("box", "inbox") is None
    assert store.get_sync_state("box", "archive") == "t"


# --- schema and lifecycle ---------------------------------------------------------------------


def test_migrations_from_empty_create_every_table(store_url: str) -> None:
    """Opening an empty database creates the current schema once; reopening changes nothing."""
    with capture_logs() as logs:
        open_store(store_url).close()
    every_version = list(range(1, SCHEMA_VERSION + 1))
    assert [e["version"] for e in logs if e["event"] == "store.migrated"] == every_version
    store = open_store(store_url)
    try:
        assert store.schema_version() == SCHEMA_VERSION
    finally:
        store.close()
    engine = raw_engine(store_url)
    try:
        inspector = sa.inspect(engine)
        for table in metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == set(table.columns.keys()), table.name
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version FROM schema_version")).scalars()
            assert list(versions) == every_version
    finally:
        engine.dispose()


def test_refuses_a_newer_schema(store_url: str) -> None:
    """A database migrated by a newer ews-listener is refused with what to do about it."""
    open_store(store_url).close()
    engine = raw_engine(store_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)"),
            {"v": SCHEMA_VERSION + 1, "t": T0.replace(tzinfo=None)},
        )
    engine.dispose()
    with pytest.raises(StoreError) as caught:
        open_store(store_url)
    assert (
        f"has schema version {SCHEMA_VERSION + 1}, this ews-listener knows up to "
        f"{SCHEMA_VERSION}: upgrade ews-listener or point state.url elsewhere"
    ) in str(caught.value)


def test_create_false_refuses_an_empty_database(store_url: str) -> None:
    """``create=False`` creates nothing and says why it cannot open an empty database."""
    if store_url.startswith("sqlite"):
        with pytest.raises(StoreError, match="does not exist"):
            open_store(store_url, create=False)
        open_store(store_url.replace("state.db", "empty.db"), busy_timeout=1).close()
        engine = raw_engine(store_url.replace("state.db", "empty.db"))
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE schema_version"))
        engine.dispose()
        store_url = store_url.replace("state.db", "empty.db")
    with pytest.raises(StoreError, match="has schema version 0"):
        open_store(store_url, create=False)
    open_store(store_url).close()
    open_store(store_url, create=False).close()


def test_concurrent_opens_migrate_once(store_url: str) -> None:
    """Several stores opening one fresh database at once all succeed; the schema is made once."""
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    stores: list[SqlStateStore] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(open_store(store_url, busy_timeout=10))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert [s.schema_version() for s in stores] == [SCHEMA_VERSION] * 4
    finally:
        for s in stores:
            s.close()


def test_concurrent_commits_lose_nothing(store: SqlStateStore) -> None:
    """8 threads x 200 commits: every row lands, and no thread meets "database is locked"."""
    threads_n, commits_n = 8, 200
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        mailbox = f"box{n}"
        barrier.wait()
        try:
            for i in range(commits_n):
                store.commit(
                    mailbox,
                    "inbox",
                    sync_state=f"state-{i}",
                    successes=[entry(f"{mailbox}-{i}", mailbox=mailbox)],
                    pending=[parked(f"p{i}", mailbox=mailbox)],
                    resolved=[f"p{i - 1}"] if i else [],
                )
                if i % 20 == 0:
                    store.done([f"{mailbox}-{i}"])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.ledger_count() == threads_n * commits_n
    assert store.pending_count() == threads_n
    for n in range(threads_n):
        assert store.get_sync_state(f"box{n}", "inbox") == f"state-{commits_n - 1}"


def test_check_passes_and_a_closed_store_says_so(store: SqlStateStore) -> None:
    """``check`` succeeds on a working store; every call after ``close`` raises StoreError."""
    store.check()
    store.close()
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.check()
    with pytest.raises(StoreError, match="is closed"):
        store.commit("box", "inbox", sync_state="s")


def test_two_stores_on_one_database_wait_for_each_other(store_url: str) -> None:
    """Two stores (as two processes would) writing one database at once both succeed."""
    stores = [open_store(store_url, busy_timeout=10) for _ in range(2)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(store: SqlStateStore, n: int) -> None:
        barrier.wait()
        try:
            for i in range(50):
                store.commit(f"b{n}", "inbox", sync_state=f"{i}", successes=[entry(f"{n}-{i}")])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert stores[0].ledger_count() == 200
    finally:
        for s in stores:
            s.close()


def test_schema_4_tags_earlier_rows_as_ews_and_drops_change_keys(store_url: str) -> None:
    """Rows written at schema 3 (EWS ids with change keys) come through as the ews source's."""
    from listener.store import _migrations

    url = sa.engine.make_url(store_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = raw_engine(store_url)
    try:
        with engine.begin() as conn:
            metadata.tables["schema_version"].create(conn)
            for step in _migrations.MIGRATIONS[:3]:
                step.apply(conn)
                conn.execute(
                    metadata.tables["schema_version"]
                    .insert()
                    .values(version=step.version, applied_at=T0)
                )
            conn.execute(
                sa.text(
                    "INSERT INTO pending (mailbox, item_id, change_key, idempotency_key, handlers,"
                    " attempts, next_attempt_at, last_error, first_seen_at) VALUES"
                    " ('box', 'AAMk1', 'CK', 'k1', '[\"a\"]', 1, :t, 'x', :t)"
                ),
                {"t": T0},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO dead_letters (mailbox, item_id, change_key, idempotency_key,"
                    " handlers, error, permanent, attempts, subject, created_at) VALUES"
                    " ('box', 'AAMk2', 'CK', 'k2', '[\"a\"]', 'bad', :f, 5, 'Hi', :t)"
                ),
                {"t": T0, "f": False},
            )
    finally:
        engine.dispose()
    store = open_store(store_url)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        (entry,) = store.pending("box")
        assert (entry.item_id, entry.source, entry.internet_message_id) == ("AAMk1", "ews", None)
        (letter,) = store.dead_letters("box")
        assert (letter.item_id, letter.source) == ("AAMk2", "ews")
    finally:
        store.close()
    engine = raw_engine(store_url)
    try:
        for table in ("pending", "dead_letters"):
            columns = {c["name"] for c in sa.inspect(engine).get_columns(table)}
            assert "change_key" not in columns, table
            assert "source" in columns, table
    finally:
        engine.dispose()
