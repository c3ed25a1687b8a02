"""Message content end to end: what a handler receives from ``message.mime()`` and attachments.

The real daemon (``ews-listener once``), the real exchangelib, the emulator; a directory handler
writes the ``.eml`` and the attachments, so the test reads exactly what a downstream program sees.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import time
from dataclasses import asdict
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import structlog

from listener.abc import DeadLetter
from listener.config import load_settings
from listener.daemon import run_once
from listener.sources.ews import source as source_module
from listener.sources.ews._streaming import SPOOL_MAX_MEMORY
from listener.store import open_store
from tests.e2e.conftest import World

pytestmark = pytest.mark.slow

MAILBOX = "orders@contoso.com"


def _files_config(world: World, out: Path) -> Path:
    return world.config(
        {
            "orders": {
                "address": MAILBOX,
                "credential": "sales",
                "start_from": "all",
                "routes": [{"handlers": ["receipts", "files"]}],
                "on_failure": {"max_attempts": 2, "backoff": 0.1},
            }
        },
        extra=f'[handlers.files]\ntype = "directory"\npath = "{out}"\nattachments = true\n',
    )


def _with_attachments(subject: str, attachments: dict[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@example.net>"
    msg["To"] = MAILBOX
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash(subject))}@example.net>"
    msg.set_content("see attached")
    for name, data in attachments.items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def test_zero_byte_attachment_is_handed_over_with_empty_content(world: World) -> None:
    """A message with a zero-byte attachment is handed over at once: size 0, content b""."""
    world.ews.add_mailbox(MAILBOX)
    out = world.root / "out"
    config = _files_config(world, out)
    raw = _with_attachments("empty file", {"empty.txt": b"", "full.bin": b"\x00\x01data"})
    world.ews.deliver(MAILBOX, raw)

    result = world.cli("once", "--config", str(config), "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["mailboxes"]["orders"]
    assert (summary["handed_over"], summary["failed"], summary["dead_lettered"]) == (1, 0, 0)
    [event_file] = out.glob("*.json")
    event = json.loads(event_file.read_text())
    sizes = {a["name"]: a["size"] for a in event["attachments"]}
    assert sizes == {"empty.txt": 0, "full.bin": 6}
    folder = event_file.with_suffix(".attachments")
    assert (folder / "empty.txt").read_bytes() == b""
    assert (folder / "full.bin").read_bytes() == b"\x00\x01data"
    eml = email.message_from_bytes(
        event_file.with_suffix(".eml").read_bytes(), policy=email.policy.default
    )
    assert eml["Subject"] == "empty file"
    assert len(world.receipts_log()) == 1


def test_large_attachment_streams_to_disk_intact(world: World) -> None:
    """An attachment past the in-memory spool limit reaches the .eml and the folder intact."""
    world.ews.add_mailbox(MAILBOX)
    out = world.root / "out"
    config = _files_config(world, out)
    data = os.urandom(3 * SPOOL_MAX_MEMORY + 12345)  # spooled to a temporary file on the way
    raw = _with_attachments("large file", {"large.bin": data})
    world.ews.deliver(MAILBOX, raw)

    result = world.cli("once", "--config", str(config), "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    [event_file] = out.glob("*.json")
    assert (event_file.with_suffix(".attachments") / "large.bin").read_bytes() == data
    eml = email.message_from_bytes(
        event_file.with_suffix(".eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(eml, EmailMessage)
    [part] = eml.iter_attachments()
    assert part.get_content() == data


@pytest.mark.parametrize(
    ("kind", "options"),
    [("http_500", {}), ("server_busy", {"back_off_ms": 50}), ("drop", {"after_bytes": 300_000})],
    ids=["http-500", "server-busy", "cut-mid-content"],
)
def test_a_server_failure_while_streaming_content_is_transient(
    world: World, kind: str, options: dict[str, Any]
) -> None:
    """GetAttachment failing (also mid-stream) is retried, not taken for our bug; then intact."""
    world.ews.add_mailbox(MAILBOX)
    out = world.root / "out"
    config = _files_config(world, out)
    data = os.urandom(2 * SPOOL_MAX_MEMORY)
    world.ews.deliver(MAILBOX, _with_attachments("flaky server", {"drawings.bin": data}))
    world.ews.faults.add(kind, operation="GetAttachment", mailbox=MAILBOX, count=1, **options)

    first = world.cli("once", "--config", str(config), "--json")
    summary = json.loads(first.stdout)["mailboxes"]["orders"]
    assert (summary["failed"], summary["dead_lettered"]) == (1, 0), first.stdout + first.stderr
    assert "bug in ews-listener" not in first.stdout + first.stderr
    attempts = [r for r in world.ews.request_log if r.operation == "GetAttachment"]
    assert len(attempts) == 1  # the handler stopped at the failed one: retried, not re-read

    time.sleep(0.2)  # the retry back-off is 0.1 s
    second = world.cli("once", "--config", str(config), "--json")
    assert json.loads(second.stdout)["mailboxes"]["orders"]["handed_over"] == 1, second.stdout
    [event_file] = out.glob("*.json")
    assert (event_file.with_suffix(".attachments") / "drawings.bin").read_bytes() == data


# --- our own conversion failing: a bug, reported and dead-lettered at once --------------------


def _poll_in_process(
    world: World, monkeypatch: pytest.MonkeyPatch, config: Path
) -> tuple[dict[str, Any], list[DeadLetter], list[dict[str, Any]]]:
    """``run_once`` in this process (so our own code can be broken on purpose): summary, dead
    letters, log events."""
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    settings = load_settings(config, env=dict(os.environ))
    with structlog.testing.capture_logs() as logs:
        results = run_once(settings)
    store = open_store(f"sqlite:///{world.state}", create=False)
    try:
        dead = store.dead_letters()
    finally:
        store.close()
    return asdict(results["orders"]), dead, logs


def _broken(what: str) -> Any:
    def fail(*args: object, **kwargs: object) -> Any:
        raise KeyError(f"{what} broken on purpose")

    return fail


def test_a_conversion_bug_is_dead_lettered_at_once_as_permanent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our item conversion raising: permanent on the first attempt, the reason names the bug."""
    world.ews.add_mailbox(MAILBOX)
    config = _files_config(world, world.root / "out")  # max_attempts = 2: a retry would show
    world.deliver(MAILBOX, "converted badly")
    monkeypatch.setattr(source_module, "to_message", _broken("to_message"))

    summary, dead, logs = _poll_in_process(world, monkeypatch, config)

    assert (summary["dead_lettered"], summary["failed"], summary["handed_over"]) == (1, 0, 0)
    [letter] = dead
    assert (letter.permanent, letter.attempts) == (True, 1)
    assert "bug in ews-listener's conversion (converting the item)" in letter.error
    assert "KeyError: 'to_message broken on purpose'" in letter.error
    [bug] = [e for e in logs if e["event"] == "ews.conversion_bug"]
    assert isinstance(bug["exc_info"], KeyError)  # rendered as a traceback by the log pipeline
    assert world.receipts_log() == []


def test_a_bug_reading_content_is_permanent_not_transient(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our content loading raising inside a handler: dead-lettered at once, not retried."""
    world.ews.add_mailbox(MAILBOX)
    config = _files_config(world, world.root / "out")
    world.deliver(MAILBOX, "loaded badly")
    monkeypatch.setattr(source_module, "spool", _broken("spool"))

    summary, dead, logs = _poll_in_process(world, monkeypatch, config)

    assert (summary["dead_lettered"], summary["failed"]) == (1, 0)
    [letter] = dead
    assert (letter.permanent, letter.attempts) == (True, 1)
    assert "bug in ews-listener's conversion (reading the MIME content" in letter.error
    assert "KeyError" in letter.error
    assert any(e["event"] == "ews.conversion_bug" for e in logs)
