"""``PollHooks``: what a poll tells the outside world as it goes, one named method per event.

The habit of dramatiq's ``Middleware``: a base class whose hooks are all no-ops; override the ones
you need (``listener.observability.Metrics`` does). It replaces the ``observe("failed", {...})``
strings sorted by ``if``/``elif``: a misspelt hook is an ``AttributeError`` or a mypy error, not
a silently dropped event, and each hook carries what its metric needs.

Hooks run on the poll's own thread (the hand-over threads only call handlers), one call at a time
per poll; several polls call them concurrently, so an implementation must be thread-safe
(``prometheus_client`` is). An exception from a hook ends the poll like a bug would, after what
the handlers did has been committed (``tests/poller/test_contract.py``).
"""

from __future__ import annotations

__all__ = ["PollHooks"]


class PollHooks:
    """No-op hooks of a poll; every ``mailbox`` is the mailbox's configured name."""

    def handed_over(self, mailbox: str, handler: str, seconds: float) -> None:
        """``handler`` returned for one message after ``seconds``."""

    def handler_failed(
        self, mailbox: str, handler: str, *, permanent: bool, seconds: float
    ) -> None:
        """``handler`` raised for one message: ``permanent`` for a ``PermanentError``."""

    def retry_scheduled(self, mailbox: str, *, attempts: int, delay: float) -> None:
        """A message was parked for another attempt in ``delay`` seconds."""

    def dead_lettered(self, mailbox: str, handler: str) -> None:
        """A message was given up on, once per handler it failed (``"-"`` when none ran)."""

    def batch_settled(self, mailbox: str, messages: int, seconds: float) -> None:
        """A batch of ``messages`` was post-processed and committed, ``seconds`` after its
        hand-over ended."""
