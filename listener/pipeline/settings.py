"""What a poll is told (``PollerSettings``, ``FailurePolicy``) and what it reports (``PollResult``).

Plain values, free of any mail protocol: the configuration maps onto them (``listener.app``) and
``once --json`` prints ``PollResult``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["FailurePolicy", "PollResult", "PollerSettings", "StartFrom"]

StartFrom = Literal["new", "unread", "all"]


@dataclass(frozen=True)
class FailurePolicy:
    """How transient failures are retried and where dead letters go."""

    max_attempts: int = 5
    backoff: float = 30.0
    backoff_max: float = 3600.0
    multiplier: float = 2.0
    jitter: float = 0.1
    dead_letter_folder: str | None = None

    def delay(self, attempts: int, rng: random.Random) -> float:
        # min() before the power can overflow: 2.0 ** 1100 is an OverflowError, not a float.
        exponent = min(max(attempts - 1, 0), 1000)
        try:
            base = min(self.backoff * self.multiplier**exponent, self.backoff_max)
        except OverflowError:
            base = self.backoff_max
        return base * (1 + rng.uniform(-self.jitter, self.jitter))

    def retry_delay(self, attempts: int, rng: random.Random, *, at_least: float = 0.0) -> float:
        """Seconds until the next attempt: the back-off, or ``at_least`` (a ``Retry-After``)
        when longer, but never past ``backoff_max``.

        A receiver's ``Retry-After`` is a hint, not a command: ``99999999999999999999`` or a
        date in 9999 must neither overflow the clock nor park a message for centuries (tests:
        ``test_retry_after_is_clamped_to_backoff_max``). The attempt counts either way.
        """
        hint = at_least if math.isfinite(at_least) and at_least > 0 else 0.0
        return max(self.delay(attempts, rng), min(hint, self.backoff_max))


@dataclass(frozen=True)
class PollerSettings:
    """The part of a mailbox's configuration the poller uses."""

    name: str  # the mailbox's configured name: the key of its state
    credential: str
    folder: str = "inbox"
    start_from: StartFrom = "new"
    after_success: tuple[str, str | None] = ("mark_read", None)
    failure: FailurePolicy = field(default_factory=FailurePolicy)
    batch_size: int = 100
    # Messages of a batch handed over at once (listener.pipeline.handover); 8 keeps a 50 ms
    # handler's mailbox above 100 msg/s without flooding a receiver that never asked for it.
    handler_concurrency: int = 8
    ordered: bool = False  # every message one at a time, in the order the folder received them


@dataclass
class PollResult:
    """What one poll did; ``error`` is set when the poll stopped early."""

    mailbox: str
    handed_over: int = 0
    failed: int = 0
    dead_lettered: int = 0
    already_done: int = 0
    unrouted: int = 0
    gone: int = 0
    retried: int = 0  # due entries of the retry queue this poll took up (step 1)
    pages: int = 0
    error: str | None = None
    error_code: str | None = None
    # ``once`` in a cluster: the replica that owns the mailbox, asked to poll it instead.
    polled_by: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
