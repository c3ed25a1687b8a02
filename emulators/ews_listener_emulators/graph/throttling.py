"""Exchange Online's throttling of Graph mail requests, per app and mailbox (issue 12, point 5).

Two standing limits, both keyed by (app id, mailbox), as Exchange Online applies them to the
Outlook resources of Graph (Graph docs, concepts/throttling-limits.md, "Outlook service limits"):

- **concurrency**: at most ``concurrency`` requests of one app to one mailbox in flight (4 in
  Exchange Online); the next one is answered 429 ``ApplicationThrottled``, "Application is over
  its MailboxConcurrency limit.".
- **budget**: at most ``budget`` requests per ``window`` seconds (10 000 per 10 minutes in
  Exchange Online). Off (None) by default so that tests and benchmarks that are not about it are
  not throttled; the 429's ``Retry-After`` is the time left in the window.

The concurrency message is the one Exchange Online answers (as widely reported; Microsoft's pages
show no mail 429 body); the budget's ("MailboxRequests") is our wording, as no documented answer
names that limit. ``Retry-After`` is written with three decimals (``2.128``), as the documented 429
(../shared/graph-samples/throttling-429.http.txt) shows it. The clock is a parameter, so a test
can run a window out without sleeping (STYLE.md, "No sleeping tests").
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from ews_listener_emulators.graph._contract import GraphError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_WINDOW",
    "THROTTLED_INNER_ERROR",
    "Throttle",
    "retry_after",
    "throttled",
]

#: Exchange Online: "4 concurrent requests" per app and mailbox (throttling-limits.md).
DEFAULT_CONCURRENCY = 4
#: Exchange Online: "10,000 API requests in a 10 minute period" per app and mailbox.
DEFAULT_WINDOW = 600.0
#: ``innerError`` members of the documented 429 beyond the ones every error carries.
THROTTLED_INNER_ERROR = {"code": "429", "message": "Please retry after", "status": "429"}

_Key = tuple[str, str]


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value as Graph writes it: seconds with three decimals (``2.128``)."""
    return f"{max(seconds, 0.001):.3f}"


def throttled(message: str, seconds: float, *, code: str = "ApplicationThrottled") -> GraphError:
    """A 429 in the documented shape, with ``Retry-After``."""
    return GraphError(
        429,
        code,
        message,
        headers={"Retry-After": retry_after(seconds)},
        inner=THROTTLED_INNER_ERROR,
    )


class Throttle:
    """The concurrency limit and the request budget, thread-safe; see the module docstring."""

    def __init__(
        self,
        *,
        concurrency: int | None = DEFAULT_CONCURRENCY,
        budget: int | None = None,
        window: float = DEFAULT_WINDOW,
        concurrency_retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._defaults = (concurrency, budget, window, concurrency_retry_after, clock)
        self.concurrency = concurrency
        self.budget = budget
        self.window = window
        self.concurrency_retry_after = concurrency_retry_after
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight: Counter[_Key] = Counter()
        self._windows: dict[_Key, tuple[float, int]] = {}  # key → (window start, requests)
        self._counters: Counter[str] = Counter()

    def reset(self) -> None:
        """The limits and clock given to the constructor, nothing in flight or spent, zero
        counters."""
        with self._lock:
            (
                self.concurrency,
                self.budget,
                self.window,
                self.concurrency_retry_after,
                self.clock,
            ) = self._defaults
            self._in_flight.clear()
            self._windows.clear()
            self._counters.clear()

    def counters(self) -> dict[str, int]:
        """Refusals by limit: ``mailbox_concurrency``, ``budget``."""
        with self._lock:
            return dict(self._counters)

    def in_flight(self, app: str | None, mailbox: str) -> int:
        with self._lock:
            return self._in_flight[_key(app, mailbox)]

    @contextlib.contextmanager
    def slot(self, app: str | None, mailbox: str) -> Iterator[None]:
        """Count a request in for its time in the resource; raise the 429 when a limit is hit."""
        key = _key(app, mailbox)
        self._admit(key)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[key] -= 1
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]

    def _admit(self, key: _Key) -> None:
        with self._lock:
            now = self.clock()
            if self.budget is not None:
                start, spent = self._windows.get(key, (now, 0))
                if now - start >= self.window:
                    start, spent = now, 0
                if spent >= self.budget:
                    self._counters["budget"] += 1
                    raise throttled(
                        "Application is over its MailboxRequests limit.",
                        start + self.window - now,
                    )
                self._windows[key] = (start, spent + 1)
            if self.concurrency is not None and self._in_flight[key] >= self.concurrency:
                self._counters["mailbox_concurrency"] += 1
                raise throttled(
                    "Application is over its MailboxConcurrency limit.",
                    self.concurrency_retry_after,
                )
            self._in_flight[key] += 1


def _key(app: str | None, mailbox: str) -> _Key:
    return ((app or "").lower(), mailbox.lower())
