"""Graph change notifications with the real daemon (issue 15): the push path wakes the poll.

The Graph emulator validates the daemon's receiver, delivers change and lifecycle notifications
to it over HTTP and injects the faults (``graph.faults``: ``subscription_removed``,
``notifications_missed``, ``receiver_unreachable``). Mailboxes poll every hour, so a message
handed over before that hour is over was handed over because a notification asked for a poll:
the assertions count polls, requests and hand-overs, never seconds.
"""

from __future__ import annotations

import collections
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from listener.model import message_id_key
from tests.configs import push_service
from tests.e2e.conftest import World, free_port, metric, polls_ok, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("graph_schema_required")]

BOX = "orders@contoso.com"
CLIENT_STATE = "c1ient-state/+=secret"
HOUR = 3600
CHANNEL = 'channel="graph_webhook",mailbox="orders"'


def webhook_config(world: World, port: int) -> Path:
    """One Graph mailbox polled hourly with ``notifications = "webhook"``."""
    extra = "\n".join(
        push_service(
            port,
            HOUR,
            "",
            "[notifications.graph]",
            f'public_url = "http://127.0.0.1:{port}/notifications/graph"',
            'client_state = { source = "env", name = "E2E_CLIENT_STATE" }',
        )
    )
    box = {
        "address": BOX,
        "credential": "sales",
        "source": "graph",
        "interval": HOUR,
        "notifications": "webhook",
    }
    return world.config({"orders": box}, extra=extra)


def start(world: World, port: int, **env: str) -> subprocess.Popen[str]:
    """The daemon, once its subscription is connected and its first poll is done."""
    world.ews.add_mailbox(BOX)
    # Graph's retry back-off after a failed delivery (60 s first) cut to a fraction of a second.
    subs = world.graph.subscriptions
    subs.settings = replace(subs.settings, first_retry=0.2, max_retry=0.5)
    daemon = world.daemon(webhook_config(world, port), E2E_CLIENT_STATE=CLIENT_STATE, **env)
    try:
        wait_for(lambda: connected(port), 60, "the Graph subscription")
        wait_for(world.synced, 30, "the first sync")
        wait_for(lambda: polls_ok(port, "orders") >= 1, 30, "the first poll")
    except BaseException:
        print(stop(daemon)[-4000:])
        raise
    return daemon


def connected(port: int) -> bool:
    state = f'ews_listener_notification_channel_state{{{CHANNEL},state="connected"}}'
    return metric(port, state) == 1.0


def requests(port: int) -> float:
    """Poll requests the daemon received for the mailbox (scheduled or coalesced)."""
    return sum(
        metric(port, f'ews_listener_poll_requests_total{{mailbox="orders",outcome="{o}"}}')
        for o in ("scheduled", "coalesced")
    )


def keys(world: World) -> collections.Counter[str]:
    return collections.Counter(str(r["key"]) for r in world.receipts_log())


def expected(*message_ids: str) -> collections.Counter[str]:
    return collections.Counter(message_id_key(BOX, m) for m in message_ids)


def stopped(daemon: subprocess.Popen[str]) -> str:
    out = stop(daemon)
    assert daemon.returncode == 0, out[-3000:]
    return out


def test_a_notification_hands_a_message_over_before_the_interval_poll(world: World) -> None:
    """interval = 1 h: the new message is handed over by a poll a notification asked for; the
    subscription watches the folder for created messages and is deleted at shutdown."""
    port = free_port()
    daemon = start(world, port)
    try:
        [subscription] = world.graph_get("subscriptions")["value"]
        polls = polls_ok(port, "orders")
        sent = world.deliver_mail(BOX, "pushed")[1]
        wait_for(lambda: len(world.receipts_log()) == 1, 30, "the pushed message")
        events_total = f"ews_listener_notification_events_total{{{CHANNEL}}}"
        wait_for(lambda: metric(port, events_total) >= 1, 30, "the message's notification")
        events = metric(port, events_total)
        asked = requests(port)
        after = polls_ok(port, "orders")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    finally:
        stopped(daemon)
    assert keys(world) == expected(sent)
    assert events >= 1
    assert asked >= events  # every notification asked for a poll ...
    assert after > polls  # ... and a poll ran inside the hour the interval poll waits
    assert ready["mailboxes"]["orders"]["notifications"]["state"] == "connected"
    assert ready["degraded"] == {}
    assert subscription["changeType"] == "created"
    assert subscription["notificationUrl"] == (
        f"http://127.0.0.1:{port}/notifications/graph?mailbox=orders"
    )
    assert subscription["resource"].startswith(f"users/{BOX}/mailFolders('")
    assert world.graph.subscriptions.ids() == []  # deleted at shutdown


def test_a_burst_of_notifications_costs_one_poll(world: World) -> None:
    """30 messages notified in one POST: 30 poll requests, one (or two) polls, each message once."""
    port = free_port()
    daemon = start(world, port)
    try:
        polls, asked = polls_ok(port, "orders"), requests(port)
        with world.graph.store.lock:  # the delivery thread collects the 30 events in one round
            sent = [world.deliver_mail(BOX, f"burst {n}")[1] for n in range(30)]
        wait_for(lambda: len(world.receipts_log()) == 30, 60, "the burst")
        wait_for(lambda: requests(port) - asked >= 30, 30, "30 poll requests")
        burst_polls = polls_ok(port, "orders") - polls
        coalesced = metric(
            port, 'ews_listener_poll_requests_total{mailbox="orders",outcome="coalesced"}'
        )
    finally:
        stopped(daemon)
    assert keys(world) == expected(*sent)
    assert requests_made(world) >= 1
    # One poll for the burst; a second if a request landed while it ran (then it repeats), and
    # at most one more: the poll the subscription's set-up asked for may still have been due.
    assert 1 <= burst_polls <= 3, burst_polls
    assert coalesced >= 28


def requests_made(world: World) -> int:
    """Notification POSTs the emulator made that the daemon accepted."""
    return sum(
        1
        for d in world.graph.subscriptions.deliveries
        if d.kind == "notification" and d.status == 202
    )


def test_a_notification_during_a_poll_is_not_lost(world: World) -> None:
    """A message notified while the poll of the previous one is still handing it over: that
    poll is followed by one more, which hands the second over (no interval poll within the hour)."""
    port = free_port()
    daemon = start(world, port, E2E_SLOW="3")
    try:
        first = world.deliver_mail(BOX, "[slow] first")[1]
        started = Path(f"{world.receipts}.started")
        wait_for(lambda: started.is_dir() and any(started.iterdir()), 30, "the slow handler")
        asked = requests(port)
        second = world.deliver_mail(BOX, "second")[1]
        wait_for(lambda: requests(port) > asked, 30, "the second message's poll request")
        mid_poll = not world.receipts_log()  # the first hand-over still runs
        wait_for(lambda: len(world.receipts_log()) == 2, 60, "both messages")
    finally:
        stopped(daemon)
    assert mid_poll, "the request did not arrive during the poll; the test proves nothing"
    assert keys(world) == expected(first, second)


def test_a_removed_subscription_is_recreated_and_nothing_is_lost(world: World) -> None:
    """Graph removes the subscription (subscriptionRemoved, the pending notification dropped):
    the daemon polls, subscribes again, and every message is handed over exactly once."""
    port = free_port()
    daemon = start(world, port)
    try:
        [old] = world.graph.subscriptions.ids()
        world.graph.faults.add("subscription_removed", mailbox=BOX)
        sent = [world.deliver_mail(BOX, "while removed")[1]]
        wait_for(lambda: len(world.receipts_log()) == 1, 30, "the message of the removal")
        wait_for(lambda: world.graph.subscriptions.ids() not in ([], [old]), 30, "a new one")
        wait_for(lambda: connected(port), 30, "the channel connected again")
        sent.append(world.deliver_mail(BOX, "after the new subscription")[1])
        wait_for(lambda: len(world.receipts_log()) == 2, 30, "the message after")
        reconnects = metric(port, f"ews_listener_notification_reconnects_total{{{CHANNEL}}}")
    finally:
        out = stopped(daemon)
    assert keys(world) == expected(*sent)
    assert reconnects == 1
    assert sum('"notifications.degraded"' in line for line in out.splitlines()) == 1, out[-3000:]


def test_missed_notifications_cost_a_poll_not_a_message(world: World) -> None:
    """Graph drops the notification and sends ``missed``: the daemon polls and finds the mail."""
    port = free_port()
    daemon = start(world, port)
    try:
        world.graph.faults.add("notifications_missed", mailbox=BOX)
        sent = world.deliver_mail(BOX, "missed")[1]
        wait_for(lambda: len(world.receipts_log()) == 1, 30, "the missed message")
    finally:
        stopped(daemon)
    assert keys(world) == expected(sent)
    lifecycle = [d for d in world.graph.subscriptions.deliveries if d.kind == "lifecycle"]
    assert [d.body["value"][0]["lifecycleEvent"] for d in lifecycle] == ["missed"]
    assert all(d.status == 202 for d in lifecycle)


def test_a_receiver_down_for_a_while_loses_nothing(world: World) -> None:
    """Deliveries fail (the receiver unreachable) three times, then Graph's retry gets through:
    the messages are handed over once each."""
    port = free_port()
    daemon = start(world, port)

    def attempts() -> list[int | None]:
        deliveries = list(world.graph.subscriptions.deliveries)
        return [d.status for d in deliveries if d.kind == "notification"]

    try:
        before = len(attempts())
        world.graph.faults.add("receiver_unreachable", mailbox=BOX, count=3)
        sent = [world.deliver_mail(BOX, f"while down {n}")[1] for n in range(3)]
        # Three failed POSTs, then one that got through (Graph's retry of the same batch).
        wait_for(
            lambda: (
                attempts()[before : before + 3] == [None] * 3 and 202 in attempts()[before + 3 :]
            ),
            60,
            "three failed deliveries and the retry",
        )
        wait_for(lambda: len(world.receipts_log()) == 3, 60, "the messages sent while down")
    finally:
        stopped(daemon)
    assert keys(world) == expected(*sent)


def test_forged_notifications_and_the_validation_handshake(world: World) -> None:
    """A wrong clientState gets 403 and triggers nothing (counted); the validation handshake
    echoes the URL-decoded token as text/plain."""
    port = free_port()
    daemon = start(world, port)
    url = f"http://127.0.0.1:{port}/notifications/graph"
    try:
        [subscription] = world.graph.subscriptions.ids()
        asked = requests(port)
        forged = {
            "value": [
                {
                    "subscriptionId": subscription,
                    "clientState": "guessed",
                    "changeType": "created",
                    "resource": "Users/x/Messages/y",
                    "tenantId": "t",
                }
            ]
        }
        refused = httpx.post(url, content=json.dumps(forged), timeout=5)
        asked_after = requests(port)
        rejected = metric(
            port,
            'ews_listener_notifications_rejected_total{channel="graph_webhook",reason="client_state"}',
        )
        token = "Validation: Testing client application reachability for subscription Request-Id: 1"
        handshake = httpx.post(f"{url}?validationToken={quote(token, safe='')}", timeout=5)
        unreadable = httpx.post(url, content=b"{not json", timeout=5)
    finally:
        out = stopped(daemon)
    assert refused.status_code == 403
    assert asked_after == asked  # nothing asked for a poll
    assert rejected == 1
    assert handshake.status_code == 200
    assert handshake.headers["content-type"].startswith("text/plain")
    assert handshake.text == token
    assert unreadable.status_code == 400
    assert CLIENT_STATE not in out
