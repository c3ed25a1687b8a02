"""Leases on the real PostgreSQL: claim, renew, release, expiry, balance and fencing."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import pytest

from listener.abc import LedgerEntry
from listener.cluster import FencedStore, LeaseListener, LeaseManager, LeaseMetrics, fair_share
from listener.cluster._member import LeaseStop
from listener.observability import Metrics
from listener.store import Fence, LeaseLost, SqlStateStore, StoreError, open_store

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOXES = [f"box{i:02d}" for i in range(30)]


def entry(key: str, mailbox: str = "box00") -> LedgerEntry:
    return LedgerEntry(
        idempotency_key=key,
        handler="h",
        mailbox=mailbox,
        item_id=f"id-{key}",
        internet_message_id=None,
        handed_at=T0,
    )


class Events(LeaseListener):
    """Records every lease event, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def acquired(self, mailbox: str, epoch: int) -> None:
        self.seen.append(("acquired", mailbox))

    def releasing(self, mailbox: str) -> None:
        self.seen.append(("releasing", mailbox))

    def released(self, mailbox: str) -> None:
        self.seen.append(("released", mailbox))

    def lost(self, mailbox: str) -> None:
        self.seen.append(("lost", mailbox))


def manager(
    store: SqlStateStore, name: str, boxes: list[str] = BOXES, lease: float = 30
) -> LeaseManager:
    m = LeaseManager(store.leases, boxes, replica=name, host="test", pid=1, lease=lease)
    store.leases.join(name, host="test", pid=1, mailboxes=boxes)
    return m


def test_claims_of_two_replicas_never_overlap(pg_store: SqlStateStore) -> None:
    """Replicas claiming at the same moment take disjoint mailboxes, each with epoch 1."""
    leases = pg_store.leases
    leases.join("a", host="h", pid=1, mailboxes=BOXES)
    got: dict[str, dict[str, int]] = {}
    barrier = threading.Barrier(3)

    def claim(name: str) -> None:
        barrier.wait()
        got[name] = leases.claim(name, BOXES, limit=20, lease=30)

    threads = [threading.Thread(target=claim, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    owned = [m for claimed in got.values() for m in claimed]
    assert len(owned) == len(set(owned)) == len(BOXES)
    assert {e for claimed in got.values() for e in claimed.values()} == {1}


def test_renew_release_and_expiry(pg_store: SqlStateStore) -> None:
    """A renewal returns what is held; a released or expired lease goes to the next claimer
    under a higher epoch, and the old owner's renewal no longer returns it."""
    leases = pg_store.leases
    leases.join("a", host="h", pid=1, mailboxes=["x", "y", "z"])
    assert leases.claim("a", ["x", "y"], limit=5, lease=30) == {"x": 1, "y": 1}
    assert leases.renew("a", lease=30) == {"x": 1, "y": 1}
    assert leases.claim("b", ["x", "y", "z"], limit=5, lease=30) == {"z": 1}  # x, y are a's
    assert leases.release("a", ["x"]) == ["x"]
    assert leases.claim("b", ["x", "y"], limit=5, lease=30) == {"x": 2}
    leases.renew("a", lease=0)  # y expires at once (now() + 0)
    assert leases.renew("a", lease=30) == {}
    assert leases.claim("b", ["y"], limit=5, lease=30) == {"y": 2}
    assert leases.leave("b") == ["x", "y", "z"]
    assert {row.mailbox: (row.owner, row.live) for row in leases.leases()} == dict.fromkeys(
        "xyz", (None, False)
    )


def test_a_commit_under_a_lost_lease_writes_nothing(pg_store: SqlStateStore) -> None:
    """Fencing: a commit is written only under the lease's current (owner, epoch) while it is
    unexpired; otherwise LeaseLost, and neither ledger nor sync state moves."""
    leases = pg_store.leases
    leases.join("a", host="h", pid=1, mailboxes=["box00"])
    epoch = leases.claim("a", ["box00"], limit=1, lease=30)["box00"]
    mine = Fence("box00", "a", epoch)
    pg_store.commit("box00", "inbox", sync_state="s1", successes=[entry("k1")], fence=mine)
    leases.renew("a", lease=0)  # paused past its lease
    with pytest.raises(LeaseLost, match="expired"):
        pg_store.commit("box00", "inbox", sync_state="s2", successes=[entry("k2")], fence=mine)
    leases.claim("b", ["box00"], limit=1, lease=30)  # another replica takes over
    with pytest.raises(LeaseLost, match=r"epoch 1, now epoch 2, owned by 'b'"):
        pg_store.commit("box00", "inbox", sync_state="s3", successes=[entry("k3")], fence=mine)
    with pytest.raises(LeaseLost, match="no lease"):
        pg_store.commit("nobox", "inbox", sync_state="s", fence=Fence("nobox", "a", 1))
    assert pg_store.get_sync_state("box00", "inbox") == "s1"
    assert [e.idempotency_key for e in pg_store.ledger()] == ["k1"]
    pg_store.commit("box00", "inbox", sync_state="s4", fence=Fence("box00", "b", 2))
    assert pg_store.get_sync_state("box00", "inbox") == "s4"


@pytest.mark.parametrize(("mailboxes", "replicas"), [(30, 3), (10, 3), (300, 7), (2, 3)])
def test_fair_shares_add_up_and_differ_by_one_at_most(mailboxes: int, replicas: int) -> None:
    """The shares of the live replicas sum to N and are floor or ceil of N/R."""
    live = [f"r{i}" for i in range(replicas)]
    shares = [fair_share(mailboxes, live, me) for me in live]
    assert sum(shares) == mailboxes
    assert max(shares) - min(shares) <= 1


def test_replicas_balance_and_rebalance_when_one_joins_and_one_leaves(
    pg_store: SqlStateStore,
) -> None:
    """Two replicas split 30 mailboxes 15/15; a third makes them drain to 10/10/10 (releasing
    only idle mailboxes); a leaving replica's mailboxes go to the others, 15/15 again."""
    a, b = manager(pg_store, "a"), manager(pg_store, "b")
    events = Events()
    a.subscribe(events)
    for m in (a, b, a, b):
        m.tick()
    assert (len(a.owned()), len(b.owned())) == (15, 15)
    busy = set(a.owned())  # every mailbox of a is mid-poll: nothing of a's can be released yet
    a._busy = lambda mailbox: mailbox in busy
    c = manager(pg_store, "c")
    for m in (c, a, b, c):
        m.tick()
    assert len(a.owned()) == 15  # draining, not released: its polls are running
    draining = [name for kind, name in events.seen if kind == "releasing"]
    assert len(draining) == 5
    assert all(a.fence(name) is None for name in draining)  # no new poll starts there
    busy.clear()
    for _ in range(2):
        for m in (a, b, c):
            m.tick()
    counts = sorted(len(m.owned()) for m in (a, b, c))
    assert counts == [10, 10, 10]
    assert Counter(kind for kind, _ in events.seen)["released"] == 5
    owners = [set(m.owned()) for m in (a, b, c)]
    assert set.union(*owners) == set(BOXES)
    assert sum(map(len, owners)) == len(BOXES)
    c.leave()
    for m in (a, b, a, b):
        m.tick()
    assert sorted(len(m.owned()) for m in (a, b)) == [15, 15]


def test_a_lease_taken_by_another_is_lost_at_the_next_tick(pg_store: SqlStateStore) -> None:
    """A replica whose lease expired and was claimed elsewhere hears ``lost`` and refuses polls."""
    a = manager(pg_store, "a", ["x"], lease=30)
    events = Events()
    a.subscribe(events)
    a.tick()
    fence = a.fence("x")
    assert fence is not None
    assert fence.epoch == 1
    pg_store.leases.renew("a", lease=0)
    pg_store.leases.claim("b", ["x"], limit=1, lease=30)
    a.tick()
    assert events.seen == [("acquired", "x"), ("lost", "x")]
    with pytest.raises(LeaseLost), a.polling("x"):
        pass


def test_a_commit_refused_inside_a_poll_drops_the_mailbox(pg_store: SqlStateStore) -> None:
    """``LeaseLost`` raised by a commit within ``polling`` drops the mailbox at once."""
    a = manager(pg_store, "a", ["x"])
    events = Events()
    a.subscribe(events)
    a.tick()
    pg_store.leases.renew("a", lease=0)
    with pytest.raises(LeaseLost), a.polling("x") as fence:
        pg_store.commit("x", "inbox", sync_state="s", fence=fence)
    assert a.owned() == {}
    assert events.seen[-1] == ("lost", "x")


def test_sqlite_has_no_leases(tmp_path: object) -> None:
    """One process on SQLite: asking for leases is a clear error."""
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        with pytest.raises(StoreError, match="PostgreSQL"):
            _ = store.leases
    finally:
        store.close()


class Polls(LeaseListener):
    """Collects poll requests; ``got`` is set at the first."""

    def __init__(self) -> None:
        self.requested: list[str] = []
        self.got = threading.Event()

    def poll_requested(self, mailbox: str) -> None:
        self.requested.append(mailbox)
        self.got.set()

    def lifecycle_requested(self, mailbox: str, subscription: str, event: str) -> None:
        self.requested.append(f"{mailbox} {subscription} {event}")
        self.got.set()


def test_signals_wake_the_others_and_forward_polls_to_the_owner(pg_store: SqlStateStore) -> None:
    """Over LISTEN/NOTIFY: a released lease is claimed by the other replica before its next
    renewal tick (renewals here are an hour apart), and a poll request or a Graph lifecycle
    notification made at the replica that does not own a mailbox reaches the one that does."""
    owner = LeaseManager(
        pg_store.leases, ["x"], replica="a", host="h", pid=1, lease=7200, renew=3600
    )
    other = LeaseManager(
        pg_store.leases, ["x"], replica="b", host="h", pid=2, lease=7200, renew=3600
    )
    polls = Polls()
    owner.subscribe(polls)
    acquired = threading.Event()

    class Acquired(LeaseListener):
        def acquired(self, mailbox: str, epoch: int) -> None:
            acquired.set()

    other.subscribe(Acquired())
    owner.start()
    try:
        signals = pg_store.leases.listen()  # the other starts once the owner holds "x"
        try:
            while "x" not in owner.owned():
                signals.wait(0.25)
        finally:
            signals.close()
        other.start()
        other.forward("x")
        assert polls.got.wait(30), "the poll request did not reach the owner"
        assert polls.requested == ["x"]
        polls.got.clear()
        other.forward_lifecycle("x", "4c9a-sub", "subscriptionRemoved")
        assert polls.got.wait(30), "the lifecycle notification did not reach the owner"
        assert polls.requested == ["x", "x 4c9a-sub subscriptionRemoved"]
        # The owner gives "x" up (as at SIGTERM): the other is woken and claims it.
        owner.leave()
        assert acquired.wait(30), "the other replica was not woken by the release"
        assert other.owned() == {"x": 2}
    finally:
        other.leave()
        owner.leave()


def test_a_poll_outliving_its_lease_by_the_local_clock_is_told_to_stop(
    pg_store: SqlStateStore,
) -> None:
    """``LeaseStop``: set once the monotonic clock passes the last renewal plus a lease (a pause
    the process did not see), or when the app stops; a new poll is refused then too."""
    clock = [100.0]
    m = LeaseManager(
        pg_store.leases, ["x"], replica="a", host="h", pid=1, lease=30, monotonic=lambda: clock[0]
    )
    pg_store.leases.join("a", host="h", pid=1, mailboxes=["x"])
    m.tick()
    fenced = FencedStore(pg_store, "x")
    app_stop = threading.Event()
    stop = LeaseStop(app_stop, m, fenced)
    with m.polling("x") as fence:
        fenced.fence = fence
        assert not stop.is_set()
        clock[0] += 29.9
        assert not stop.is_set()
        clock[0] += 0.2
        assert stop.is_set()
    assert m.fence("x") is None
    clock[0] -= 1
    assert not stop.is_set()
    app_stop.set()
    assert stop.is_set()


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"ews_listener_{name}", labels)
    return 0.0 if value is None else value


def test_lease_metrics_count_owned_acquired_takeovers_released_and_lost(
    pg_store: SqlStateStore,
) -> None:
    """``LeaseMetrics`` on two replicas: first claims are no takeovers, a rebalance and a claim
    after a lost lease are; the owned gauge follows every change."""
    boxes = ["w", "x", "y", "z"]
    a = manager(pg_store, "a", boxes)
    ma, mb = Metrics(process_collectors=False), Metrics(process_collectors=False)
    a.subscribe(LeaseMetrics(ma))
    a.tick()  # alone: all four, none held before
    assert _sample(ma, "leases_owned") == 4
    assert _sample(ma, "leases_acquired_total", takeover="no") == 4
    b = manager(pg_store, "b", boxes)
    b.subscribe(LeaseMetrics(mb))
    b.tick()  # b is live now; a drains two of its four and releases them at its next tick
    a.tick()
    a.tick()
    b.tick()
    assert (_sample(ma, "leases_owned"), _sample(mb, "leases_owned")) == (2, 2)
    assert _sample(ma, "leases_released_total") == 2
    assert _sample(mb, "leases_acquired_total", takeover="yes") == 2
    assert _sample(mb, "leases_acquired_total", takeover="no") == 0
    # a's leases expire (as after a pause) and b takes them (its next tick finds them held):
    # a loses two, b has taken two more over.
    pg_store.leases.renew("a", lease=0)
    assert len(pg_store.leases.claim("b", sorted(a.owned()), limit=2, lease=30)) == 2
    b.tick()
    a.tick()
    assert _sample(ma, "lease_losses_total") == 2
    assert _sample(ma, "leases_owned") == 0
    assert _sample(mb, "leases_owned") == 4
    assert _sample(mb, "leases_acquired_total", takeover="yes") == 4
    b.leave()
    assert _sample(mb, "leases_owned") == 0
    assert _sample(mb, "leases_released_total") == 4


def test_claims_come_in_batches_and_a_full_batch_asks_for_the_next_tick(
    pg_store: SqlStateStore,
) -> None:
    """With ``claim_batch`` 3, a lone replica claims 3 mailboxes a tick and wakes itself after a
    full batch (its next tick renews first); a short last batch does not wake it."""
    boxes = [f"m{i}" for i in range(7)]
    pg_store.leases.join("a", host="test", pid=1, mailboxes=boxes)
    a = LeaseManager(pg_store.leases, boxes, replica="a", host="test", pid=1, claim_batch=3)
    a.tick()
    assert len(a.owned()) == 3
    assert a._wake.is_set()
    a._wake.clear()
    a.tick()
    assert len(a.owned()) == 6
    assert a._wake.is_set()
    a._wake.clear()
    a.tick()
    assert sorted(a.owned()) == boxes
    assert not a._wake.is_set()


def test_idle_polls_under_a_lost_lease_write_nothing_and_mail_is_still_fenced(
    pg_store: SqlStateStore,
) -> None:
    """Issue 16: an idle poll makes no commit, so it needs no fence; once the lease is lost, a
    poll that found mail is still refused at its commit (LeaseLost), leaving the ledger and the
    sync state as the new owner will find them."""
    from tests.poller.fakes import FakeSource
    from tests.poller.test_poller import make

    leases = pg_store.leases
    leases.join("a", host="h", pid=1, mailboxes=["box"])
    epoch = leases.claim("a", ["box"], limit=1, lease=30)["box"]
    fenced = FencedStore(pg_store, "box")
    fenced.fence = Fence("box", "a", epoch)
    source = FakeSource()
    source.unchanged = "new"
    source.deliver("first")
    poller, _hs = make(fenced, source, start_from="all")
    assert poller.poll().handed_over == 1
    stored = pg_store.get_sync_state("box", "inbox")
    leases.renew("a", lease=0)
    leases.claim("b", ["box"], limit=1, lease=30)  # another replica owns it now
    idle = poller.poll()
    assert idle.ok
    assert idle.handed_over == 0
    source.deliver("second")
    with pytest.raises(LeaseLost):
        poller.poll()
    assert pg_store.get_sync_state("box", "inbox") == stored
    assert len(pg_store.ledger("box")) == 1


def test_a_fenced_store_reads_the_sync_state_once_per_epoch(pg_store: SqlStateStore) -> None:
    """Under one epoch the state read or committed is known (no statement per poll); a new
    epoch (another owner may have committed in between) reads it from the database again."""
    leases = pg_store.leases
    leases.join("a", host="h", pid=1, mailboxes=["box"])
    epoch = leases.claim("a", ["box"], limit=1, lease=30)["box"]
    fenced = FencedStore(pg_store, "box")
    fenced.fence = Fence("box", "a", epoch)
    assert fenced.get_sync_state("box", "inbox") is None
    fenced.commit("box", "inbox", sync_state="s1")
    reads: list[str] = []
    real = pg_store.get_sync_state

    def counted(mailbox: str, folder: str) -> str | None:
        reads.append(folder)
        return real(mailbox, folder)

    pg_store.get_sync_state = counted  # type: ignore[method-assign]
    assert fenced.get_sync_state("box", "inbox") == "s1"
    assert reads == []
    leases.renew("a", lease=0)
    epoch_b = leases.claim("b", ["box"], limit=1, lease=30)["box"]
    pg_store.commit("box", "inbox", sync_state="s2", fence=Fence("box", "b", epoch_b))
    leases.renew("b", lease=0)
    fenced.fence = Fence("box", "a", leases.claim("a", ["box"], limit=1, lease=30)["box"])
    assert fenced.get_sync_state("box", "inbox") == "s2"
    assert reads == ["inbox"]
