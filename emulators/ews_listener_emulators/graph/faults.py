"""Fault injection for the Graph emulator (issue 12, point 7), designed as the EWS one.

``GraphFaults`` holds rules with the API of ``ews_listener_emulators.faults.FaultEngine``: each
is scoped by operation (the OpenAPI operationId the request log records, e.g.
``user.mailFolder.message_delta``, or ``"*"``) and mailbox (or ``"*"``), fires ``count`` times or
with a ``probability`` drawn from a seeded ``random.Random`` (same seed, same request sequence,
same faults), and every firing is counted by kind (``counters()``).

It is a sibling of the EWS engine rather than an extension of it: the EWS engine's kinds render
as SOAP faults (``soap.Fault``, ``ErrorServerBusy`` with ``BackOffMilliseconds``) and its rules
know EWS operation names (``SyncFolderItems``); Graph's answers are ODataErrors with
``Retry-After``. What the two share is the rule bookkeeping, which is short.

The server asks ``decide(operation, mailbox)`` once per request, when it knows both, and acts on
the ``GraphFault`` it gets (``_handler.GraphHandler._inject``). Two kinds are never decided by
the server: ``subscription_removed`` and ``notifications_missed`` are hooks for the
subscriptions resource, which asks ``take(kind, mailbox)`` when it is about to deliver a
notification and, on True, sends the lifecycle notification instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ews_listener_emulators._rules import RuleBook
from ews_listener_emulators.graph._contract import GraphError
from ews_listener_emulators.graph.throttling import retry_after, throttled

__all__ = ["HOOK_KINDS", "KINDS", "FaultRule", "GraphFault", "GraphFaults", "fault_error"]

#: Kinds the server acts on, per request.
REQUEST_KINDS = (
    "throttled",  # 429 ApplicationThrottled + Retry-After (``retry_after`` seconds)
    "mailbox_concurrency",  # 429 ApplicationThrottled, "over its MailboxConcurrency limit"
    "http_500",
    "http_502",
    "http_503",  # + Retry-After
    "http_504",  # + Retry-After
    "latency",  # ``delay`` seconds inside the request's concurrency slot, then the answer
    "drop",  # the connection closes: before the answer, or after ``after_bytes`` of it
    "delta_token_invalidated",  # 410 syncStateNotFound (delta operations only)
    "token_revoked",  # the app's tokens are revoked at the token server; this request 401s
)
#: Kinds the subscriptions resource takes (``take``); the server never decides them.
#: ``receiver_unreachable``: a notification POST fails as if the receiver were down (no answer);
#: Graph's retry back-off follows, as for a real outage.
HOOK_KINDS = ("subscription_removed", "notifications_missed", "receiver_unreachable")
KINDS = REQUEST_KINDS + HOOK_KINDS

_PARAMETERS = frozenset({"retry_after", "delay", "after_bytes"})

#: status → (error.code, error.message) of the 5xx kinds; codes and messages from Graph's
#: concepts/errors.md ("Error resource type"), 502 (absent there) as the Graph gateway words it.
_SERVER_ERRORS = {
    500: ("generalException", "General exception while processing."),
    502: ("BadGateway", "The server received an invalid response from an upstream server."),
    503: (
        "serviceNotAvailable",
        "The service is not available. Try the request again after a delay. There may be a "
        "Retry-After header.",
    ),
    504: ("timeout", "The operation timed out before it could be completed."),
}


@dataclass(frozen=True)
class FaultRule:
    """One rule. ``count``: fire this many more times; ``probability``: fire with this chance.

    Parameters by kind: ``retry_after`` seconds (throttled, mailbox_concurrency, http_503,
    http_504; fractional as Graph writes it), ``delay`` seconds (latency), ``after_bytes`` of the
    answer sent before the cut (drop; 0: no answer at all).
    """

    rule_id: str
    kind: str
    operation: str = "*"
    mailbox: str = "*"
    count: int | None = 1
    probability: float | None = None
    retry_after: float = 2.128  # the documented 429's value
    delay: float = 0.1
    after_bytes: int = 0

    def matches(self, operation: str | None, mailbox: str | None) -> bool:
        """Whether the rule applies (mailbox compared case-insensitively)."""
        if self.kind == "delta_token_invalidated" and not (operation or "").endswith("_delta"):
            return False
        if self.operation not in ("*", operation):
            return False
        return self.mailbox == "*" or (
            mailbox is not None and self.mailbox.lower() == mailbox.lower()
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True)
class GraphFault:
    """What the server does instead of (or before) answering: the firing rule's kind and
    parameters, plus the delay of latency rules that fired with it."""

    kind: str
    retry_after: float = 0.0
    delay: float = 0.0
    after_bytes: int = 0


class GraphFaults(RuleBook[FaultRule]):
    """Thread-safe fault rules and counters for the Graph emulator (``RuleBook``: add, rules,
    remove, clear, reset, counters)."""

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(FaultRule, kinds=KINDS, parameters=_PARAMETERS, seed=seed)

    def decide(self, operation: str | None, mailbox: str | None) -> GraphFault | None:
        """The fault for this request, or None to answer normally.

        Rules are tried in the order they were added; the first that fires wins. Latency rules do
        not win: their delay is added to the fault that does (or returned alone), as a slow
        server that then fails is a realistic combination (the EWS engine does the same).
        """
        delay = 0.0
        chosen: GraphFault | None = None
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.kind in HOOK_KINDS or not self._fires(index, rule, operation, mailbox):
                    continue
                if rule.kind == "latency":
                    delay += rule.delay
                    continue
                chosen = GraphFault(rule.kind, rule.retry_after, 0.0, rule.after_bytes)
                break
            self._drop_spent()
        if chosen is not None:
            return replace(chosen, delay=delay)
        return GraphFault("latency", delay=delay) if delay else None

    def take(self, kind: str, mailbox: str | None, operation: str = "*") -> bool:
        """Whether a ``kind`` rule for ``mailbox`` fires now (spending one of its count).

        For the resources that consume a hook kind (``subscription_removed``,
        ``notifications_missed``): ``if faults.take("notifications_missed", mailbox): …``.
        """
        self._check_kind(kind)
        with self._lock:
            fired = False
            for index, rule in enumerate(self._rules):
                if rule.kind == kind and self._fires(index, rule, operation, mailbox):
                    fired = True
                    break
            self._drop_spent()
            return fired


def fault_error(fault: GraphFault) -> GraphError | None:
    """The error answer of a fault kind that is one (throttled, mailbox_concurrency, http_5xx);
    None for the kinds the server acts on otherwise."""
    if fault.kind == "throttled":
        # The code Exchange Online throttles mail with; the message is our wording (no documented
        # mail 429 body), the shape is throttling-429.http.txt's.
        return throttled("Application is over its request limit.", fault.retry_after)
    if fault.kind == "mailbox_concurrency":
        return throttled("Application is over its MailboxConcurrency limit.", fault.retry_after)
    if fault.kind.startswith("http_"):
        status = int(fault.kind.removeprefix("http_"))
        code, message = _SERVER_ERRORS[status]
        headers = {"Retry-After": retry_after(fault.retry_after)} if status in (503, 504) else {}
        return GraphError(status, code, message, headers=headers)
    return None
