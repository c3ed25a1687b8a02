"""An idle poll writes nothing (issue 16: 10,000 idle mailboxes in one replica), and that loses
nothing: the stored sync state stays as good as the one the server returned unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from listener import poller as poller_module
from listener.store import SqlStateStore, open_store
from tests.poller.fakes import FakeSource
from tests.poller.test_poller import make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def _commits(store: SqlStateStore) -> list[dict[str, Any]]:
    """Every ``commit`` made from now on, by its keyword arguments."""
    calls: list[dict[str, Any]] = []
    real = store.commit

    def commit(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        real(*args, **kwargs)

    store.commit = commit  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("unchanged", ["same", "new"])
def test_an_idle_poll_commits_nothing(store: SqlStateStore, unchanged: str) -> None:
    """After the first poll, polls that find nothing new make no commit at all, whether the
    server returns the same state or an equivalent new one (kept while fresh)."""
    source = FakeSource()
    source.unchanged = unchanged
    source.deliver("first")
    poller, _hs = make(store, source, start_from="all")
    assert poller.poll().handed_over == 1
    stored = store.get_sync_state("box", "inbox")
    commits = _commits(store)
    for _ in range(3):
        result = poller.poll()
        assert result.ok
        assert result.handed_over == 0
    assert commits == []
    assert store.get_sync_state("box", "inbox") == stored


def test_a_new_equivalent_state_is_written_once_it_is_old(
    store: SqlStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged state that differs from the stored one is written when the stored one is
    older than STATE_REFRESH, so it never ages on the server; the same state never is."""
    source = FakeSource()
    source.unchanged = "new"
    poller, _ = make(store, source, start_from="all")
    source.deliver("first")
    poller.poll()
    assert store.get_sync_state("box", "inbox") == "fake:1"
    commits = _commits(store)
    monkeypatch.setattr(poller_module, "STATE_REFRESH", 0.0)
    poller.poll()
    assert [c["sync_state"] for c in commits] == ["fake:01"]
    source.unchanged = "same"
    poller.poll()
    assert len(commits) == 1


def test_a_fresh_poller_after_an_idle_poll_loses_and_repeats_nothing(
    store: SqlStateStore,
) -> None:
    """A crash (a new process: new poller, same store) right after idle polls that kept the old
    state: the next poll hands over exactly the mail that arrived since, once."""
    source = FakeSource()
    source.unchanged = "new"
    for n in range(3):
        source.deliver(f"before {n}")
    poller, hs = make(store, source, start_from="all")
    assert poller.poll().handed_over == 3
    assert poller.poll().handed_over == 0  # idle: "fake:03" returned, "fake:3" kept
    assert store.get_sync_state("box", "inbox") == "fake:3"
    source.deliver("after")
    restarted, again = make(store, source, start_from="all")
    assert restarted.poll().handed_over == 1
    assert restarted.poll().handed_over == 0
    assert len(again["h"].received) == 1
    assert set(again["h"].received).isdisjoint(hs["h"].received)


def test_a_poll_with_mail_still_commits_its_state(store: SqlStateStore) -> None:
    """Only an idle poll keeps the state: one that handed mail over commits the new one."""
    source = FakeSource()
    source.unchanged = "same"
    poller, _ = make(store, source, start_from="all")
    poller.poll()
    commits = _commits(store)
    source.deliver("one")
    assert poller.poll().handed_over == 1
    assert [c["sync_state"] for c in commits] == ["fake:1"]
    assert len(commits[0]["successes"]) == 1
