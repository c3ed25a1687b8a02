"""A handler for end-to-end tests: records every hand-over in a receipt log the tests read.

The daemon imports it as ``tests.e2e.receipts:record`` (a ``python`` handler). Behaviour is steered
by markers in the subject, so a test needs no side channel into the daemon process:

- ``[flaky]``: fails transiently on the first attempt for that message, succeeds afterwards.
- ``[permanent]``: raises ``PermanentError`` unless the file ``$E2E_HEAL`` exists.
- ``[slow]``: sleeps ``$E2E_SLOW`` seconds (default 2) before returning; the file
  ``<receipts>.started/<key>`` says the handler is running.

Each receipt is one JSON line appended with ``O_APPEND`` and fsync'ed, so a receipt exists exactly
when the handler returned (or was about to) — what a real downstream system would have seen.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from listener.errors import PermanentError
from listener.model import Message


def _append(path: str, record: dict[str, object]) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def record(message: Message) -> None:
    receipts = os.environ["E2E_RECEIPTS"]
    subject = message.subject
    if "[permanent]" in subject and not Path(os.environ.get("E2E_HEAL", "/nonexistent")).exists():
        raise PermanentError(f"refusing {subject!r} on purpose")
    if "[flaky]" in subject:
        marker = Path(receipts + ".attempts") / message.idempotency_key
        marker.parent.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"first attempt of {subject!r} fails on purpose")
    if "[slow]" in subject:
        started = Path(receipts + ".started")
        started.mkdir(exist_ok=True)
        (started / message.idempotency_key).touch()
        time.sleep(float(os.environ.get("E2E_SLOW", "2")))
    _append(
        receipts,
        {
            "key": message.idempotency_key,
            "mailbox": message.mailbox,
            "item_id": message.item_id,
            "subject": subject,
            "message_id": message.internet_message_id,
            "pid": os.getpid(),
            "at": time.time(),
        },
    )


_START = '{"at": '  # json.dumps(sort_keys=True): every record begins with its "at" key


def read(path: Path) -> list[dict[str, object]]:
    """The receipts written so far.

    A record cut short is no receipt, and is skipped: a SIGKILL can end a write to a regular file
    part way (Linux stops a write at a pending fatal signal), so the torn record of a handler that
    never finished is followed on the same line by the next one; and a record being written as
    this reads it is complete at the next read (found with 8 hand-overs at once: issue 14).
    """
    if not path.exists():
        return []
    records: list[dict[str, object]] = []
    for line in path.read_text().splitlines():
        for chunk in line.split(_START)[1:]:
            try:
                records.append(json.loads(_START + chunk))
            except json.JSONDecodeError:
                continue
    return records
