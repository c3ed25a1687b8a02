"""Fault injection for the EWS emulator: throttling, HTTP errors, latency, drops, bad tokens.

A ``FaultEngine`` holds rules. Each rule is scoped by operation (or ``"*"``) and mailbox (or
``"*"``) and fires either ``count`` times or with a ``probability`` drawn from a seeded
``random.Random`` (the same seed and the same request sequence inject the same faults, so a chaos
run can be replayed). The server asks ``decide(operation, mailbox)`` once per request, when it
knows both, and gets a ``soap.Fault`` (or None) that says what to send instead of the answer;
``render`` turns the HTTP-level kinds into status, headers and body so the server only sends them.

Besides the rules there is a standing per-mailbox concurrency limit (``connection_limit``,
default 27 as in Exchange Online's EWS ``MaxConcurrency`` budget): ``admit``/``release`` (or
the ``slot`` context manager) around a request answer ``ErrorExceededConnectionCount`` to the
request past the limit.

Every injected fault is counted by kind (``counters()``) for the chaos run report.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from lxml import etree

from ews_listener_emulators._rules import RuleBook
from ews_listener_emulators._unauthorized import unauthorized_headers
from ews_listener_emulators.soap import (
    Fault,
    build_envelope,
    error_message,
    m,
    soap_fault,
    sub,
)

__all__ = [
    "DEFAULT_CONNECTION_LIMIT",
    "KINDS",
    "FaultEngine",
    "FaultRule",
    "Rendered",
    "fault_for",
    "render",
    "unauthorized_headers",
]

#: Exchange Online's EWS ``MaxConcurrency`` budget per user (kde-akonadi-ews sample fault).
DEFAULT_CONNECTION_LIMIT = 27

KINDS = (
    "server_busy",
    "max_concurrency",
    "connection_count",
    "http_500",
    "http_503",
    "latency",
    "drop",
    "expire_tokens",
    "revoke_tokens",
    "invalid_sync_state",
)

_BUSY_TEXT = "The server cannot service this request right now. Try again later."


@dataclass(frozen=True)
class FaultRule:
    """One rule. ``count``: fire this many more times; ``probability``: fire with this chance.

    Parameters by kind: ``back_off_ms`` (server_busy), ``retry_after`` seconds (http_503),
    ``delay`` seconds (latency), ``after_bytes`` of the body sent before the cut (drop).
    """

    rule_id: str
    kind: str
    operation: str = "*"
    mailbox: str = "*"
    count: int | None = 1
    probability: float | None = None
    back_off_ms: int = 1000
    retry_after: int = 1
    delay: float = 0.1
    after_bytes: int = 64

    def matches(self, operation: str, mailbox: str | None) -> bool:
        """Whether the rule applies to this request (mailbox compared case-insensitively)."""
        if self.kind == "invalid_sync_state" and operation != "SyncFolderItems":
            return False
        if self.operation not in ("*", operation):
            return False
        return self.mailbox == "*" or (
            mailbox is not None and self.mailbox.lower() == mailbox.lower()
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (admin API)."""
        return asdict(self)


def fault_for(rule: FaultRule) -> Fault:
    """The ``soap.Fault`` a firing rule produces."""
    kind = rule.kind
    if kind == "server_busy":
        return Fault(kind="server_busy", back_off_ms=rule.back_off_ms)
    if kind == "max_concurrency":
        # kde-akonadi-ews.ErrorServerBusy.MaxConcurrency.fault.xml: no BackOffMilliseconds, so
        # exchangelib falls back to its own retry wait.
        return Fault(
            kind="server_busy",
            back_off_ms=None,
            extra={
                "Policy": "MaxConcurrency",
                "MaxConcurrencyLimit": str(DEFAULT_CONNECTION_LIMIT),
                "ErrorMessage": (
                    "This operation exceeds the throttling budget for policy part "
                    f"'MaxConcurrency', policy value '{DEFAULT_CONNECTION_LIMIT}', "
                    "Budget type: 'Ews'. Suggested backoff time 0 ms."
                ),
            },
        )
    if kind == "connection_count":
        return _connection_count_fault()
    if kind == "http_500":
        return Fault(kind="http", status=500)
    if kind == "http_503":
        return Fault(kind="http", status=503, retry_after=rule.retry_after)
    if kind == "latency":
        return Fault(kind="latency", delay=rule.delay)
    if kind == "drop":
        return Fault(kind="drop", after_bytes=rule.after_bytes)
    if kind == "expire_tokens":
        return Fault(kind="unauthorized", code="token_expired", status=401)
    if kind == "revoke_tokens":
        return Fault(kind="unauthorized", code="invalid_token", status=401)
    if kind == "invalid_sync_state":
        return Fault(
            kind="response_error",
            code="ErrorInvalidSyncStateData",
            message="Synchronization state data is corrupt or otherwise invalid.",
            status=200,
        )
    raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")


def _connection_count_fault() -> Fault:
    return Fault(
        kind="soap_fault",
        code="ErrorExceededConnectionCount",
        message=(
            "You have exceeded the available concurrent connections for your account. "
            "Try again once your other requests have completed."
        ),
    )


class FaultEngine(RuleBook[FaultRule]):
    """Thread-safe fault rules, counters and the per-mailbox concurrency limit."""

    def __init__(
        self, *, seed: int = 0, connection_limit: int | None = DEFAULT_CONNECTION_LIMIT
    ) -> None:
        super().__init__(
            FaultRule,
            kinds=KINDS,
            parameters=("back_off_ms", "retry_after", "delay", "after_bytes"),
            seed=seed,
        )
        self._in_flight: Counter[str] = Counter()
        self.connection_limit = connection_limit

    # --- rules: add, rules, remove, clear, reset, counters (RuleBook; the counters also count
    # ``connection_limit`` refusals of the standing limit) --------------------------------------

    def decide(self, operation: str, mailbox: str | None) -> Fault | None:
        """The fault for this request, or None to answer normally.

        Rules are tried in the order they were added; the first one that fires wins. Latency rules
        do not win: their delay is added to the fault that does (or returned alone), because a
        slow server that then fails is a realistic combination.
        """
        delay = 0.0
        chosen: Fault | None = None
        with self._lock:
            for index, rule in enumerate(self._rules):
                if not self._fires(index, rule, operation, mailbox):
                    continue
                fault = fault_for(rule)
                if fault.kind == "latency":
                    delay += fault.delay
                    continue
                chosen = fault
                break
            self._drop_spent()
        if chosen is not None:
            return replace(chosen, delay=chosen.delay + delay)
        return Fault(kind="latency", delay=delay) if delay else None

    # --- the standing concurrency limit --------------------------------------------------------

    def admit(self, mailbox: str | None) -> Fault | None:
        """Count a request in; past ``connection_limit`` it is refused (and not counted in)."""
        if mailbox is None:
            return None
        key = mailbox.lower()
        with self._lock:
            limit = self.connection_limit
            if limit is not None and self._in_flight[key] >= limit:
                self._counters["connection_limit"] += 1
                return _connection_count_fault()
            self._in_flight[key] += 1
            return None

    def release(self, mailbox: str | None) -> None:
        """Count a request admitted by ``admit`` out."""
        if mailbox is None:
            return
        key = mailbox.lower()
        with self._lock:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]

    @contextlib.contextmanager
    def slot(self, mailbox: str | None) -> Iterator[Fault | None]:
        """``admit`` on entry, ``release`` on exit when admitted; yields the refusal if any."""
        refused = self.admit(mailbox)
        try:
            yield refused
        finally:
            if refused is None:
                self.release(mailbox)

    def in_flight(self, mailbox: str) -> int:
        """Requests of ``mailbox`` being served now."""
        with self._lock:
            return self._in_flight[mailbox.lower()]


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """What to send for a fault: status, headers and a complete body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


_XML = "text/xml; charset=utf-8"


def render(fault: Fault, operation: str) -> Rendered:
    """Status, headers and body for the kinds the server answers with (not latency or drop)."""
    if fault.kind == "server_busy":
        # exchangelib.ErrorServerBusy.BackOffMilliseconds.fault.xml: HTTP 500, no SOAP header.
        values: dict[str, str] = dict(fault.extra)
        if fault.back_off_ms is not None:
            values = {"BackOffMilliseconds": str(fault.back_off_ms), **values}
        element = soap_fault("ErrorServerBusy", _BUSY_TEXT, values=values)
        return Rendered(500, {"Content-Type": _XML}, build_envelope(element, with_version=False))
    if fault.kind == "soap_fault":
        element = soap_fault(fault.code, fault.message, values=dict(fault.extra) or None)
        return Rendered(500, {"Content-Type": _XML}, build_envelope(element, with_version=False))
    if fault.kind == "response_error":
        response = etree.Element(m(f"{operation}Response"))
        messages = sub(response, m("ResponseMessages"))
        message = error_message(f"{operation}ResponseMessage", fault.code, fault.message)
        if operation == "SyncFolderItems":
            # DESIGN.md: a bad sync state is answered with an empty SyncState.
            sub(message, m("SyncState"), "")
            sub(message, m("IncludesLastItemInRange"), "true")
        messages.append(message)
        return Rendered(200, {"Content-Type": _XML}, build_envelope(response))
    if fault.kind == "http":
        headers = {"Content-Type": "text/html"}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return Rendered(fault.status, headers, b"")
    if fault.kind == "unauthorized":
        return Rendered(401, unauthorized_headers(fault.code), b"")
    raise ValueError(f"fault kind {fault.kind!r} is not rendered (the server acts on it)")
