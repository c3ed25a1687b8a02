"""Moving a mailbox off EWS onto Microsoft Graph with the real daemon (issue 13, point 8).

The same mailbox, folder and state database; only ``source`` (and with it the endpoint and the
credential's scopes) changes between two runs of the daemon. The keys a handler sees do not
depend on the protocol (``listener.model.message_id_key``), so the ledger written under EWS skips,
under Graph, everything EWS handed over; the expected keys are computed here from the Message-IDs
the test delivered, not read back from the daemon.
"""

from __future__ import annotations

import collections
import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from listener.model import message_id_key
from tests.e2e.conftest import World, free_port, settle, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("graph_schema_required")]

BOX = "orders@contoso.com"


def rows(world: World, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(world.state) as db:
        return list(db.execute(query))


def test_ews_to_graph_hands_over_exactly_the_mail_after_the_switch(world: World) -> None:
    """500 through EWS, 100 more delivered, the switch to Graph, a restart: exactly those 100
    (keys as EWS would give them), the retry pending under EWS once, the EWS dead letter replayed
    through Graph with its key; none of the 500 again, nothing older than the first sync."""
    world.ews.add_mailbox(BOX)
    orders = {
        "address": BOX,
        "credential": "sales",
        "batch_size": 100,
        "on_failure": {"max_attempts": 3, "backoff": 0.1, "dead_letter": "move:Failed"},
    }
    ews_config = world.config({"orders": orders}, name="ews.toml")
    # Mail of yesterday, there before the mailbox was first watched (start_from = "new"): neither
    # protocol hands it over, also not the resync from the start that the switch causes.
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for n in range(3):
        world.deliver_mail(BOX, f"before watching {n}", received_at=yesterday)
    first = world.cli("once", "--config", str(ews_config))
    assert first.returncode == 0, first.stdout + first.stderr

    under_ews = [world.deliver_mail(BOX, f"ews {n}")[1] for n in range(500)]
    pending_item, pending_mid = world.deliver_mail(BOX, "[flaky] pending at the switch")
    _, dead_mid = world.deliver_mail(BOX, "[permanent] dead at the switch")
    ews_run = world.cli("once", "--json", "--config", str(ews_config), timeout=300)
    assert ews_run.returncode == 0, ews_run.stdout + ews_run.stderr
    assert {r["key"] for r in world.receipts_log()} == {message_id_key(BOX, m) for m in under_ews}
    assert len(world.receipts_log()) == 500
    assert rows(world, "SELECT source, internet_message_id FROM pending") == [("ews", pending_mid)]
    assert rows(world, "SELECT source, moved_to FROM dead_letters") == [("ews", "Failed")]
    assert len(world.ews.items(BOX, "Failed")) == 1

    after_switch = [world.deliver_mail(BOX, f"graph {n}")[1] for n in range(100)]
    port = free_port()
    graph_config = world.config(
        {"orders": {**orders, "source": "graph"}}, name="graph.toml", extra=f"http_port = {port}"
    )
    daemon = world.daemon(graph_config)
    try:
        wait_for(lambda: len(world.receipts_log()) >= 601, 120, "the mail after the switch")
        settle(port, ["orders"])
    finally:
        out = stop(daemon)
    assert daemon.returncode == 0, out[-3000:]
    assert "mailbox.source_switched" in out

    receipts = world.receipts_log()
    counts = collections.Counter(str(r["key"]) for r in receipts)
    assert [k for k, c in counts.items() if c > 1] == []  # nothing handed over twice
    through_graph = {str(r["key"]) for r in receipts[500:]}
    expected = {message_id_key(BOX, m) for m in [*after_switch, pending_mid]}
    assert through_graph == expected
    retried = next(r for r in receipts if r["message_id"] == pending_mid)
    # Found again by its Message-ID: handed over under the id Graph gives it, not EWS's.
    assert retried["item_id"] != pending_item
    assert retried["key"] == message_id_key(BOX, pending_mid)
    assert not any(str(r["subject"]).startswith("before watching") for r in receipts)
    assert rows(world, "SELECT count(*) FROM pending") == [(0,)]
    assert all(item.is_read for item in world.ews.items(BOX, "inbox")[3:])  # Graph marked them

    # The dead letter EWS recorded (and moved to Failed) replays through Graph, found there by
    # its Message-ID, with the key EWS gave it.
    listed = json.loads(
        world.cli("dead-letters", "list", "--config", str(graph_config), "--json").stdout
    )
    assert [letter["idempotency_key"] for letter in listed] == [message_id_key(BOX, dead_mid)]
    heal = world.root / "heal"
    heal.touch()
    replay = world.cli(
        "dead-letters", "replay", "--all", "--config", str(graph_config), E2E_HEAL=str(heal)
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    replayed = [r for r in world.receipts_log() if r["message_id"] == dead_mid]
    assert [r["key"] for r in replayed] == [message_id_key(BOX, dead_mid)]
    assert rows(world, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert len(world.receipts_log()) == 602

    # And a last run under Graph finds nothing more to do.
    again = world.cli("once", "--json", "--config", str(graph_config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["mailboxes"]["orders"]["handed_over"] == 0
    assert len(world.receipts_log()) == 602
