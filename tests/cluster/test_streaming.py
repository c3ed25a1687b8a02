"""EWS streaming notifications across two real replicas (issue 16, item 4, with issue 15): each
mailbox's streaming subscription is held by its lease owner only and moves with the lease.

Mailboxes poll hourly (and hourly while their channel is connected): a message handed over
within the test was handed over because a stream woke its owner's poll.
"""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pytest

from ews_listener_emulators.ops import notifications as emulated
from listener.store import SqlStateStore
from tests.cluster import push
from tests.cluster.push import address
from tests.cluster.test_replicas import owners, spread, state
from tests.e2e.conftest import World, free_port, stop, wait_for, world

__all__ = ["state", "world"]

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NAMES = [f"s{i}" for i in range(4)]


def configure(world: World, pg_url: str, port: int, name: str) -> Path:
    return push.configure(world, pg_url, port, name, NAMES, {"notifications": "streaming"})


def subscribed(registry: emulated.Subscriptions) -> collections.Counter[str]:
    """The emulator's live streaming subscriptions, per mailbox."""
    return collections.Counter(
        s.mailbox.address.partition("@")[0] for s in registry.all() if s.kind == "streaming"
    )


def settled(registry: emulated.Subscriptions, state: SqlStateStore, ports: dict[str, int]) -> bool:
    """One subscription per mailbox, connected at its owner and not elsewhere, first poll done."""
    return push.settled("ews_streaming", lambda: subscribed(registry), NAMES, state, ports)


def test_streaming_subscriptions_live_with_their_leases(
    world: World, pg_url: str, state: SqlStateStore
) -> None:
    """A owns four mailboxes, B joins (2/2): one subscription per mailbox, at its owner; mail is
    pushed to each owner; A is SIGTERMed: it unsubscribes, B subscribes its two and pushes the
    next mail of all four. Every message exactly once."""
    registry = emulated.configure(world.ews, minute=60.0, keepalive=1.0)
    for name in NAMES:
        world.ews.add_mailbox(address(name))
    ports = {"A": free_port(), "B": free_port()}
    configs = {r: configure(world, pg_url, p, r) for r, p in ports.items()}
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(replica: str) -> None:
        procs[replica] = world.daemon(configs[replica], EWS_LISTENER_CLUSTER__REPLICA_ID=replica)

    try:
        start("A")
        wait_for(lambda: spread(state) == [("A", 4)], 60, "A owning the four mailboxes")
        start("B")
        wait_for(lambda: spread(state) == [("A", 2), ("B", 2)], 60, "the mailboxes shared 2/2")
        wait_for(lambda: settled(registry, state, dict(ports)), 60, "one subscription each")
        first = owners(state)
        for name in NAMES:
            world.deliver(address(name), f"round 1 {name}")
        wait_for(lambda: len(world.receipts_log()) == 4, 60, "the four pushed messages")
        by_mailbox = {str(r["subject"]).split()[-1]: r["pid"] for r in world.receipts_log()}
        assert by_mailbox == {n: procs[str(first[n])].pid for n in NAMES}
        assert "cluster.left" in stop(procs.pop("A"))
        wait_for(lambda: spread(state) == [("B", 4)], 30, "B owning all four")
        wait_for(lambda: settled(registry, state, {"B": ports["B"]}), 60, "B subscribed to all")
        for name in NAMES:
            world.deliver(address(name), f"round 2 {name}")
        wait_for(lambda: len(world.receipts_log()) == 8, 60, "the four after the takeover")
        assert {r["pid"] for r in world.receipts_log()[4:]} == {procs["B"].pid}
    except BaseException:
        print("subscribed", subscribed(registry), "owners", owners(state))
        print("receipts", [(r["subject"], r["pid"]) for r in world.receipts_log()])
        for name, proc in procs.items():
            print(name, stop(proc)[-6000:])
        procs.clear()
        raise
    finally:
        for proc in procs.values():
            stop(proc)
    keys = collections.Counter(str(r["key"]) for r in world.receipts_log())
    assert len(keys) == 8
    assert set(keys.values()) == {1}, keys
    assert len(state.ledger()) == 8
    assert subscribed(registry) == {}  # B unsubscribed at shutdown, as A did
