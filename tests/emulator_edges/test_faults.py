"""Every fault kind surfacing through the real exchangelib as the exception it maps it to."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorInvalidSyncStateData,
    ErrorServerBusy,
    ErrorTimeoutExpired,
    MalformedResponseError,
    UnauthorizedError,
)
from exchangelib.protocol import FailFast

from ews_listener_emulators.faults import KINDS, FaultEngine, render
from ews_listener_emulators.feed import SampleFactory
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

from .conftest import (
    GET_INBOX,
    MAILBOX,
    OTHER,
    AccountFactory,
    fast_fault_tolerance,
    soap_post,
)


def _records(emulator: EwsEmulator, operation: str, count: int) -> list[tuple[int, str | None]]:
    """The first ``count`` log records of ``operation``, waiting for them: the server appends a
    record after the response went out, so the client can be faster than the log."""
    records: list[tuple[int, str | None]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        log = list(emulator.request_log)
        records = [(r.status, r.error_code) for r in log if r.operation == operation]
        if len(records) >= count:
            break
        threading.Event().wait(0.005)
    return records[:count]


def test_server_busy_back_off_is_honoured_and_retried(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """ErrorServerBusy with BackOffMilliseconds: FaultTolerance waits that long, then succeeds."""
    emulator.faults.add("server_busy", operation="GetFolder", back_off_ms=200)
    started = time.monotonic()
    assert account(fast_fault_tolerance()).inbox.name == "Inbox"
    assert time.monotonic() - started >= 0.2
    assert _records(emulator, "GetFolder", 2) == [(500, "ErrorServerBusy"), (200, None)]
    assert emulator.faults.counters() == {"server_busy": 1}


def test_server_busy_fail_fast_carries_back_off(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """With FailFast, exchangelib raises ErrorServerBusy with the server's back-off in seconds."""
    emulator.faults.add("server_busy", back_off_ms=1500)
    with pytest.raises(ErrorServerBusy) as caught:
        _ = account(FailFast()).inbox
    assert caught.value.back_off == 1.5


def test_max_concurrency_variant_has_no_back_off(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """The MaxConcurrency ErrorServerBusy has no BackOffMilliseconds: exchangelib uses its own."""
    emulator.faults.add("max_concurrency", mailbox=MAILBOX)
    with pytest.raises(ErrorServerBusy) as caught:
        _ = account(FailFast(), retry_wait=0.25).inbox
    assert caught.value.back_off == 0.25  # exchangelib's RETRY_WAIT, not a server value


def test_connection_count_rule(emulator: EwsEmulator, account: AccountFactory) -> None:
    """ErrorExceededConnectionCount reaches the caller once exchangelib's pool is at its minimum."""
    emulator.faults.add("connection_count", count=1)
    with pytest.raises(ErrorExceededConnectionCount):
        _ = account(FailFast()).inbox
    assert emulator.faults.counters()["connection_count"] == 1


def test_standing_connection_limit(emulator: EwsEmulator, account: AccountFactory) -> None:
    """With the per-mailbox limit reached, exchangelib gets ErrorExceededConnectionCount."""
    emulator.faults.connection_limit = 0  # every slot taken, as if 27 requests were in flight
    with pytest.raises(ErrorExceededConnectionCount):
        _ = account(FailFast()).inbox
    emulator.faults.connection_limit = 27
    assert account(FailFast()).inbox.name == "Inbox"
    assert emulator.faults.counters()["connection_limit"] == 1


def test_http_500_surfaces_as_malformed_response(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """A bare HTTP 500 is not retried by exchangelib: MalformedResponseError."""
    emulator.faults.add("http_500")
    with pytest.raises(MalformedResponseError):
        _ = account(fast_fault_tolerance()).inbox


def test_http_503_retry_after_is_honoured(emulator: EwsEmulator, account: AccountFactory) -> None:
    """HTTP 503 with Retry-After: FaultTolerance waits that long and retries."""
    emulator.faults.add("http_503", retry_after=1)
    started = time.monotonic()
    assert account(fast_fault_tolerance(max_wait=5)).inbox.name == "Inbox"
    assert time.monotonic() - started >= 1.0
    assert _records(emulator, "GetFolder", 1)[0][0] == 503


def test_http_503_fail_fast(emulator: EwsEmulator, account: AccountFactory) -> None:
    """HTTP 503 with FailFast: exchangelib re-raises it as ErrorServerBusy (its own back-off)."""
    emulator.faults.add("http_503", retry_after=7)
    with pytest.raises(ErrorServerBusy, match="HTTP 503"):
        _ = account(FailFast()).inbox
    assert _records(emulator, "GetFolder", 1) == [(503, "ErrorServerBusy")]


def test_latency_delays_but_answers(emulator: EwsEmulator, account: AccountFactory) -> None:
    """Added latency slows the request down and it still succeeds."""
    emulator.faults.add("latency", delay=0.3)
    started = time.monotonic()
    assert account(FailFast()).inbox.name == "Inbox"
    assert time.monotonic() - started >= 0.3
    assert emulator.faults.counters() == {"latency": 1}


def test_drop_mid_response_is_a_connection_error(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """A connection cut after part of the body: exchangelib raises ErrorTimeoutExpired."""
    emulator.faults.add("drop", after_bytes=20)
    with pytest.raises(ErrorTimeoutExpired):
        _ = account(FailFast()).inbox


def test_drop_is_seen_as_incomplete_body_by_httpx(
    emulator: EwsEmulator, token_server: TokenServer
) -> None:
    """The drop sends headers and a partial body, then closes (not a clean empty response)."""
    emulator.faults.add("drop", after_bytes=10)
    assert emulator.ca is not None
    with httpx.Client(verify=emulator.ca.client_context()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            soap_post(client, emulator, token_server, GET_INBOX)
        assert soap_post(client, emulator, token_server, GET_INBOX).status_code == 200


@pytest.mark.parametrize("kind", ["expire_tokens", "revoke_tokens"])
def test_token_faults_are_401(emulator: EwsEmulator, account: AccountFactory, kind: str) -> None:
    """Expired or revoked tokens: HTTP 401, which exchangelib's FailFast reports as unauthorized."""
    emulator.faults.add(kind)
    with pytest.raises(UnauthorizedError):
        _ = account(FailFast()).inbox
    expected = "token_expired" if kind == "expire_tokens" else "invalid_token"
    assert _records(emulator, "GetFolder", 1) == [(401, expected)]


def test_invalid_sync_state(emulator: EwsEmulator, account: AccountFactory) -> None:
    """The next SyncFolderItems treats its state as invalid: ErrorInvalidSyncStateData."""
    emulator.deliver(MAILBOX, SampleFactory(1).message(MAILBOX))
    inbox = account(FailFast()).inbox
    emulator.faults.add("invalid_sync_state")
    with pytest.raises(ErrorInvalidSyncStateData):
        list(inbox.sync_items())
    assert len(list(inbox.sync_items())) == 1


def test_rules_scope_by_mailbox(emulator: EwsEmulator, account: AccountFactory) -> None:
    """A rule for one mailbox leaves the others alone."""
    emulator.faults.add("http_500", mailbox=OTHER, count=5)
    assert account(FailFast()).inbox.name == "Inbox"
    with pytest.raises(MalformedResponseError):
        _ = account(FailFast(), OTHER).inbox
    assert emulator.faults.rules()[0].count == 4


def test_probability_is_reproducible_with_a_seed() -> None:
    """The same seed and request sequence inject the same faults."""

    def run() -> list[bool]:
        engine = FaultEngine(seed=42)
        engine.add("server_busy", probability=0.3)
        return [engine.decide("GetItem", MAILBOX) is not None for _ in range(200)]

    first = run()
    assert first == run()
    assert 30 < sum(first) < 90


def test_count_rules_expire_and_latency_combines() -> None:
    """A count rule fires that many times; a latency rule adds its delay to the winning fault."""
    engine = FaultEngine()
    engine.add("latency", delay=0.5, count=2)
    engine.add("http_503", operation="GetItem", count=1)
    fault = engine.decide("GetItem", MAILBOX)
    assert fault is not None
    assert (fault.kind, fault.status, fault.delay) == ("http", 503, 0.5)
    latency_only = engine.decide("GetItem", MAILBOX)
    assert latency_only is not None
    assert latency_only.kind == "latency"
    assert engine.decide("GetItem", MAILBOX) is None
    assert engine.rules() == []
    assert engine.counters() == {"latency": 2, "http_503": 1}


def test_invalid_rules_are_refused() -> None:
    """Unknown kinds, count together with probability and bad parameters raise ValueError."""
    engine = FaultEngine()
    with pytest.raises(ValueError, match="unknown fault kind"):
        engine.add("meteor")
    with pytest.raises(ValueError, match="not both"):
        engine.add("http_500", count=1, probability=0.5)
    with pytest.raises(ValueError, match="parameters"):
        engine.add("http_500", colour="red")


def test_admit_and_release_count_in_flight() -> None:
    """The standing limit refuses past ``connection_limit`` and frees on release."""
    engine = FaultEngine(connection_limit=2)
    assert engine.admit(MAILBOX) is None
    assert engine.admit(MAILBOX.upper()) is None
    refused = engine.admit(MAILBOX)
    assert refused is not None
    assert refused.code == "ErrorExceededConnectionCount"
    engine.release(MAILBOX)
    with engine.slot(MAILBOX) as again:
        assert again is None
        assert engine.in_flight(MAILBOX) == 2
    assert engine.in_flight(MAILBOX) == 1


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("latency", "drop")])
def test_rendered_faults_have_exchange_shapes(kind: str) -> None:
    """render() gives Exchange's status and body shape for each HTTP-level fault kind."""
    engine = FaultEngine()
    engine.add(kind)
    fault = engine.decide("SyncFolderItems", MAILBOX)
    assert fault is not None
    rendered = render(fault, "SyncFolderItems")
    expected_status = {
        "http_503": 503,
        "expire_tokens": 401,
        "revoke_tokens": 401,
        "invalid_sync_state": 200,
    }.get(kind, 500)
    assert rendered.status == expected_status
    if kind == "server_busy":
        assert b'<t:Value Name="BackOffMilliseconds">1000</t:Value>' in rendered.body
    if kind == "max_concurrency":
        assert b"BackOffMilliseconds" not in rendered.body
        assert b'Name="Policy">MaxConcurrency<' in rendered.body
    if kind == "invalid_sync_state":
        assert b"ErrorInvalidSyncStateData" in rendered.body
    if kind == "expire_tokens":
        assert rendered.headers["x-ms-diagnostics"].startswith("2000002;")


def test_random_throttling_is_ridden_out_by_fault_tolerance(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """30 % ErrorServerBusy on GetItem: every fetch still succeeds; the counters tell how often."""
    factory = SampleFactory(11)
    ids = [emulator.deliver(MAILBOX, factory.message(MAILBOX)) for _ in range(15)]
    acc = account(fast_fault_tolerance())
    emulator.faults.add("server_busy", operation="GetItem", probability=0.3, back_off_ms=5)
    subjects = [acc.inbox.get(id=item_id).subject for item_id in ids]
    assert all(subjects)
    busy = emulator.faults.counters()["server_busy"]
    assert busy > 0
    records = _records(emulator, "GetItem", len(ids) + busy)
    assert sum(1 for status, _ in records if status == 500) == busy
