"""The ``log`` handler: one structured log line per message, for trying routes out.

The JSON line carries every field, the key in full; the console shows one short sentence
(``listener/observability/console.py``: mailbox, sender, subject, attachments, 12-hex key).
"""

from __future__ import annotations

import logging

import structlog

from listener.handlers.config import LogHandlerConfig
from listener.model import Message

__all__ = ["LogHandler"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogHandler:
    """Logs ``message.handled`` with mailbox, from, subject, attachments and idempotency key."""

    def __init__(self, name: str, *, level: str = "info") -> None:
        self.name = name
        self._level = _LEVELS[level]
        self._log = structlog.get_logger("listener.handlers.log")

    @classmethod
    def from_config(cls, name: str, config: LogHandlerConfig) -> LogHandler:
        """A log handler at the configured level."""
        return cls(name, level=config.level)

    def __call__(self, message: Message) -> None:
        """Write the line; never fails for a well-formed message."""
        sender = message.from_ or message.sender
        self._log.log(
            self._level,
            "message.handled",
            mailbox=message.mailbox,
            **{"from": sender.email if sender else None},
            subject=message.subject,
            attachments=len(message.attachments),
            key=message.idempotency_key,
            folder=message.folder,
            handler=self.name,
        )

    def close(self) -> None:
        """Nothing to release."""
