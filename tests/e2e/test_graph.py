"""Microsoft Graph mailboxes with the real daemon: the promises the EWS tests make, kept through
Graph (issue 13, "End-to-end tests").

The Graph emulator shares the EWS emulator's mail store, so what the daemon did through Graph is
checked through the other protocol too (the store as EWS serves it), and through Graph itself
(``World.graph_get``). Keys are computed here from the Message-IDs the test delivered
(``listener.model.message_id_key``), never read back from the daemon.
"""

from __future__ import annotations

import collections
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from listener.model import message_id_key
from tests.e2e.conftest import APPS, World, free_port, settle, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("graph_schema_required")]

BOX = "orders@contoso.com"


def ledger_keys(world: World) -> list[str]:
    with sqlite3.connect(world.state) as db:
        return [str(k) for (k,) in db.execute("SELECT idempotency_key FROM ledger")]


def graph_box(**options: object) -> dict[str, object]:
    return {"address": BOX, "credential": "sales", "source": "graph", **options}


def patches(world: World) -> int:
    """PATCH requests the Graph emulator answered (``$batch`` parts counted one by one)."""
    return sum(1 for r in world.graph.request_log if r.method == "PATCH" and r.status == 200)


@pytest.mark.parametrize("after_success", ["mark_read", "categorize:Handled"])
def test_an_initial_round_longer_than_a_page_ends(world: World, after_success: str) -> None:
    """``start_from = "all"`` on 450 messages (three delta pages): the poll ends, each message is
    handed over and tidied once, although Graph's delta reports our own PATCHes as changes."""
    world.ews.add_mailbox(BOX)
    sent = [world.deliver_mail(BOX, f"order {n}")[1] for n in range(450)]
    config = world.config({"orders": graph_box(start_from="all", after_success=after_success)})
    result = world.cli("once", "--json", "--config", str(config), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(str(r["key"]) for r in world.receipts_log()) == sorted(
        message_id_key(BOX, m) for m in sent
    )
    assert patches(world) == 450  # not again for the messages the next page brought back
    items = world.ews.items(BOX, "inbox")
    if after_success == "mark_read":
        assert all(item.is_read for item in items)
    else:
        assert all(item.categories == ("Handled",) for item in items)


def test_mixed_daemon_many_mailboxes_two_credentials_each_message_once(world: World) -> None:
    """1,000 messages across 10 mailboxes on 2 credentials, five read through EWS and five
    through Graph, in one daemon: each handed over exactly once, with the key EWS would give."""
    boxes: dict[str, dict[str, object]] = {}
    for i in range(10):
        address = f"user{i}@contoso.com"
        world.ews.add_mailbox(address)
        boxes[f"box{i}"] = {
            "address": address,
            "credential": "sales" if i % 2 else "support",
            "source": "graph" if i >= 5 else "ews",
            "start_from": "all",
            "batch_size": 50,
        }
    expected: dict[str, str] = {}  # key → address
    for n in range(1000):
        address = f"user{n % 10}@contoso.com"
        _, message_id = world.deliver_mail(address, f"order {n}")
        expected[message_id_key(address, message_id)] = address
    port = free_port()
    config = world.config(boxes, extra=f"http_port = {port}")
    started = time.monotonic()
    daemon = world.daemon(config)
    try:
        wait_for(lambda: len(world.receipts_log()) >= 1000, 180, "1,000 hand-overs")
        took = time.monotonic() - started
        settle(port, boxes)
    finally:
        out = stop(daemon)
    assert daemon.returncode == 0, out[-3000:]
    print(f"1,000 messages, 10 mailboxes (5 EWS, 5 Graph): {took:.1f} s to hand over")
    receipts = world.receipts_log()
    counts = collections.Counter(str(r["key"]) for r in receipts)
    assert [k for k, c in counts.items() if c > 1] == []
    assert {str(r["key"]): r["mailbox"] for r in receipts} == expected
    assert sorted(ledger_keys(world)) == sorted(expected)
    # Both protocols did their share, for both apps.
    graph_mailboxes = {r.mailbox for r in world.graph.request_log if r.mailbox}
    assert graph_mailboxes == {f"user{i}@contoso.com" for i in range(5, 10)}
    assert {r.client_id for r in world.graph.request_log if r.client_id} == {
        client_id for client_id, _ in APPS.values()
    }
    assert all(item.is_read for i in range(10) for item in world.ews.items(f"user{i}@contoso.com"))


def graph_folder(world: World, path: str) -> list[dict[str, Any]]:
    """The messages of the folder at ``path`` below the root, as Graph lists them."""
    folders = world.graph_get(f"users/{BOX}/mailFolders?$top=100")["value"]
    parts = path.split("/")
    folder = next(f for f in folders if f["displayName"] == parts[0])
    for name in parts[1:]:
        children = world.graph_get(f"users/{BOX}/mailFolders/{folder['id']}/childFolders")
        folder = next(f for f in children["value"] if f["displayName"] == name)
    messages = world.graph_get(f"users/{BOX}/mailFolders/{folder['id']}/messages?$top=100")
    return list(messages["value"])


def inbox(world: World) -> list[dict[str, Any]]:
    return list(world.graph_get(f"users/{BOX}/mailFolders/inbox/messages?$top=100")["value"])


def deleted(world: World) -> list[dict[str, Any]]:
    return list(world.graph_get(f"users/{BOX}/mailFolders/deleteditems/messages?$top=100")["value"])


Check = Callable[[World], bool]
AFTER_SUCCESS: dict[str, tuple[Check, Check]] = {
    # action: (seen through EWS, seen through Graph)
    "mark_read": (
        lambda w: [i.is_read for i in w.ews.items(BOX, "inbox")] == [True],
        lambda w: [m["isRead"] for m in inbox(w)] == [True],
    ),
    "move:Processed/2026": (
        lambda w: len(w.ews.items(BOX, "Processed/2026")) == 1 and not w.ews.items(BOX, "inbox"),
        lambda w: len(graph_folder(w, "Processed/2026")) == 1 and not inbox(w),
    ),
    "categorize:Handled": (
        lambda w: [i.categories for i in w.ews.items(BOX, "inbox")] == [("Handled",)],
        lambda w: [m["categories"] for m in inbox(w)] == [["Handled"]],
    ),
    "delete": (
        lambda w: len(w.ews.items(BOX, "deleteditems")) == 1 and not w.ews.items(BOX, "inbox"),
        lambda w: len(deleted(w)) == 1 and not inbox(w),
    ),
}


@pytest.mark.parametrize("action", list(AFTER_SUCCESS))
def test_after_success_on_a_graph_mailbox_seen_through_both_protocols(
    world: World, action: str
) -> None:
    """Every after_success action done through Graph shows in the mailbox through EWS and Graph."""
    world.ews.add_mailbox(BOX)
    config = world.config({"orders": graph_box(after_success=action)})
    assert world.cli("once", "--config", str(config)).returncode == 0
    world.deliver(BOX, "new order")
    result = world.cli("once", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["subject"] for r in world.receipts_log()] == ["new order"]
    through_ews, through_graph = AFTER_SUCCESS[action]
    assert through_ews(world), [(i.folder, i.is_read, i.categories) for i in world.ews.items(BOX)]
    assert through_graph(world)


def test_transient_then_permanent_dead_letter_moved_and_replayed(world: World) -> None:
    """Through Graph: a flaky handler retried into one receipt; a poisoned message dead-lettered,
    moved to Failed, then replayed with the same key."""
    world.ews.add_mailbox(BOX)
    config = world.config(
        {
            "orders": graph_box(
                on_failure={"max_attempts": 3, "backoff": 0.1, "dead_letter": "move:Failed"}
            )
        }
    )
    assert world.cli("once", "--config", str(config)).returncode == 0
    _, flaky = world.deliver_mail(BOX, "[flaky] order")
    _, poisoned = world.deliver_mail(BOX, "[permanent] order")
    first = world.cli("once", "--config", str(config))
    assert first.returncode == 0, first.stdout + first.stderr
    assert world.receipts_log() == []
    wait_for(
        lambda: (
            world.cli("once", "--config", str(config)).returncode == 0
            and len(world.receipts_log()) == 1
        ),
        60,
        "the retry of the flaky message",
    )
    assert [r["key"] for r in world.receipts_log()] == [message_id_key(BOX, flaky)]
    assert [i.subject for i in world.ews.items(BOX, "Failed")] == ["[permanent] order"]
    assert [m["subject"] for m in graph_folder(world, "Failed")] == ["[permanent] order"]
    letters = json.loads(
        world.cli("dead-letters", "list", "--config", str(config), "--json").stdout
    )
    assert [(d["idempotency_key"], "refusing" in d["error"]) for d in letters] == [
        (message_id_key(BOX, poisoned), True)
    ]
    heal = world.root / "heal"
    heal.touch()
    replay = world.cli(
        "dead-letters", "replay", "--all", "--config", str(config), E2E_HEAL=str(heal)
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert sorted(str(r["key"]) for r in world.receipts_log()) == sorted(
        [message_id_key(BOX, flaky), message_id_key(BOX, poisoned)]
    )
    listed = world.cli("dead-letters", "list", "--config", str(config), "--json")
    assert json.loads(listed.stdout) == []
    assert sorted(set(ledger_keys(world))) == sorted(
        [message_id_key(BOX, flaky), message_id_key(BOX, poisoned)]
    )


def test_mail_moved_in_and_read_before_the_listener_saw_it(world: World) -> None:
    """Through Graph: mail a person moves into the folder appears once; mail a person read
    before the listener saw it is still handed over, once."""
    world.ews.add_mailbox(BOX)
    world.ews.create_folder(BOX, "Inbox/Later")
    config = world.config({"orders": graph_box()})
    assert world.cli("once", "--config", str(config)).returncode == 0
    elsewhere, moved_mid = world.deliver_mail(BOX, "moved in", folder="Inbox/Later")
    world.ews.move_item(BOX, elsewhere, "inbox")
    read_first, read_mid = world.deliver_mail(BOX, "already read")
    world.ews.set_read(BOX, read_first)
    assert world.cli("once", "--config", str(config)).returncode == 0
    assert world.cli("once", "--config", str(config)).returncode == 0
    assert sorted(str(r["key"]) for r in world.receipts_log()) == sorted(
        [message_id_key(BOX, moved_mid), message_id_key(BOX, read_mid)]
    )
