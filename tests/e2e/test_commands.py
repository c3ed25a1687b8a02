"""`mailbox test`, `credentials validate --mailbox`, `schema message`, `once --json`, for real."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import APPS, World

pytestmark = pytest.mark.slow


def _config(world: World) -> str:
    world.ews.add_mailbox("orders@contoso.com")
    world.ews.add_mailbox("ceo@contoso.com")
    return str(
        world.config(
            {
                "orders": {"address": "orders@contoso.com", "credential": "sales"},
                "ceo": {"address": "ceo@contoso.com", "credential": "support"},
            }
        )
    )


def test_mailbox_test_reports_each_step(world: World) -> None:
    """`mailbox test` gets a token, opens the folder with impersonation and counts items."""
    config = _config(world)
    world.deliver("orders@contoso.com", "one")
    result = world.cli("mailbox", "test", "orders@contoso.com", "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "token   ok" in result.stdout
    assert "1 item(s), 1 unread" in result.stdout


def test_mailbox_test_names_denied_impersonation(world: World) -> None:
    """An app scoped away from a mailbox (RBAC for Applications) fails with Exchange's reason."""
    config = _config(world)
    world.ews.allow(APPS["support"][0], ["orders@contoso.com"])
    result = world.cli("mailbox", "test", "ceo", "--config", config)
    assert result.returncode == 1
    assert "ErrorImpersonateUserDenied" in result.stdout


def test_credentials_validate_can_open_a_mailbox(world: World) -> None:
    """`credentials validate NAME --mailbox ADDR` shows the token, then opens the mailbox."""
    config = _config(world)
    result = world.cli(
        "credentials", "validate", "sales", "--mailbox", "orders@contoso.com", "--config", config
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "full_access_as_app" in result.stdout
    assert "folder  ok" in result.stdout


def test_once_json_summary_has_per_mailbox_errors(world: World) -> None:
    """`once --json`: one mailbox fails (denied), the other succeeds; exit 75 and both reported."""
    config = _config(world)
    world.ews.allow(APPS["support"][0], ["orders@contoso.com"])
    result = world.cli("once", "--json", "--config", config)
    assert result.returncode == 75, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["mailboxes"]["orders"]["ok"] is True
    assert "ErrorImpersonateUserDenied" in report["mailboxes"]["ceo"]["error"]


def test_schema_message_prints_the_event_schema(world: World) -> None:
    """`schema message` prints a JSON Schema naming the event's fields."""
    result = world.cli("schema", "message")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert {"idempotency_key", "attachments", "from"} <= set(schema["properties"])


def test_dead_letters_show_and_purge(world: World) -> None:
    """A refused message can be shown, then purged; the mail itself stays in the mailbox."""
    config = _config(world)
    assert world.cli("once", "--config", config).returncode in (0, 75)
    world.deliver("orders@contoso.com", "[permanent] refused")
    world.cli("once", "--config", config)
    [letter] = json.loads(world.cli("dead-letters", "list", "--json", "--config", config).stdout)
    shown = world.cli("dead-letters", "show", str(letter["id"]), "--config", config)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["subject"] == "[permanent] refused"
    purged = world.cli("dead-letters", "purge", "--all", "--config", config)
    assert "purged 1" in purged.stdout
    assert json.loads(world.cli("dead-letters", "list", "--json", "--config", config).stdout) == []
    assert [i.subject for i in world.ews.items("orders@contoso.com", "inbox")] == [
        "[permanent] refused"
    ]
