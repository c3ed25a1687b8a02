"""``ews-listener once`` against a PostgreSQL state database replicas share: it polls only the
mailboxes whose leases it can claim (fenced, as a replica's polls are), asks the owners of the
others to poll them, and releases what it borrowed (``listener.cluster._oneshot``)."""

from __future__ import annotations

import json

import pytest

from listener.cluster._oneshot import Borrowed
from listener.store import POLL_CHANNEL, Fence, LeaseLost, SqlStateStore
from tests.cluster.test_replicas import configure, owners, state
from tests.e2e.conftest import World, world

__all__ = ["state", "world"]

pytestmark = [pytest.mark.postgres]


def test_borrowed_leases_fence_polls_and_are_released(pg_store: SqlStateStore) -> None:
    """Only free leases are borrowed; a borrowed one holds while renewed within a lease, and
    after ``close`` it is free again and a commit under it is refused."""
    leases = pg_store.leases
    leases.join("r9", host="h", pid=1, mailboxes=["a", "b"])
    assert leases.claim("r9", ["a"], limit=1, lease=60) == {"a": 1}
    clock = [0.0]
    borrowed = Borrowed(leases, owner="once:t", lease=60, renew=3600, monotonic=lambda: clock[0])
    assert borrowed.claim(["a", "b"]) == {"b": 1}
    fence = Fence("b", "once:t", 1)
    with borrowed.polling("b") as got:
        assert got == fence
        pg_store.commit("b", "inbox", sync_state="s1", fence=fence)
    with pytest.raises(LeaseLost, match="holds no lease"), borrowed.polling("a"):
        pass
    clock[0] = 61  # no renewal for a lease: not surely ours any more
    assert not borrowed.holds(fence)
    with pytest.raises(LeaseLost, match="could not renew"), borrowed.polling("b"):
        pass
    assert borrowed.close() == ["b"]
    assert owners(pg_store) == {"a": "r9", "b": None}
    with pytest.raises(LeaseLost):
        pg_store.commit("b", "inbox", sync_state="s2", fence=fence)
    assert pg_store.get_sync_state("b", "inbox") == "s1"


@pytest.mark.slow
def test_once_polls_free_mailboxes_and_leaves_owned_ones_to_their_owner(
    world: World, pg_url: str, state: SqlStateStore
) -> None:
    """A replica ("r9") holds box0's lease; ``once`` hands over box1's mail only, asks r9 to
    poll box0 (NOTIFY), reports it, and frees box1's lease. Once r9 lets box0 go, the next
    ``once`` hands box0's mail over, and nothing is handed over twice."""
    boxes = {}
    for i in range(2):
        world.ews.add_mailbox(f"user{i}@contoso.com")
        boxes[f"box{i}"] = {
            "address": f"user{i}@contoso.com",
            "credential": "sales",
            "start_from": "all",
        }
        for n in range(3):
            world.deliver(f"user{i}@contoso.com", f"box{i} order {n}")
    config = configure(world, pg_url, boxes)
    leases = state.leases
    leases.join("r9", host="elsewhere", pid=1, mailboxes=["box0", "box1"])
    assert leases.claim("r9", ["box0"], limit=1, lease=120) == {"box0": 1}
    signals = leases.listen()
    try:
        done = world.cli("once", "--config", str(config), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)["mailboxes"]
        assert report["box0"]["polled_by"] == "r9"
        assert report["box0"]["handed_over"] == 0
        assert report["box1"]["polled_by"] is None
        assert report["box1"]["handed_over"] == 3
        assert (POLL_CHANNEL, "box0") in signals.wait(5)
    finally:
        signals.close()
    assert sorted(str(r["subject"]) for r in world.receipts_log()) == [
        f"box1 order {n}" for n in range(3)
    ]
    assert owners(state) == {"box0": "r9", "box1": None}
    assert {row.mailbox: row.epoch for row in leases.leases()}["box1"] == 1

    text = world.cli("once", "--config", str(config))
    assert text.returncode == 0, text.stdout + text.stderr
    assert "box0: owned by 'r9', asked to poll it now - ok" in text.stdout

    leases.leave("r9")
    again = world.cli("once", "--config", str(config), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)["mailboxes"]
    assert (report["box0"]["handed_over"], report["box1"]["handed_over"]) == (3, 0)
    keys = [r["key"] for r in world.receipts_log()]
    assert len(keys) == len(set(keys)) == 6
    assert owners(state) == {"box0": None, "box1": None}
