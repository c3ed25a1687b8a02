"""The SQLite state database and its -wal and -shm files are private (issue 11, point 11)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from listener.store import open_store


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o000])
def test_state_db_and_its_wal_and_shm_are_created_0600(tmp_path: Path, mask: int) -> None:
    """It holds subjects, senders and error texts: 0600 whatever the umask."""
    path = tmp_path / "state" / "state.db"
    old = os.umask(mask)
    try:
        store = open_store(f"sqlite:///{path}")
        try:
            assert store.ledger() == []
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(files)
    assert all(mode == 0o600 for mode in files.values()), files


def test_an_existing_state_db_keeps_its_mode(tmp_path: Path) -> None:
    """A file the operator made (say 0640 for a reporting group) is not changed behind them."""
    path = tmp_path / "state.db"
    open_store(f"sqlite:///{path}").close()
    path.chmod(0o640)
    open_store(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
