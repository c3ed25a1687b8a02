"""Prometheus metrics, held by a ``Metrics`` object with its own ``CollectorRegistry``.

Not the global registry: tests build a fresh ``Metrics()`` each and compare exact values, and an
embedding application keeps its own metrics apart from ours. Labels carry configuration names
(mailbox, handler, credential), never addresses of secrets or secrets: every label value goes
through :func:`~listener.observability.redaction.redact` all the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import (
    gc_collector as _gc,
)
from prometheus_client import (
    platform_collector as _platform,
)
from prometheus_client import (
    process_collector as _process,
)

from listener import __version__
from listener.notify import ChannelState, ChannelStatus, NotifyHooks
from listener.observability.redaction import redact
from listener.pipeline.hooks import PollHooks

__all__ = ["NAMESPACE", "Metrics", "default_metrics"]

NAMESPACE = "ews_listener"

# Poll durations from a quick empty sync (tens of ms) to a large first page with slow handlers.
_POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Handler calls: a log line (sub-millisecond) to a command handler's minute-long timeout.
_HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


def _label(value: object) -> str:
    return redact(str(value))


class Metrics(PollHooks, NotifyHooks):
    """Every metric the listener exports; ``Metrics(registry=…)`` for an isolated set.

    It is the pollers' ``PollHooks`` and the notification channels' ``NotifyHooks``: one
    instance serves every mailbox, which each hook names.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        process_collectors: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # (mailbox, handler) → its messages_handled and handler_duration series: a hand-over is
        # counted once per message, and labels() redacts and looks up both labels every time
        # (~5 % of the daemon's CPU per message on loopback; benchmarks/README.md).
        self._handed_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        if process_collectors:
            # process_resident_memory_bytes, open fds, GC counts: what an operator checks first.
            _process.ProcessCollector(registry=r)
            _platform.PlatformCollector(registry=r)
            _gc.GCCollector(registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=r)

        self.messages_handled = counter(
            "messages_handled",
            "Messages handed over successfully to a handler.",
            ("mailbox", "handler"),
        )
        self.messages_failed = counter(
            "messages_failed",
            "Hand-overs that failed; kind is transient (retried later) or permanent.",
            ("mailbox", "handler", "kind"),
        )
        self.messages_dead_lettered = counter(
            "messages_dead_lettered",
            "Messages given up on and recorded as dead letters.",
            ("mailbox", "handler"),
        )
        self.handler_duration = Histogram(
            "handler_duration_seconds",
            "Wall time of one handler call for one message, failed calls included.",
            ("mailbox", "handler"),
            namespace=NAMESPACE,
            registry=r,
            buckets=_HANDLER_BUCKETS,
        )
        self.poll_duration = Histogram(
            "poll_duration_seconds",
            "Wall time of one poll of one mailbox, failed polls included.",
            ("mailbox",),
            namespace=NAMESPACE,
            registry=r,
            buckets=_POLL_BUCKETS,
        )
        self.last_successful_poll = gauge(
            "last_successful_poll_timestamp_seconds",
            "Unix time of the last poll of the mailbox that completed without error.",
            ("mailbox",),
        )
        self.pending_messages = gauge(
            "pending_messages",
            "Messages waiting in the retry queue of the mailbox.",
            ("mailbox",),
        )
        self.token_requests = counter(
            "token_requests",
            "Requests sent to the token endpoint of a credential.",
            ("credential",),
        )
        self.token_failures = counter(
            "token_failures",
            "Token requests that did not return a token.",
            ("credential",),
        )
        self.ews_requests = counter(
            "ews_requests",
            "EWS operations by outcome (ok, fault, throttled, unauthorized, error).",
            ("operation", "outcome"),
        )
        self.graph_requests = counter(
            "graph_requests",
            "Microsoft Graph requests by operation and outcome (ok, throttled, an HTTP status).",
            ("operation", "outcome"),
        )
        self.throttle_backoff = counter(
            "throttle_backoff_seconds",
            "Seconds spent backing off because the server asked (ErrorServerBusy, 503, 429).",
            ("credential",),
        )
        self.polls = counter(
            "polls",
            "Polls by outcome (ok or error).",
            ("mailbox", "outcome"),
        )
        # -- push notifications (issue 15) --
        self.notify_events = counter(
            "notification_events",
            "Notifications received that asked for a poll, by channel (ews_streaming, "
            "graph_webhook).",
            ("channel", "mailbox"),
        )
        self.notify_reconnects = counter(
            "notification_reconnects",
            "Streams or subscriptions set up again after a failure or removal.",
            ("channel", "mailbox"),
        )
        self.notify_renewals = counter(
            "notification_renewals",
            "Subscriptions (or streaming connections) renewed before they expired.",
            ("channel", "mailbox"),
        )
        self.notify_rejected = counter(
            "notifications_rejected",
            "Notifications refused: wrong clientState, unknown subscription, unreadable body.",
            ("channel", "reason"),
        )
        self.notify_state = gauge(
            "notification_channel_state",
            "1 for the current state of the mailbox's channel (connected, degraded, off).",
            ("channel", "mailbox", "state"),
        )
        self.notify_last_event = gauge(
            "notification_last_event_timestamp_seconds",
            "Unix time of the last notification for the mailbox (time() - it: seconds since).",
            ("channel", "mailbox"),
        )
        self.poll_requests = counter(
            "poll_requests",
            "Poll requests by outcome: scheduled (a poll follows), coalesced (joined a pending "
            "one), ignored (unknown mailbox or stopping).",
            ("mailbox", "outcome"),
        )
        self.polls_waiting = gauge(
            "polls_waiting",
            "Polls due and waiting for a free worker (service.max_workers). A queue here delays "
            "every poll; a push notification's goes ahead of the others (listener.scheduler).",
            (),
        )
        # Several replicas (listener.cluster): unlabelled, one replica per process; a mailbox
        # label would be 10,000 series in a large cluster, and ``cluster status`` names them.
        self.leases_owned = gauge(
            "leases_owned",
            "Mailbox leases this replica holds now (draining ones included).",
            (),
        )
        self.leases_acquired = counter(
            "leases_acquired",
            "Mailbox leases this replica claimed; takeover says whether another replica held "
            "the mailbox before (yes) or nobody ever did (no).",
            ("takeover",),
        )
        self.leases_released = counter(
            "leases_released",
            "Mailbox leases this replica gave up, its work committed (rebalancing, shutdown).",
            (),
        )
        self.lease_losses = counter(
            "lease_losses",
            "Mailbox leases this replica lost: expired (a pause, the database out of reach) or "
            "taken by another replica before it could renew.",
            (),
        )
        self.build_info = gauge(
            "build_info",
            "Always 1; the version label says which release runs.",
            ("version",),
        )
        self.build_info.labels(version=version).set(1)

    # -- recording helpers: what the poller, the service, auth and ews call ----------------------

    def handled(self, mailbox: str, handler: str, count: int = 1) -> None:
        self.messages_handled.labels(_label(mailbox), _label(handler)).inc(count)

    def failed(self, mailbox: str, handler: str, *, permanent: bool) -> None:
        kind = "permanent" if permanent else "transient"
        self.messages_failed.labels(_label(mailbox), _label(handler), kind).inc()

    def dead_lettered(self, mailbox: str, handler: str) -> None:
        self.messages_dead_lettered.labels(_label(mailbox), _label(handler)).inc()

    def poll_finished(
        self, mailbox: str, *, ok: bool, seconds: float, at: float | None = None
    ) -> None:
        """One poll is over: duration, outcome, and the last-success time when it succeeded."""
        name = _label(mailbox)
        self.poll_duration.labels(name).observe(max(0.0, seconds))
        self.polls.labels(name, "ok" if ok else "error").inc()
        if ok:
            self.last_successful_poll.labels(name).set(time.time() if at is None else at)

    def set_pending(self, mailbox: str, count: int) -> None:
        self.pending_messages.labels(_label(mailbox)).set(count)

    def token_requested(self, credential: str, *, ok: bool) -> None:
        name = _label(credential)
        self.token_requests.labels(name).inc()
        if not ok:
            self.token_failures.labels(name).inc()

    def ews_request(self, operation: str, outcome: str) -> None:
        self.ews_requests.labels(_label(operation), _label(outcome)).inc()

    def graph_request(self, operation: str, outcome: str) -> None:
        self.graph_requests.labels(_label(operation), _label(outcome)).inc()

    def source_request(self, kind: str) -> Callable[[str, str], None]:
        """The recorder of one protocol's requests (``ews_requests`` or ``graph_requests``)."""
        return self.graph_request if kind == "graph" else self.ews_request

    def backed_off(self, credential: str, seconds: float) -> None:
        if seconds > 0:
            self.throttle_backoff.labels(_label(credential)).inc(seconds)

    def lease_acquired(self, *, takeover: bool) -> None:
        self.leases_acquired.labels("yes" if takeover else "no").inc()
        self.leases_owned.inc()

    def lease_released(self) -> None:
        self.leases_released.inc()
        self.leases_owned.dec()

    def lease_lost(self) -> None:
        self.lease_losses.inc()
        self.leases_owned.dec()

    # -- PollHooks: what a poll reports (listener.pipeline.hooks) --------------------------------

    def handed_over(self, mailbox: str, handler: str, seconds: float) -> None:
        series = self._handed_series.get((mailbox, handler))
        if series is None:
            labels = (_label(mailbox), _label(handler))
            series = (self.messages_handled.labels(*labels), self.handler_duration.labels(*labels))
            self._handed_series[(mailbox, handler)] = series
        handled, duration = series
        handled.inc()
        duration.observe(max(0.0, seconds))

    def handler_failed(
        self, mailbox: str, handler: str, *, permanent: bool, seconds: float
    ) -> None:
        self.failed(mailbox, handler, permanent=permanent)
        self.handler_duration.labels(_label(mailbox), _label(handler)).observe(max(0.0, seconds))

    # -- NotifyHooks: what the notification channels report (listener.notify) ------------------

    def event(self, channel: str, mailbox: str) -> None:
        labels = (_label(channel), _label(mailbox))
        self.notify_events.labels(*labels).inc()
        self.notify_last_event.labels(*labels).set(time.time())

    def reconnected(self, channel: str, mailbox: str) -> None:
        self.notify_reconnects.labels(_label(channel), _label(mailbox)).inc()

    def renewed(self, channel: str, mailbox: str) -> None:
        self.notify_renewals.labels(_label(channel), _label(mailbox)).inc()

    def state_changed(self, channel: str, mailbox: str, status: ChannelStatus) -> None:
        for state in ChannelState:
            value = 1.0 if state == status.state else 0.0
            self.notify_state.labels(_label(channel), _label(mailbox), str(state)).set(value)

    def rejected(self, channel: str, reason: str) -> None:
        self.notify_rejected.labels(_label(channel), _label(reason)).inc()

    def poll_requested(self, mailbox: str, outcome: str) -> None:
        self.poll_requests.labels(_label(mailbox), _label(outcome)).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide instance (created on first use, in its own registry)."""
    global _default  # noqa: PLW0603 - one lazily created instance per process, on purpose
    if _default is None:
        _default = Metrics()
    return _default
