"""A fresh PostgreSQL schema per test (the local server; fail, not skip, under ``CI``)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from listener.store import SqlStateStore, open_store
from tests.store.conftest import postgres_admin

__all__ = ["postgres_admin"]

_SESSION = uuid.uuid4().hex[:8]
_counter = itertools.count()


@pytest.fixture
def pg_url(postgres_admin: sa.Engine) -> Iterator[str]:
    """The URL of an empty PostgreSQL schema, dropped afterwards."""
    schema = f"ews_cluster_{_SESSION}_{next(_counter)}"
    with postgres_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = postgres_admin.url.set(query={"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[SqlStateStore]:
    s = open_store(pg_url)
    yield s
    s.close()
