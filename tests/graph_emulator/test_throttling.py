"""Exchange Online's throttling of Graph mail requests (graph/throttling.py; issue 12, point 5):
429 ``ApplicationThrottled`` past 4 concurrent requests per app and mailbox, and past the request
budget of a 10-minute window, in the shape of ../shared/graph-samples/throttling-429.http.txt."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from tests.graph_emulator.conftest import ALICE, BOB, CLIENT_ID, READER_ID, Call
from tests.graph_emulator.direct import SAMPLES_DIR, sample, samples_available

INBOX = f"users/{ALICE}/mailFolders/inbox"
RETRY_AFTER = re.compile(r"^\d+\.\d{3}$")  # fractional seconds, as the documented 429
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")  # innerError.date without offset
# Without ../shared/graph-samples this skips elsewhere and fails in CI (which always has them).
needs_samples = pytest.mark.skipif(
    not samples_available() and not os.environ.get("CI"), reason="../shared/graph-samples"
)


def assert_throttled(response: httpx.Response, message: str) -> float:
    """The documented 429 shape; returns its Retry-After in seconds."""
    assert response.status_code == 429
    assert RETRY_AFTER.match(response.headers["Retry-After"])
    error = response.json()["error"]
    assert (error["code"], error["message"]) == ("ApplicationThrottled", message)
    inner = error["innerError"]
    assert DATE.match(inner["date"])
    assert inner["request-id"] == response.headers["request-id"]
    assert (inner["code"], inner["status"]) == ("429", "429")
    return float(response.headers["Retry-After"])


def concurrently(call: Call, requests: list[tuple[str, str]]) -> list[httpx.Response]:
    """Send (client id, path) requests at once, each on its own thread."""
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(call, "GET", path, client_id=app) for app, path in requests]
        return [f.result() for f in futures]


def test_mailbox_concurrency_past_four(graph: GraphEmulator, call: Call) -> None:
    """Five concurrent requests of one app to one mailbox: four answered, one 429
    MailboxConcurrency (a latency fault holds the four in flight)."""
    graph.faults.add("latency", mailbox=ALICE, probability=1.0, delay=0.5)
    responses = concurrently(call, [(CLIENT_ID, INBOX)] * 5)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 200, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert_throttled(refused, "Application is over its MailboxConcurrency limit.")
    assert graph.throttle.counters() == {"mailbox_concurrency": 1}
    logged = [r for r in graph.request_log if r.status == 429]
    assert [(r.mailbox, r.error_code) for r in logged] == [(ALICE, "ApplicationThrottled")]


def test_concurrency_is_per_app_and_mailbox(graph: GraphEmulator, call: Call) -> None:
    """Four to Alice, one to Bob and one by another app, at once: nobody is refused."""
    graph.faults.add("latency", probability=1.0, delay=0.3)
    requests = [(CLIENT_ID, INBOX)] * 4
    requests += [(CLIENT_ID, f"users/{BOB}/mailFolders/inbox"), (READER_ID, INBOX)]
    assert [r.status_code for r in concurrently(call, requests)] == [200] * 6


def test_budget_per_window(graph: GraphEmulator, call: Call) -> None:
    """Past the budget of the window: 429 with Retry-After = the time left in it; other mailboxes
    and apps keep their own budget; the next window answers again."""
    now = [1000.0]
    graph.throttle.clock = lambda: now[0]
    graph.throttle.budget = 3
    assert [call("GET", INBOX).status_code for _ in range(3)] == [200, 200, 200]
    now[0] += 60
    retry = assert_throttled(call("GET", INBOX), "Application is over its MailboxRequests limit.")
    assert retry == 540.0
    assert call("GET", f"users/{BOB}/mailFolders/inbox").status_code == 200
    assert call("GET", INBOX, client_id=READER_ID).status_code == 200
    now[0] += 540
    assert call("GET", INBOX).status_code == 200
    assert graph.throttle.counters() == {"budget": 1}


def test_budget_is_off_by_default() -> None:
    """A GraphEmulator has no request budget unless given one; concurrency is Exchange's 4."""
    emulator = GraphEmulator(None)
    assert (emulator.throttle.budget, emulator.throttle.concurrency) == (None, 4)
    assert emulator.throttle.window == 600.0
    limited = GraphEmulator(None, request_budget=10_000, mailbox_concurrency=None)
    assert (limited.throttle.budget, limited.throttle.concurrency) == (10_000, None)


@needs_samples
def test_429_has_the_documented_shape(graph: GraphEmulator, call: Call) -> None:
    """The members of throttling-429.http.txt's error and innerError, and its Retry-After form."""
    documented = sample("throttling-429.http.txt")["error"]
    text = (SAMPLES_DIR / "throttling-429.http.txt").read_text(encoding="utf-8")
    documented_retry = re.search(r"^Retry-After: (\S+)$", text, re.MULTILINE)
    assert documented_retry is not None
    assert RETRY_AFTER.match(documented_retry.group(1))
    assert DATE.match(documented["innerError"]["date"])
    graph.throttle.budget = 1
    call("GET", INBOX)
    response = call("GET", INBOX)
    assert_throttled(response, "Application is over its MailboxRequests limit.")
    error = response.json()["error"]
    assert set(error) == set(documented)
    assert set(documented["innerError"]) <= set(error["innerError"])
