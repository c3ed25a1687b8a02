"""Push notifications in the observability layer: channel state in ``/readyz``, ``Metrics`` as
``NotifyHooks``, POST routes and HTTPS on the health server, and the daemon's ``ChannelWatch``
(one log line per change of state, the safety-net interval following it)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from ews_listener_emulators.ca import EmulatorCA
from listener.daemon import ChannelWatch
from listener.notify import ChannelState, ChannelStatus, HttpAnswer, HttpRequest
from listener.observability.health import HealthServer, HealthState
from listener.observability.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_readyz_shows_channel_state_and_a_degraded_channel_stays_ready() -> None:
    """Degraded: listed under ``degraded`` with its reason, the mailbox still ready."""
    health = HealthState()
    health.register_mailbox("orders", 60, at=1000.0)
    health.register_mailbox("plain", 60, at=1000.0)
    health.poll_succeeded("orders", at=1010.0)
    health.poll_succeeded("plain", at=1010.0)
    health.set_channel(
        "orders", ChannelStatus(state=ChannelState.DEGRADED, reason="cannot subscribe")
    )
    ready, body = health.report(now=1020.0)
    assert ready
    assert body["degraded"] == {
        "orders": "notifications degraded, polling every 60s: cannot subscribe"
    }
    assert body["mailboxes"]["orders"]["notifications"] == {
        "state": "degraded",
        "reason": "cannot subscribe",
        "last_event_age_s": None,
    }
    assert "notifications" not in body["mailboxes"]["plain"]  # no channel, no entry
    health.set_channel("orders", ChannelStatus(state=ChannelState.CONNECTED))
    health.channel_event("orders")
    _, body = health.report(now=1021.0)
    assert body["degraded"] == {}
    entry = body["mailboxes"]["orders"]["notifications"]
    assert entry["state"] == "connected"
    assert entry["last_event_age_s"] is not None
    assert entry["last_event_age_s"] >= 0


def test_metrics_count_what_the_channels_report() -> None:
    """Events, reconnects, renewals, rejections, the state gauge and poll requests."""
    metrics = Metrics(process_collectors=False)
    metrics.event("graph_webhook", "orders")
    metrics.event("graph_webhook", "orders")
    metrics.reconnected("graph_webhook", "orders")
    metrics.renewed("graph_webhook", "orders")
    metrics.rejected("graph_webhook", "client_state")
    metrics.state_changed("graph_webhook", "orders", ChannelStatus(state=ChannelState.DEGRADED))
    metrics.poll_requested("orders", "coalesced")
    labels = {"channel": "graph_webhook", "mailbox": "orders"}
    assert sample(metrics, "ews_listener_notification_events_total", **labels) == 2
    assert sample(metrics, "ews_listener_notification_reconnects_total", **labels) == 1
    assert sample(metrics, "ews_listener_notification_renewals_total", **labels) == 1
    assert (
        sample(
            metrics,
            "ews_listener_notifications_rejected_total",
            channel="graph_webhook",
            reason="client_state",
        )
        == 1
    )
    states = {
        state: sample(metrics, "ews_listener_notification_channel_state", **labels, state=state)
        for state in ("connected", "degraded", "off")
    }
    assert states == {"connected": 0, "degraded": 1, "off": 0}
    stamp = sample(metrics, "ews_listener_notification_last_event_timestamp_seconds", **labels)
    assert stamp is not None
    assert stamp > 0
    assert (
        sample(metrics, "ews_listener_poll_requests_total", mailbox="orders", outcome="coalesced")
        == 1
    )


def echo(request: HttpRequest) -> HttpAnswer:
    return HttpAnswer(status=202, body=request.query.get("q", "").encode() + request.body)


def test_a_post_route_answers_and_runs_its_after_step() -> None:
    """A mounted route gets the decoded query and body; ``after`` runs once the answer is sent;
    an unknown path is 404 and an oversized body 413."""
    ran: list[str] = []

    def receiver(request: HttpRequest) -> HttpAnswer:
        return HttpAnswer(
            status=202,
            body=request.query["q"].encode() + request.body,
            after=lambda: ran.append("after"),
        )

    with HealthServer(HealthState(), None, "127.0.0.1", 0) as server:
        server.add_route("/hook", receiver)
        answer = httpx.post(f"{server.url}/hook?q=a%20b", content=b"+body", timeout=5)
        missing = httpx.post(f"{server.url}/other", content=b"x", timeout=5)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"POST /hook?q=x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            big = raw.recv(100).decode()
        assert "/hook" in server.endpoints()
    assert (answer.status_code, answer.text) == (202, "a b+body")
    assert ran == ["after"]
    assert missing.status_code == 404
    assert big.startswith("HTTP/1.1 413")


def test_a_receiver_that_raises_gets_500_without_its_text() -> None:
    """The exception's text (which may quote what was posted) never reaches the answer."""

    def broken(request: HttpRequest) -> HttpAnswer:
        raise RuntimeError("secret-ish detail")

    with HealthServer(HealthState(), None, "127.0.0.1", 0) as server:
        server.add_route("/hook", broken)
        answer = httpx.post(f"{server.url}/hook", content=b"x", timeout=5)
    assert answer.status_code == 500
    assert "secret-ish" not in answer.text


def test_https_with_tls_cert_and_key(tmp_path: Path) -> None:
    """``tls_cert`` (chain and key in one PEM, as the emulator CA writes it): HTTPS, TLS 1.2+."""
    ca = EmulatorCA(tmp_path / "ca")
    with HealthServer(HealthState(), None, "127.0.0.1", 0, tls_cert=str(ca.cert_file)) as server:
        server.add_route("/notifications/graph", echo)
        assert server.url.startswith("https://")
        with httpx.Client(verify=ca.client_context(), trust_env=False) as client:
            ready = client.get(f"{server.url}/readyz", timeout=5)
            posted = client.post(f"{server.url}/notifications/graph?q=ok", content=b"", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
    assert ready.status_code == 200
    assert posted.text == "ok"


class FakeScheduler:
    def __init__(self) -> None:
        self.healthy: list[tuple[str, bool]] = []
        self.requests: list[tuple[str, bool]] = []

    def set_healthy(self, name: str, healthy: bool) -> None:
        self.healthy.append((name, healthy))

    def request_poll(self, name: str, *, urgent: bool = True) -> None:
        self.requests.append((name, urgent))


def test_channel_watch_logs_once_per_change_and_moves_the_safety_net() -> None:
    """Degraded → logged once however often reported, interval back to the configured one, a
    catch-up poll for what the broken channel missed; connected → the longer interval again."""
    metrics, health, scheduler = Metrics(process_collectors=False), HealthState(), FakeScheduler()
    health.register_mailbox("orders", 60)
    watch = ChannelWatch(metrics, health, scheduler)  # type: ignore[arg-type]
    connected = ChannelStatus(state=ChannelState.CONNECTED)
    with capture_logs() as logs:
        watch.state_changed("graph_webhook", "orders", connected)
        for n in range(5):
            broken = ChannelStatus(state=ChannelState.DEGRADED, reason=f"refused ({n})")
            watch.state_changed("graph_webhook", "orders", broken)
        watch.state_changed("graph_webhook", "orders", connected)
    events: list[Any] = [(e["event"], e.get("reason")) for e in logs]
    assert events == [
        ("notifications.connected", None),
        ("notifications.degraded", "refused (0)"),
        ("notifications.connected", None),
    ]
    assert scheduler.healthy == [("orders", True), ("orders", False), ("orders", True)]
    # A catch-up (not urgent): no notification said mail is there, and a whole stream's
    # mailboxes break at once; the polls that notifications ask for go first.
    assert scheduler.requests == [("orders", False)]
