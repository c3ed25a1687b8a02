"""The console format: log lines for a person at a terminal (JSON lines keep every field in full).

Issue 11, point 15: in ``make demo`` the "one readable line per handled message" was 320
characters, with credential, poll id and the 64-hex idempotency key before the subject, and
wrapped three times on an 80-column terminal. On the console, therefore:

- the time is ``HH:MM:SS`` (UTC, like the JSON lines, which keep the full ISO timestamp);
- a 64-hex digest (the idempotency key) shows its first 12 characters: enough to find the
  message in the JSON logs, the archive or the state store (``grep d84a43c8a209``);
- ``message.handled`` is one sentence that leads with what a person scans: mailbox, sender,
  subject (cut at 60 characters), attachments, then the short key. A normal message fits in
  120 characters (``tests/observability/test_console.py``).

Every other event renders as structlog's ``ConsoleRenderer`` does. Redaction has already run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = ["SHORT_KEY", "PersonRenderer", "handled_line"]

SHORT_KEY = 12
"""Hex characters of an idempotency key the console shows."""

_SUBJECT_MAX = 60
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _short(value: Any) -> Any:
    if isinstance(value, str) and _HEX_DIGEST.fullmatch(value):
        return value[:SHORT_KEY]
    return value


def _clock(timestamp: Any) -> str:
    """``2026-12-01T19:50:09.931917Z`` → ``19:50:09``."""
    text = str(timestamp or "")
    match = re.search(r"T(\d\d:\d\d:\d\d)", text)
    return match.group(1) if match else text


def handled_line(event: EventDict) -> str:
    """``message.handled`` as a sentence: mailbox ← sender 'subject' +N attachments key=…"""
    subject = str(event.get("subject") or "")
    if len(subject) > _SUBJECT_MAX:
        subject = subject[: _SUBJECT_MAX - 1] + "…"
    count = event.get("attachments") or 0
    attachments = f" +{count} attachment{'s' if count != 1 else ''}" if count else ""
    sender = event.get("from") or "(no sender)"
    return (
        f"handled {event.get('mailbox')} ← {sender} {subject!r}{attachments} "
        f"key={_short(event.get('key'))}"
    )


# Events with a sentence of their own on the console; the sentence replaces all their fields.
_SENTENCES: dict[str, Callable[[EventDict], str]] = {"message.handled": handled_line}


class PersonRenderer:
    """The console renderer: short time and keys, a sentence for the events people watch."""

    def __init__(self, *, colors: bool) -> None:
        # plain_traceback: the Rich formatter would print local variables (secrets included)
        # and bypass redaction; the exception is already text here anyway.
        self._fallback = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        """One line (plus the traceback, if any) for ``event_dict``."""
        event_dict["timestamp"] = _clock(event_dict.get("timestamp"))
        sentence = _SENTENCES.get(str(event_dict.get("event")))
        level = str(event_dict.get("level", ""))
        if sentence is not None and "exception" not in event_dict:
            shown = "" if level == "info" else f"[{level}] "
            return f"{event_dict['timestamp']} {shown}{sentence(event_dict)}"
        for name, value in event_dict.items():
            event_dict[name] = _short(value)
        return str(self._fallback(logger, method_name, event_dict))
