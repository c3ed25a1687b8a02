"""Fixtures running the same store tests on SQLite (a temporary file) and PostgreSQL.

PostgreSQL is the local server (127.0.0.1:5432, user postgres, database ``test``, trust auth;
override with ``EWS_LISTENER_TEST_POSTGRES``). Each test gets a fresh schema, selected with
``options=-csearch_path=...``, dropped afterwards. When the server is unreachable the PostgreSQL
half is skipped, or fails when ``CI`` is set (dramatiq's habit: CI must not go green by skipping).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from listener.store import SqlStateStore, open_store

POSTGRES_URL = os.environ.get(
    "EWS_LISTENER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_SESSION = uuid.uuid4().hex[:8]
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """An engine on the test database, or skip (fail under CI) when PostgreSQL is unreachable."""
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        engine.dispose()
        reason = f"PostgreSQL at {engine.url!r} is unreachable: {error.orig}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    with engine.begin() as conn:  # schemas a crashed test left behind
        names = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
            {"p": f"ews_store_{_SESSION}_%"},
        ).scalars()
        for name in list(names):
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@contextlib.contextmanager
def fresh_schema(admin: sa.Engine) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL schema (its connections use it as ``search_path``),
    dropped afterwards; named so that ``postgres_admin`` drops it too if a test crashes."""
    schema = f"ews_store_{_SESSION}_{next(_counter)}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = admin.url.set(query={"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty state database: a SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/var/state.db"
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    with fresh_schema(admin) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStateStore]:
    """An open store on an empty database; closed afterwards."""
    s = open_store(store_url, busy_timeout=5.0)
    yield s
    s.close()
