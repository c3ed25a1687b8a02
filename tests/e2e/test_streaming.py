"""EWS streaming notifications end to end (issue 15): the real daemon, an EWS mailbox with
``notifications = "streaming"`` and an hour's interval, so only the push path can hand mail over
within a test; each fault still ends with every message handed over exactly once."""

from __future__ import annotations

from collections import Counter

import pytest

from ews_listener_emulators.ops import notifications as emulated
from tests.e2e.conftest import World, stop, wait_for

MAILBOX = "orders@contoso.com"
HOUR = 3600


def _config(world: World, *, minutes: int = 1) -> object:
    world.ews.add_mailbox(MAILBOX)
    return world.config(
        {
            "orders": {
                "address": MAILBOX,
                "credential": "sales",
                "interval": HOUR,
                "notifications": "streaming",
            }
        },
        extra=f"\n[notifications.ews]\nconnection_minutes = {minutes}\n",
    )


def _subjects(world: World) -> Counter[str]:
    return Counter(str(r["subject"]) for r in world.receipts_log())


def _streams(world: World) -> int:
    return sum(1 for r in world.ews.request_log if r.operation == "GetStreamingEvents")


def test_a_new_message_is_handed_over_by_the_stream(world: World) -> None:
    """With an hour between polls, a message delivered after the first sync is handed over: the
    stream woke the poll (one sync at start, one per wake; no interval poll could have run)."""
    registry = emulated.configure(world.ews, minute=60.0, keepalive=1.0)
    daemon = world.daemon(_config(world))  # type: ignore[arg-type]
    try:
        wait_for(world.synced, 30, "the first sync")
        wait_for(lambda: registry.streams(MAILBOX) == 1, 30, "the stream open")
        syncs = sum(1 for r in world.ews.request_log if r.operation == "SyncFolderItems")
        world.deliver(MAILBOX, "pushed")
        wait_for(lambda: _subjects(world) == Counter({"pushed": 1}), 30, "the hand-over")
    finally:
        out = stop(daemon)
    later = [r for r in world.ews.request_log if r.operation == "SyncFolderItems"]
    assert len(later) > syncs, out[-2000:]
    assert _subjects(world) == Counter({"pushed": 1})


@pytest.mark.parametrize("fault", ["drop", "remove", "miss", "rollover"])
def test_every_message_once_through_a_streaming_fault(world: World, fault: str) -> None:
    """A burst of 8 with a stream dropped in the middle, the subscription removed, missed
    notifications, or 30-minute rollovers (a minute of 0.3 s): each message handed over once."""
    minute = 0.3 if fault in ("rollover", "remove") else 60.0
    registry = emulated.configure(world.ews, minute=minute, keepalive=0.1)
    daemon = world.daemon(_config(world))  # type: ignore[arg-type]
    try:
        wait_for(world.synced, 30, "the first sync")
        wait_for(lambda: registry.streams(MAILBOX) == 1, 30, "the stream open")
        streams = _streams(world)
        for n in range(8):
            world.deliver(MAILBOX, f"burst {n}")
            if n == 3:
                affected = {
                    "drop": registry.drop_streams,
                    "remove": registry.remove_subscriptions,
                    "miss": registry.miss_events,
                    "rollover": lambda: 1,
                }[fault]()
                assert affected == 1
        expected = Counter({f"burst {n}": 1 for n in range(8)})
        wait_for(lambda: _subjects(world) == expected, 60, "all eight handed over")
        if fault == "rollover":
            wait_for(lambda: _streams(world) >= streams + 3, 30, "three rollovers")
        # A last message after the fault (and its recovery) still comes by the stream.
        world.deliver(MAILBOX, "after")
        expected["after"] = 1
        wait_for(lambda: _subjects(world) == expected, 60, "the message after the fault")
    finally:
        out = stop(daemon)
    assert _subjects(world) == expected, out[-3000:]
    if fault != "rollover":
        subscribes = [r for r in world.ews.request_log if r.operation == "Subscribe"]
        assert len(subscribes) >= 2, "the fault made the channel subscribe again"
