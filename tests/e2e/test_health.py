"""The running daemon's /metrics, /healthz and /readyz, and `ews-listener health`, end to end."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.e2e.conftest import World, stop, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readiness_follows_the_token_server_and_metrics_show_the_work(world: World) -> None:
    """Token server down: /readyz turns red with the reason, the daemon lives on, then green."""
    world.tokens.token_lifetime = 4  # renewed every couple of seconds: an outage shows at once
    world.ews.add_mailbox("orders@contoso.com")
    port = _free_port()
    config = world.config(
        {"orders": {"address": "orders@contoso.com", "credential": "sales", "interval": 1}},
        extra=f"http_port = {port}",
    )
    base = f"http://127.0.0.1:{port}"
    daemon = world.daemon(config)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(world.synced, 30, "the first sync")
        wait_for(ready, 30, "/readyz to turn green")
        world.deliver("orders@contoso.com", "hello")
        wait_for(lambda: len(world.receipts_log()) == 1, 30, "the message")
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        for name in (
            'ews_listener_messages_handled_total{handler="receipts",mailbox="orders"} 1.0',
            "ews_listener_poll_duration_seconds_bucket",
            "ews_listener_last_successful_poll_timestamp_seconds",
            "ews_listener_pending_messages",
            "ews_listener_token_requests_total",
            'ews_listener_ews_requests_total{operation="SyncFolderItems",outcome="ok"}',
        ):
            assert name in metrics, name
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        ok = world.cli("health", "--port", str(port))
        assert ok.returncode == 0, ok.stdout + ok.stderr

        world.tokens.go_down()
        wait_for(lambda: not ready(), 30, "/readyz to turn red")
        body = httpx.get(f"{base}/readyz", timeout=5).text
        assert "orders" in body
        red = world.cli("health", "--port", str(port))
        assert red.returncode == 1
        assert daemon.poll() is None  # still running
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200

        world.tokens.come_back()
        wait_for(ready, 60, "/readyz to turn green again")
        world.deliver("orders@contoso.com", "after the outage")
        wait_for(lambda: len(world.receipts_log()) == 2, 60, "the message after the outage")
    finally:
        out = stop(daemon)
    assert daemon.returncode == 0, out[-3000:]
