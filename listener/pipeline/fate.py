"""What becomes of one message: a pure decision that the poller only carries out.

``decide`` turns what the handlers did (``Outcome``s) and what was known before (the pending
entry of an earlier attempt) into a ``Fate``: ``Delivered``, ``Retry`` at a time with the handlers
left, ``GiveUp`` (a dead letter, permanent or out of attempts), or ``Gone`` (nothing left to hand
over). It reads no clock, store or source: ``now`` and ``rng`` come in, so the whole policy is one
table test (``tests/poller/test_fate.py``) and the hand-over threads never decide anything.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from listener.abc import FetchFailure, PendingEntry
from listener.pipeline.settings import FailurePolicy

__all__ = [
    "Delivered",
    "Fate",
    "GiveUp",
    "Gone",
    "Outcome",
    "Retry",
    "decide",
    "decide_fetch_failure",
    "retry_after_of",
]


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What one handler did with one message."""

    handler: str
    error: str | None = None  # None: it returned
    permanent: bool = False  # it raised PermanentError
    retry_after: float = 0.0  # the receiver's Retry-After in seconds (a webhook's 429/503)
    seconds: float = 0.0  # how long the call took

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, kw_only=True)
class Delivered:
    """Every handler returned: the message is done."""


@dataclass(frozen=True, kw_only=True)
class Retry:
    """Park the message until ``at``, for ``handlers`` (empty: route it again then)."""

    handlers: tuple[str, ...]
    attempts: int  # attempts made, this one included
    at: datetime
    delay: float
    error: str


@dataclass(frozen=True, kw_only=True)
class GiveUp:
    """A dead letter: a permanent failure, or transient ones that ran out of attempts."""

    handlers: tuple[str, ...]
    attempts: int
    error: str
    permanent: bool


@dataclass(frozen=True, kw_only=True)
class Gone:
    """Deleted or moved away between the sync and the fetch, never attempted: nothing to do.

    If it moved into another watched folder, that folder's sync sees it as new.
    """


Fate = Delivered | Retry | GiveUp | Gone


def retry_after_of(error: BaseException) -> float:
    """A handler error's ``retry_after`` as seconds; 0 for anything that is not a usable number.

    A receiver's ``Retry-After`` is a hint, not a command: garbage counts as none, and
    ``FailurePolicy.retry_delay`` caps the rest at ``backoff_max``.
    """
    value = getattr(error, "retry_after", None)
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def decide(
    outcomes: Sequence[Outcome],
    previous: PendingEntry | None,
    policy: FailurePolicy,
    now: datetime,
    rng: random.Random,
) -> Fate:
    """The fate of a message whose handlers ran with ``outcomes`` (those that succeeded are in
    the ledger whatever the fate: a retry runs only the handlers that failed)."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return Delivered()
    attempts = (previous.attempts if previous else 0) + 1
    handlers = tuple(o.handler for o in failed)
    error = "; ".join(f"{o.handler}: {o.error}" for o in failed)
    permanent = any(o.permanent for o in failed)
    if permanent or attempts >= policy.max_attempts:
        return GiveUp(handlers=handlers, attempts=attempts, error=error, permanent=permanent)
    floor = max(o.retry_after for o in failed)
    delay = policy.retry_delay(attempts, rng, at_least=floor)
    return Retry(
        handlers=handlers,
        attempts=attempts,
        at=now + timedelta(seconds=delay),
        delay=delay,
        error=error,
    )


def decide_fetch_failure(
    failure: FetchFailure,
    previous: PendingEntry | None,
    policy: FailurePolicy,
    now: datetime,
    rng: random.Random,
) -> Fate:
    """The fate of an item ``fetch`` could not turn into a message."""
    if failure.gone and previous is None:
        return Gone()
    attempts = (previous.attempts if previous else 0) + 1
    handlers = previous.handlers if previous else ()
    if failure.transient and attempts < policy.max_attempts:
        delay = policy.retry_delay(attempts, rng)
        return Retry(
            handlers=handlers,
            attempts=attempts,
            at=now + timedelta(seconds=delay),
            delay=delay,
            error=failure.error,
        )
    error = failure.error
    if failure.gone:
        error = f"the item left the folder before it could be handed over ({failure.error})"
    return GiveUp(
        handlers=handlers, attempts=attempts, error=error, permanent=not failure.transient
    )
