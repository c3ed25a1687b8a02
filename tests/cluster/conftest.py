"""A fresh PostgreSQL schema per test (the local server; fail, not skip, under ``CI``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from listener.store import SqlStateStore, open_store
from tests.store.conftest import fresh_schema, postgres_admin

__all__ = ["postgres_admin"]


@pytest.fixture
def pg_url(postgres_admin: sa.Engine) -> Iterator[str]:
    """The URL of an empty PostgreSQL schema, dropped afterwards."""
    with fresh_schema(postgres_admin) as url:
        yield url


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[SqlStateStore]:
    s = open_store(pg_url)
    yield s
    s.close()
