"""Readiness rules, the health HTTP server over real sockets, and check_health()."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from listener.observability.health import (
    HealthServer,
    HealthState,
    _Server,
    check_health,
    health_url,
    poll_recorder,
)
from listener.observability.metrics import Metrics

T0 = 1_800_000_000.0  # registration time of every mailbox in the table
INTERVAL = 60.0  # window = 180 s


@dataclass(frozen=True)
class Case:
    name: str
    successes: tuple[float, ...]  # seconds after T0
    failures: tuple[float, ...]
    now: float
    state: str
    ready: bool
    reason: str | None = None


CASES = [
    Case("fresh, nothing yet", (), (), 10, "starting", True),
    Case("fresh, first poll failed", (), (5,), 10, "failing", False, "last error: boom"),
    Case("never polled past the window", (), (), 181, "stale", False, "within 180s of start"),
    Case("polled just now", (100,), (), 110, "ok", True),
    Case("success at the window's edge", (100,), (), 280, "ok", True),
    Case("success just outside", (100,), (), 281, "stale", False, "181s ago (window 180s)"),
    Case("failing but inside window", (100,), (150,), 200, "ok", True),
    Case("failing past window", (100,), (150, 250), 300, "stale", False, "last error: boom"),
    Case("recovered after failures", (100, 250), (150,), 300, "ok", True),
    Case("old failure, later success, stale", (100, 200), (150,), 400, "stale", False, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_readiness_table(case: Case) -> None:
    """Each history gives the documented state, readiness and reason."""
    health = HealthState()
    health.register_mailbox("sales", INTERVAL, at=T0)
    events = [(t, True) for t in case.successes] + [(t, False) for t in case.failures]
    for at, ok in sorted(events):
        if ok:
            health.poll_succeeded("sales", T0 + at)
        else:
            health.poll_failed("sales", "boom", T0 + at)
    ready, details = health.report(T0 + case.now)
    assert details["mailboxes"]["sales"]["state"] == case.state
    assert ready is case.ready
    if case.ready:
        assert details["not_ready"] == {}
    else:
        assert "sales" in details["not_ready"]
        if case.reason is not None:
            assert case.reason in details["not_ready"]["sales"]
        else:
            assert "last error" not in details["not_ready"]["sales"]


def test_disabled_mailboxes_never_block() -> None:
    """A disabled mailbox is listed as disabled and does not make the process unready."""
    health = HealthState()
    health.register_mailbox("sales", 60, at=T0)
    health.register_mailbox("old", 60, at=T0)
    health.set_disabled("old")
    health.poll_succeeded("sales", T0 + 1)
    ready, details = health.report(T0 + 100)
    assert ready
    assert details["mailboxes"]["old"]["state"] == "disabled"


def test_one_bad_mailbox_makes_the_process_unready() -> None:
    """Readiness needs every enabled mailbox; the body names the bad one only."""
    health = HealthState()
    health.register_mailbox("good", 10, at=T0)
    health.register_mailbox("bad", 10, at=T0)
    health.poll_succeeded("good", T0 + 1)
    health.poll_failed("bad", "AADSTS7000215: Invalid client secret provided.", T0 + 1)
    ready, details = health.report(T0 + 2)
    assert not ready
    assert list(details["not_ready"]) == ["bad"]
    assert "AADSTS7000215" in details["not_ready"]["bad"]


def test_failure_reasons_are_redacted() -> None:
    """The error kept for /readyz has tokens masked."""
    health = HealthState()
    health.register_mailbox("m", 10, at=T0)
    health.poll_failed("m", "401 for Authorization: Bearer eyJabc.eyJdef.sig", T0 + 1)
    _, details = health.report(T0 + 2)
    assert "eyJabc" not in json.dumps(details)


def test_liveness_follows_the_heartbeat() -> None:
    """Alive before any heartbeat, alive while fresh, not alive once it is too old."""
    beat: list[float | None] = [None]
    health = HealthState(heartbeat_timeout=30, heartbeat=lambda: beat[0])
    assert health.live(now=100.0)[0]
    beat[0] = 100.0
    assert health.live(now=129.0)[0]
    alive, details = health.live(now=131.0)
    assert not alive
    assert details["status"] == "scheduler stalled"
    health.beat(at=130.0)
    assert health.live(now=131.0)[0]


@dataclass
class _Result:
    mailbox: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def test_poll_recorder_feeds_health_and_metrics() -> None:
    """The runner callback updates readiness and the poll metrics together."""
    health = HealthState()
    metrics = Metrics(process_collectors=False)
    health.register_mailbox("sales", 60)
    record = poll_recorder(health, metrics)
    record(_Result("sales", error="token endpoint down"), 0.5)
    ready, details = health.report()
    assert not ready
    assert "token endpoint down" in details["not_ready"]["sales"]
    record(_Result("sales"), 0.2)
    assert health.report()[0]
    text = metrics.exposition().decode()
    assert 'ews_listener_polls_total{mailbox="sales",outcome="error"} 1.0' in text
    assert 'ews_listener_polls_total{mailbox="sales",outcome="ok"} 1.0' in text


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, HealthState, Metrics]]:
    health = HealthState(heartbeat_timeout=30)
    metrics = Metrics(process_collectors=False)
    with HealthServer(health, metrics, "127.0.0.1", 0) as server:
        yield server, health, metrics


def _get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_endpoints_over_http(served: tuple[HealthServer, HealthState, Metrics]) -> None:
    """/healthz 200, /readyz 503 then 200 with a JSON body, /metrics text, 404 elsewhere."""
    server, health, metrics = served
    health.register_mailbox("sales", 60)
    health.poll_failed("sales", "connection refused")
    metrics.handled("sales", "log")

    status, _, body = _get(f"{server.url}/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "alive"

    status, ctype, body = _get(f"{server.url}/readyz")
    assert (status, ctype.split(";")[0]) == (503, "application/json")
    assert "connection refused" in json.loads(body)["not_ready"]["sales"]

    health.poll_succeeded("sales")
    status, _, body = _get(f"{server.url}/readyz")
    assert status == 200
    assert json.loads(body)["mailboxes"]["sales"]["state"] == "ok"

    status, ctype, body = _get(f"{server.url}/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert b'ews_listener_messages_handled_total{handler="log",mailbox="sales"} 1.0' in body

    assert _get(f"{server.url}/nope")[0] == 404


def test_healthz_fails_when_the_heartbeat_stops(
    served: tuple[HealthServer, HealthState, Metrics],
) -> None:
    """A heartbeat older than the timeout turns /healthz into 503."""
    server, health, _ = served
    health.beat(at=0.0)  # monotonic zero: long ago
    status, _, body = _get(f"{server.url}/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "scheduler stalled"


def test_check_health(served: tuple[HealthServer, HealthState, Metrics]) -> None:
    """check_health reads /readyz: True when ready, False with the reason otherwise."""
    server, health, _ = served
    health.register_mailbox("sales", 60)
    health.poll_failed("sales", "AADSTS700016: application not found")
    ok, message = check_health(server.url, timeout=5)
    assert not ok
    assert "503" in message
    assert "AADSTS700016" in message
    health.poll_succeeded("sales")
    ok, message = check_health(f"{server.url}/readyz", timeout=5)
    assert ok, message


def test_check_health_unreachable() -> None:
    """Nothing listening: False and a message saying so, quickly."""
    with HealthServer(HealthState()) as server:
        url = server.url
    ok, message = check_health(url, timeout=2)
    assert not ok
    assert "cannot connect" in message
    assert check_health("ftp://x", timeout=1)[0] is False


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:9464/readyz"),
        ("", "http://127.0.0.1:9464/readyz"),
        ("::", "http://[::1]:9464/readyz"),
        ("10.1.2.3", "http://10.1.2.3:9464/readyz"),
    ],
)
def test_health_url(host: str, url: str) -> None:
    """Wildcard bind addresses map to loopback; IPv6 hosts get brackets."""
    assert health_url(host, 9464, "/readyz") == url


def test_serves_on_ipv6_loopback() -> None:
    """An IPv6 host binds an AF_INET6 socket."""
    try:
        server = HealthServer(HealthState(), host="::1").start()
    except OSError as e:  # no IPv6 in this sandbox
        pytest.skip(f"IPv6 loopback unavailable: {e}")
    try:
        assert _get(f"{server.url}/healthz")[0] == 200
    finally:
        server.stop()


def test_connections_wait_in_the_backlog_while_the_server_is_busy() -> None:
    """A burst of connections (Graph posting many subscriptions' notifications at once) queues
    in the kernel until the server accepts it. With socketserver's backlog of 5 the seventh SYN
    was dropped, and the client tried again a second later, then three."""
    server = _Server(("127.0.0.1", 0), HealthServer(HealthState()))  # accepting nothing yet
    clients: list[socket.socket] = []
    try:
        for _ in range(40):
            clients.append(socket.create_connection(server.server_address[:2], timeout=2))
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert len(clients) == 40
