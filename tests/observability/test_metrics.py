"""Metrics: names in the exposition, helpers, the poll hooks, isolated registries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from listener import __version__
from listener.observability.metrics import Metrics, default_metrics
from listener.pipeline import PollHooks

EXPECTED = {
    "ews_listener_messages_handled_total",
    "ews_listener_messages_failed_total",
    "ews_listener_messages_dead_lettered_total",
    "ews_listener_poll_duration_seconds_bucket",
    "ews_listener_last_successful_poll_timestamp_seconds",
    "ews_listener_pending_messages",
    "ews_listener_token_requests_total",
    "ews_listener_token_failures_total",
    "ews_listener_ews_requests_total",
    "ews_listener_throttle_backoff_seconds_total",
    "ews_listener_polls_total",
    "ews_listener_build_info",
}


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _exercise(m: Metrics) -> None:
    m.handled("sales", "webhook")
    m.handled("sales", "webhook", 2)
    m.failed("sales", "webhook", permanent=False)
    m.failed("sales", "webhook", permanent=True)
    m.dead_lettered("sales", "webhook")
    m.poll_finished("sales", ok=True, seconds=0.3, at=1_700_000_000.0)
    m.poll_finished("sales", ok=False, seconds=1.2)
    m.set_pending("sales", 4)
    m.token_requested("entra", ok=True)
    m.token_requested("entra", ok=False)
    m.ews_request("SyncFolderItems", "ok")
    m.backed_off("entra", 2.5)
    m.backed_off("entra", 0)


def test_exposition_contains_every_metric() -> None:
    """Every metric name of the issue appears in /metrics output once used."""
    m = Metrics(registry=CollectorRegistry())
    _exercise(m)
    names = {name for name, _ in _samples(m)}
    assert names >= EXPECTED


def test_values_and_labels() -> None:
    """Helpers record the values under the documented labels."""
    m = Metrics(registry=CollectorRegistry(), process_collectors=False)
    _exercise(m)
    s = _samples(m)

    def get(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert get("ews_listener_messages_handled_total", mailbox="sales", handler="webhook") == 3
    assert (
        get(
            "ews_listener_messages_failed_total",
            mailbox="sales",
            handler="webhook",
            kind="permanent",
        )
        == 1
    )
    assert get("ews_listener_polls_total", mailbox="sales", outcome="error") == 1
    assert get("ews_listener_last_successful_poll_timestamp_seconds", mailbox="sales") == 1.7e9
    assert get("ews_listener_pending_messages", mailbox="sales") == 4
    assert get("ews_listener_token_failures_total", credential="entra") == 1
    assert get("ews_listener_token_requests_total", credential="entra") == 2
    assert get("ews_listener_throttle_backoff_seconds_total", credential="entra") == 2.5
    assert get("ews_listener_poll_duration_seconds_count", mailbox="sales") == 2
    assert get("ews_listener_build_info", version=__version__) == 1


def test_registries_are_isolated() -> None:
    """Two Metrics objects never share counts (tests can build fresh ones)."""
    a = Metrics(process_collectors=False)
    b = Metrics(process_collectors=False)
    a.handled("sales", "log")
    assert b"ews_listener_messages_handled_total{" not in b.exposition()
    assert b'handler="log"' in a.exposition()


def test_default_instance_is_shared() -> None:
    """default_metrics() returns one instance per process."""
    assert default_metrics() is default_metrics()


def test_metrics_are_the_pollers_hooks() -> None:
    """Metrics implements PollHooks: hand-overs, failures and dead letters by mailbox."""
    m = Metrics(process_collectors=False)
    assert isinstance(m, PollHooks)
    m.handed_over("support", "dir", 0.1)
    m.handler_failed("support", "dir", permanent=False, seconds=0.2)
    m.dead_lettered("sales", "dir")
    m.batch_settled("sales", 3, 0.01)  # no metric of its own: a no-op
    s = _samples(m)
    key = frozenset({("mailbox", "support"), ("handler", "dir")})
    assert s[("ews_listener_messages_handled_total", key)] == 1
    assert s[("ews_listener_handler_duration_seconds_count", key)] == 2
    key = frozenset({("mailbox", "support"), ("handler", "dir"), ("kind", "transient")})
    assert s[("ews_listener_messages_failed_total", key)] == 1
    key = frozenset({("mailbox", "sales"), ("handler", "dir")})
    assert s[("ews_listener_messages_dead_lettered_total", key)] == 1
