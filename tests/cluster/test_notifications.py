"""Graph webhooks across two real replicas (issue 16, item 4): each mailbox's subscription is
held by its lease owner and moves with the lease; a notification Graph posts to the replica that
does not own the mailbox reaches the owner through PostgreSQL NOTIFY.

Both replicas name replica B's port as ``public_url``, so every notification arrives at B: the
mailboxes A owns are handed over by A only because B forwarded their notifications. Mailboxes
poll hourly: a message handed over within the test was handed over because of a notification.
"""

from __future__ import annotations

import collections
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from listener.store import SqlStateStore
from tests.cluster import push
from tests.cluster.push import address
from tests.cluster.test_replicas import owners, spread, state
from tests.e2e.conftest import (
    World,
    free_port,
    graph_schema_required,
    metric,
    polls_ok,
    stop,
    wait_for,
    world,
)

__all__ = ["graph_schema_required", "state", "world"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.usefixtures("graph_schema_required"),
]

NAMES = [f"m{i}" for i in range(4)]


def configure(world: World, pg_url: str, port: int, public_port: int, name: str) -> Path:
    graph = [
        "",
        "[notifications.graph]",
        f'public_url = "http://127.0.0.1:{public_port}/notifications/graph"',
        'client_state = { source = "env", name = "E2E_CLIENT_STATE" }',
    ]
    mailbox = {"source": "graph", "notifications": "webhook"}
    return push.configure(world, pg_url, port, name, NAMES, mailbox, graph)


def subscriptions(world: World) -> collections.Counter[str]:
    """The emulator's subscriptions: how many of each mailbox (by its notificationUrl)."""
    found: collections.Counter[str] = collections.Counter()
    for sub in list(world.graph.subscriptions._subscriptions.values()):
        found[sub.notification_url.rpartition("?mailbox=")[2]] += 1
    return found


def connected(port: int, name: str) -> bool:
    return push.connected("graph_webhook", port, name)


def events(port: int, name: str) -> float:
    labels = f'channel="graph_webhook",mailbox="{name}"'
    return metric(port, f"ews_listener_notification_events_total{{{labels}}}")


def settled(world: World, state: SqlStateStore, ports: dict[str, int]) -> bool:
    """One subscription per mailbox, connected at its owner and not elsewhere, first poll done."""
    return push.settled("graph_webhook", lambda: subscriptions(world), NAMES, state, ports)


def test_subscriptions_live_with_their_leases_and_notifications_reach_the_owner(
    world: World, pg_url: str, state: SqlStateStore
) -> None:
    subs = world.graph.subscriptions
    subs.settings = replace(subs.settings, first_retry=0.2, max_retry=0.5)
    for name in NAMES:
        world.ews.add_mailbox(address(name))
    ports = {"A": free_port(), "B": free_port()}
    configs = {r: configure(world, pg_url, p, ports["B"], r) for r, p in ports.items()}
    procs: dict[str, subprocess.Popen[str]] = {}
    outputs: dict[str, str] = {}

    def start(replica: str) -> None:
        procs[replica] = world.daemon(
            configs[replica],
            E2E_CLIENT_STATE="c1ient-state/+=secret",
            EWS_LISTENER_CLUSTER__REPLICA_ID=replica,
        )

    try:
        start("B")  # the receiver first: A's subscriptions are validated at B's port
        wait_for(lambda: spread(state) == [("B", 4)], 60, "B owning the four mailboxes")
        start("A")
        wait_for(lambda: spread(state) == [("A", 2), ("B", 2)], 60, "the mailboxes shared 2/2")
        live = dict(ports)
        wait_for(lambda: settled(world, state, live), 60, "one subscription each, at its owner")
        # (a) exactly one subscription per mailbox, held (connected) by its owner only
        assert subscriptions(world) == dict.fromkeys(NAMES, 1)
        first = owners(state)
        of_a = sorted(n for n in NAMES if first[n] == "A")
        assert len(of_a) == 2
        # B owned all four first: those it gave to A are off there, not degraded
        ready = httpx.get(f"http://127.0.0.1:{ports['B']}/readyz", timeout=5).json()
        assert [ready["mailboxes"][n]["notifications"]["state"] for n in of_a] == ["off", "off"]
        assert [ready["mailboxes"][n]["state"] for n in of_a] == ["disabled", "disabled"]
        assert ready["degraded"] == {}
        # (b) every notification goes to B; A's mailboxes are handed over by A
        round1 = {name: world.deliver_mail(address(name), f"round 1 {name}")[1] for name in NAMES}
        wait_for(lambda: len(world.receipts_log()) == 4, 60, "the four pushed messages")
        pids = {name: procs[str(first[name])].pid for name in NAMES}
        handed = {str(r["key"]): r["pid"] for r in world.receipts_log()}
        assert sorted(handed.values()) == sorted(pids.values())
        assert all(events(ports["B"], name) >= 1 for name in NAMES)  # all arrived at B
        assert all(events(ports["A"], name) == 0 for name in NAMES)
        # (c) SIGTERM A: B takes its leases and its subscriptions over
        outputs["A"] = stop(procs.pop("A"))
        assert "cluster.left" in outputs["A"]
        wait_for(lambda: spread(state) == [("B", 4)], 30, "B owning all four again")
        wait_for(
            lambda: settled(world, state, {"B": ports["B"]}), 60, "B holding four subscriptions"
        )
        round2 = {name: world.deliver_mail(address(name), f"round 2 {name}")[1] for name in NAMES}
        wait_for(lambda: len(world.receipts_log()) == 8, 60, "the four messages after takeover")
        late = world.receipts_log()[4:]
        assert {r["pid"] for r in late} == {procs["B"].pid}
    except BaseException:
        print("subscriptions", subscriptions(world), "owners", owners(state))
        for replica, port in ports.items():
            print(replica, {n: (connected(port, n), polls_ok(port, n)) for n in NAMES})
        for name, proc in procs.items():
            print(name, stop(proc)[-6000:])
        procs.clear()
        raise
    finally:
        for name, proc in procs.items():
            outputs[name] = stop(proc)
    keys = collections.Counter(str(r["key"]) for r in world.receipts_log())
    assert len(keys) == 8  # exactly once overall
    assert set(keys.values()) == {1}, keys
    assert len(state.ledger()) == 8
    assert len(round1) == len(round2) == 4
    assert subs.ids() == []  # every subscription deleted at shutdown


def test_a_lifecycle_notification_at_the_other_replica_reaches_the_owner(
    world: World, pg_url: str, state: SqlStateStore
) -> None:
    """Graph removes a subscription A holds and posts ``subscriptionRemoved`` to B (every
    notification goes to B's port): B passes it on over NOTIFY and A subscribes again at once,
    rather than at its next renewal, hours away; the next message is pushed to A."""
    subs = world.graph.subscriptions
    subs.settings = replace(subs.settings, first_retry=0.2, max_retry=0.5)
    for name in NAMES:
        world.ews.add_mailbox(address(name))
    ports = {"A": free_port(), "B": free_port()}
    configs = {r: configure(world, pg_url, p, ports["B"], r) for r, p in ports.items()}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for replica in ("B", "A"):
            procs[replica] = world.daemon(
                configs[replica],
                E2E_CLIENT_STATE="c1ient-state/+=secret",
                EWS_LISTENER_CLUSTER__REPLICA_ID=replica,
            )
            if replica == "B":
                wait_for(lambda: spread(state) == [("B", 4)], 60, "B owning the four mailboxes")
        wait_for(lambda: spread(state) == [("A", 2), ("B", 2)], 60, "the mailboxes shared 2/2")
        wait_for(lambda: settled(world, state, dict(ports)), 60, "one subscription each")
        name = sorted(n for n, owner in owners(state).items() if owner == "A")[0]

        def held() -> list[str]:
            return [
                sid
                for sid, sub in list(subs._subscriptions.items())
                if sub.notification_url.endswith(f"?mailbox={name}")
            ]

        (old,) = held()
        subs.remove(old)  # subscriptionRemoved to the lifecycle URL: B's port
        wait_for(lambda: len(held()) == 1 and held() != [old], 30, "A subscribing again")
        wait_for(lambda: connected(ports["A"], name), 30, "A connected again")
        world.deliver_mail(address(name), "after the removal")
        wait_for(lambda: len(world.receipts_log()) == 1, 60, "the pushed message")
        assert world.receipts_log()[0]["pid"] == procs["A"].pid
    except BaseException:
        print("subscriptions", subscriptions(world), "owners", owners(state))
        for replica, proc in procs.items():
            print(replica, stop(proc)[-6000:])
        procs.clear()
        raise
    finally:
        for proc in procs.values():
            stop(proc)
