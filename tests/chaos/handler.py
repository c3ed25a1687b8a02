"""The chaos run's handler: fails on a seeded schedule and records every success it returns.

The daemon imports it as ``tests.chaos.handler:record`` (a ``python`` handler) and steers it only
through its environment, so the chaos process needs no side channel into the daemon:

- ``CHAOS_RECEIPTS``: the receipt log, one fsync'ed JSON line per successful hand-over, appended
  with ``O_APPEND`` just before returning (what a downstream system would have seen).
- ``CHAOS_ATTEMPTS``: a directory with one file per idempotency key that grows by one byte per
  attempt, so the attempt number survives a SIGKILL of the daemon.
- ``CHAOS_SEED`` and ``CHAOS_FAIL_RATE``: attempt *n* of key *k* fails transiently when
  ``sha256(seed:k:n)`` falls below the rate, the same decision in every run with that seed.

A subject containing ``[poison]`` raises ``PermanentError`` on every attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from listener.errors import PermanentError
from listener.model import Message

__all__ = ["POISON", "append", "attempt_fails", "read", "record"]

POISON = "[poison]"


def append(path: str, record: dict[str, object]) -> None:
    """Append one JSON line and fsync it: the line exists exactly when this returns."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def attempt_fails(seed: str, key: str, attempt: int, rate: float) -> bool:
    """Whether attempt ``attempt`` of ``key`` fails transiently (seeded, uniform in [0, 1))."""
    digest = hashlib.sha256(f"{seed}:{key}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def _next_attempt(directory: str, key: str) -> int:
    """Count this attempt of ``key`` on disk (one byte per attempt) and return its number."""
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def record(message: Message) -> None:
    """The handler: poison fails for good, 20 % of attempts fail once, the rest are recorded."""
    if POISON in message.subject:
        raise PermanentError("poisoned message refused on purpose")
    attempt = _next_attempt(os.environ["CHAOS_ATTEMPTS"], message.idempotency_key)
    rate = float(os.environ.get("CHAOS_FAIL_RATE", "0.2"))
    if attempt_fails(os.environ.get("CHAOS_SEED", "0"), message.idempotency_key, attempt, rate):
        raise RuntimeError(f"attempt {attempt} fails on purpose (seeded transient failure)")
    append(
        os.environ["CHAOS_RECEIPTS"],
        {
            "key": message.idempotency_key,
            "mailbox": message.mailbox,
            "item_id": message.item_id,
            "message_id": message.internet_message_id,
            "attempt": attempt,
            "pid": os.getpid(),
            "at": time.time(),
        },
    )


def read(path: Path) -> list[dict[str, object]]:
    """The receipts written so far (a torn last line, from a SIGKILL mid-write, is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
