"""One token request in flight per credential: no stampede."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.auth import RetryPolicy, build_provider
from tests.auth.conftest import CLIENT_ID, credential


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize("method", ["basic", "body"])
def test_hundred_concurrent_requests_one_token_request(
    tokens: TokenServer, ca: EmulatorCA, method: str
) -> None:
    """100 concurrent get_token calls cause 1 token request; a second only after the margin."""
    clock = Clock()
    provider = build_provider(
        "sales",
        credential(tokens, ca, auth_method=method),
        renew_before=300,
        retry=RetryPolicy(initial_delay=0),
        clock=clock,
    )
    start = threading.Barrier(100)

    def call(_: int) -> str:
        start.wait()
        return provider.get_token().token

    with ThreadPoolExecutor(100) as pool:
        results = set(pool.map(call, range(100)))
    assert len(results) == 1
    assert tokens.request_count(CLIENT_ID) == 1

    clock.now += timedelta(seconds=3600 - 300 - 1)  # just inside the margin's edge
    with ThreadPoolExecutor(100) as pool:
        assert set(pool.map(lambda _: provider.get_token().token, range(100))) == results
    assert tokens.request_count(CLIENT_ID) == 1

    clock.now += timedelta(seconds=2)  # past the renewal point
    start.reset()
    with ThreadPoolExecutor(100) as pool:
        renewed = set(pool.map(call, range(100)))
    assert len(renewed) == 1
    assert renewed != results
    assert tokens.request_count(CLIENT_ID) == 2


def test_concurrent_force_refresh_collapses(tokens: TokenServer, ca: EmulatorCA) -> None:
    """Many threads forcing a refresh at once (a burst of 401s) share one new token."""
    provider = build_provider("sales", credential(tokens, ca), retry=RetryPolicy(initial_delay=0))
    provider.get_token()
    tokens.set_delay(0.2)  # keep the first refresh in flight while the others queue
    start = threading.Barrier(20)

    def call(_: int) -> str:
        start.wait()
        return provider.get_token(force_refresh=True).token

    with ThreadPoolExecutor(20) as pool:
        results = set(pool.map(call, range(20)))
    tokens.set_delay(0)
    assert len(results) == 1
    assert tokens.request_count(CLIENT_ID) == 2
