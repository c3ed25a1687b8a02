"""Liveness and readiness: ``HealthState``, the ``/healthz`` ``/readyz`` ``/metrics`` server,
and ``check_health`` behind ``ews-listener health``.

Readiness rule (per enabled mailbox; disabled ones are listed and never block):

* ``ok``: a poll succeeded within ``3 * interval`` of now.
* ``starting``: no poll has succeeded yet, none has failed yet, and ``3 * interval`` has not passed
  since the mailbox was registered. It counts as **ready**: the first poll is simply in flight,
  and Docker's ``start_period`` / systemd's ``READY=1`` already cover start-up. A first poll that
  *fails* makes the mailbox ``failing`` at once, so a wrong secret shows on ``/readyz`` right away
  instead of after three intervals.
* ``failing``: never succeeded and has failed (the last error, redacted, is the reason).
* ``stale``: the last success is older than the window (reason: the last error, or "no poll").

Push notifications (issue 15) never decide readiness: a mailbox whose channel is ``degraded`` is
polled at its configured interval, so it stays ready, and the reason shows under ``degraded`` and
in the mailbox's ``notifications`` entry (state, reason, seconds since the last event).

Liveness (``/healthz``): the process answers, and the scheduler's heartbeat is younger than
``heartbeat_timeout``. Before the first heartbeat the process counts as alive (still starting).

Why a small ``ThreadingHTTPServer`` and not the emulator's ``LoopbackServer``: the product must
not import the emulator, and three GET endpoints need nothing more. Each request gets a thread;
no request does I/O beyond reading in-memory state. Notification channels that are pushed to
(Graph's webhook) mount POST routes on it (``add_route``); with ``tls_cert``/``tls_key`` it
serves HTTPS.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import structlog
from prometheus_client.exposition import choose_encoder

from listener.notify import ChannelState, ChannelStatus, HttpAnswer, HttpRequest, Receiver
from listener.observability.metrics import Metrics
from listener.observability.redaction import redact

__all__ = [
    "MAX_POST_BYTES",
    "READY_WINDOW_FACTOR",
    "HealthServer",
    "HealthState",
    "PollOutcome",
    "check_health",
    "health_url",
    "poll_recorder",
]

#: A mailbox is ready while its last successful poll is younger than this many intervals.
READY_WINDOW_FACTOR = 3.0
_MAX_REASON = 500
log = structlog.get_logger("listener.http")

#: A notification POST larger than this is refused (Graph sends at most a few hundred KB).
MAX_POST_BYTES = 4 * 1024 * 1024


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Mailbox:
    interval: float
    registered_at: float
    enabled: bool = True
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    channel: ChannelStatus | None = None  # None: no push channel for this mailbox


class HealthState:
    """Thread-safe record of each mailbox's polls and of the scheduler's heartbeat.

    Times are Unix seconds (``time.time()``); every method takes an explicit ``at``/``now`` so
    tests drive the clock. ``heartbeat`` is an optional callable returning the ``time.monotonic()``
    of the scheduler's last beat (``lambda: scheduler.heartbeat``); :meth:`beat` records one too.
    """

    def __init__(
        self,
        *,
        heartbeat_timeout: float = 60.0,
        heartbeat: Callable[[], float | None] | None = None,
        window_factor: float = READY_WINDOW_FACTOR,
    ) -> None:
        self._lock = threading.Lock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._heartbeat_timeout = heartbeat_timeout
        self._heartbeat_source = heartbeat
        self._last_beat: float | None = None
        self._window_factor = window_factor

    # -- mailboxes ---------------------------------------------------------------------------

    def register_mailbox(self, name: str, interval_s: float, *, at: float | None = None) -> None:
        """Watch ``name``, polled every ``interval_s`` seconds (registering again resets it)."""
        with self._lock:
            self._mailboxes[name] = _Mailbox(float(interval_s), time.time() if at is None else at)

    def poll_succeeded(self, name: str, at: float | None = None) -> None:
        with self._lock:
            box = self._box(name)
            box.last_success = time.time() if at is None else at

    def poll_failed(self, name: str, reason: str, at: float | None = None) -> None:
        """Record a failed poll; ``reason`` is redacted and shortened before it is kept."""
        text = redact(str(reason))[:_MAX_REASON]
        with self._lock:
            box = self._box(name)
            box.last_failure = time.time() if at is None else at
            box.last_error = text

    def set_channel(self, name: str, status: ChannelStatus) -> None:
        """The state of ``name``'s notification channel (its reason is redacted)."""
        status = ChannelStatus(
            state=status.state,
            reason=redact(status.reason)[:_MAX_REASON],
            last_event=status.last_event,
        )
        with self._lock:
            self._box(name).channel = status

    def channel_event(self, name: str, at: float | None = None) -> None:
        """A notification for ``name`` arrived (``at`` in ``time.monotonic()`` seconds)."""
        with self._lock:
            box = self._box(name)
            if box.channel is not None:
                box.channel = ChannelStatus(
                    state=box.channel.state,
                    reason=box.channel.reason,
                    last_event=time.monotonic() if at is None else at,
                )

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        with self._lock:
            self._box(name).enabled = not disabled

    def _box(self, name: str) -> _Mailbox:
        box = self._mailboxes.get(name)
        if box is None:
            # A poll reported for a mailbox nobody registered: watch it with a neutral interval
            # rather than raise inside the scheduler's callback.
            box = self._mailboxes[name] = _Mailbox(60.0, time.time())
        return box

    def report(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)``: ``details`` is the ``/readyz`` JSON body."""
        now = time.time() if now is None else now
        with self._lock:
            boxes = {name: _Mailbox(**vars(box)) for name, box in self._mailboxes.items()}
        mailboxes: dict[str, Any] = {}
        not_ready: dict[str, str] = {}
        degraded: dict[str, str] = {}
        monotonic = time.monotonic()
        for name, box in sorted(boxes.items()):
            state, reason = self._judge(box, now)
            mailboxes[name] = {
                "state": state,
                "interval_s": box.interval,
                "window_s": box.interval * self._window_factor,
                "last_success": _iso(box.last_success),
                "last_failure": _iso(box.last_failure),
                "last_error": box.last_error,
            }
            if reason is not None:
                not_ready[name] = reason
            channel = box.channel
            if channel is not None:
                age = None if channel.last_event is None else monotonic - channel.last_event
                mailboxes[name]["notifications"] = {
                    "state": str(channel.state),
                    "reason": channel.reason or None,
                    "last_event_age_s": None if age is None else round(max(0.0, age), 3),
                }
                if channel.state == ChannelState.DEGRADED:
                    degraded[name] = (
                        f"notifications degraded, polling every {box.interval:g}s: "
                        f"{channel.reason or 'no reason given'}"
                    )
        ready = not not_ready
        return ready, {
            "status": "ready" if ready else "not ready",
            "checked_at": _iso(now),
            "not_ready": not_ready,
            "degraded": degraded,
            "mailboxes": mailboxes,
        }

    def _judge(self, box: _Mailbox, now: float) -> tuple[str, str | None]:
        """(state, reason it is not ready or None)."""
        if not box.enabled:
            return "disabled", None
        window = box.interval * self._window_factor
        if box.last_success is not None and now - box.last_success <= window:
            return "ok", None
        failed_since = box.last_failure is not None and (
            box.last_success is None or box.last_failure >= box.last_success
        )
        error = box.last_error if failed_since else None
        if box.last_success is None:
            if error is not None:
                return "failing", f"no successful poll yet; last error: {error}"
            if now - box.registered_at <= window:
                return "starting", None
            return "stale", f"no successful poll within {window:g}s of start"
        age = now - box.last_success
        why = f"last successful poll {age:.0f}s ago (window {window:g}s)"
        return "stale", f"{why}; last error: {error}" if error else why

    # -- liveness ----------------------------------------------------------------------------

    def beat(self, at: float | None = None) -> None:
        """The scheduler loop is alive (``at`` in ``time.monotonic()`` seconds)."""
        with self._lock:
            self._last_beat = time.monotonic() if at is None else at

    def live(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """``(alive, details)`` from the freshest heartbeat (``now`` in monotonic seconds)."""
        now = time.monotonic() if now is None else now
        beats = [self._last_beat]
        if self._heartbeat_source is not None:
            beats.append(self._heartbeat_source())
        known = [b for b in beats if b is not None]
        if not known:
            return True, {"status": "alive", "heartbeat_age_s": None}
        age = max(0.0, now - max(known))
        alive = age <= self._heartbeat_timeout
        return alive, {
            "status": "alive" if alive else "scheduler stalled",
            "heartbeat_age_s": round(age, 3),
            "heartbeat_timeout_s": self._heartbeat_timeout,
        }


class PollOutcome(Protocol):
    """What :func:`poll_recorder` reads from a poll result (``listener.poller.PollResult``)."""

    @property
    def mailbox(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def error(self) -> str | None: ...


def poll_recorder(
    health: HealthState, metrics: Metrics | None = None
) -> Callable[[PollOutcome, float], None]:
    """A ``MailboxRunner.on_result`` callback feeding both the readiness state and the metrics."""

    def record(result: PollOutcome, seconds: float) -> None:
        now = time.time()
        if result.ok:
            health.poll_succeeded(result.mailbox, now)
        else:
            health.poll_failed(result.mailbox, result.error or "poll failed", now)
        if metrics is not None:
            metrics.poll_finished(result.mailbox, ok=result.ok, seconds=seconds, at=now)

    return record


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "ews-listener"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # Probes hit these endpoints every few seconds: one log line each would drown the rest.
        return

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        owner = self.server.owner
        if path == "/healthz":
            alive, body = owner.health.live()
            self._json(200 if alive else 503, body)
        elif path == "/readyz":
            ready, body = owner.health.report()
            self._json(200 if ready else 503, body)
        elif path == "/metrics" and owner.metrics is not None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(owner.metrics.registry), content_type)
        else:
            self._json(404, {"error": "not found", "endpoints": owner.endpoints()})

    def do_POST(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        receiver = self.server.owner.routes.get(path)
        if receiver is None:
            self._json(404, {"error": "not found", "endpoints": self.server.owner.endpoints()})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_POST_BYTES:
            self.close_connection = True
            self._send(413, b"", "text/plain; charset=utf-8")
            return
        body = self.rfile.read(length) if length else b""
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items() if v}
        request = HttpRequest(path=path, query=query, headers=dict(self.headers), body=body)
        try:
            answer = receiver(request)
        except Exception:
            # Never the exception's text: it may quote what the sender posted.
            log.error("http.receiver_failed", path=path, exc_info=True)
            answer = HttpAnswer(status=500)
        self._send(answer.status, answer.body, answer.content_type)
        if answer.after is not None:
            try:
                self.wfile.flush()
                answer.after()
            except Exception:
                log.error("http.receiver_after_failed", path=path, exc_info=True)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()
        self._send(status, data, "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's listen backlog is 5. Graph posts the notifications of many subscriptions at
    # once: past the backlog the kernel drops the SYN, the client tries again a second later, and
    # a notification not answered within Graph's 3 s is retried minutes later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: HealthServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        health: HealthState,
        metrics: Metrics | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.routes: dict[str, Receiver] = {}
        self._tls: ssl.SSLContext | None = None
        if tls_cert:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2  # Graph: TLS 1.2 or later
            self._tls.load_cert_chain(tls_cert, tls_key or None)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def endpoints(self) -> list[str]:
        fixed = ["/healthz", "/readyz"] + (["/metrics"] if self.metrics is not None else [])
        return fixed + sorted(self.routes)

    def add_route(self, path: str, receiver: Receiver) -> None:
        """Answer POSTs to ``path`` with ``receiver`` (a notification channel's)."""
        self.routes[path.rstrip("/") or "/"] = receiver

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread; raises ``OSError`` when the port is taken."""
        if self._server is None:
            self._server = _Server(self._address, self)
            if self._tls is not None:
                # The handshake happens in the request's thread (at its first read), not in the
                # accept loop, where one slow client would hold up every other.
                self._server.socket = self._tls.wrap_socket(
                    self._server.socket, server_side=True, do_handshake_on_connect=False
                )
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="health-http",
                daemon=True,
            )
            self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        url = health_url(self._address[0], self.port)
        return "https" + url[4:] if self._tls is not None else url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = None
            self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def health_url(host: str, port: int, path: str = "") -> str:
    """The URL a local client uses for a server bound to ``host:port`` (wildcards → loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def check_health(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """GET ``url`` (``/readyz`` appended when it has no path): ``(ok, one-line summary)``.

    Proxies from the environment are ignored on purpose: the check targets the listener itself,
    usually on 127.0.0.1, and ``http_proxy`` set for the container must not reroute it.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        return False, f"unsupported URL scheme {parts.scheme!r}: use http://host:port/readyz"
    if parts.path in ("", "/"):
        parts = parts._replace(path="/readyz")
    target = urllib.parse.urlunsplit(parts)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(target, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (OSError, ValueError) as e:
        return False, f"{target}: cannot connect: {e}"
    return status == 200, f"{target}: {status} {_summary(body)}"


def _summary(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    if not isinstance(data, dict):
        return str(data)[:200]
    not_ready = data.get("not_ready")
    if isinstance(not_ready, dict) and not_ready:
        return "; ".join(f"{name}: {why}" for name, why in sorted(not_ready.items()))
    return str(data.get("status", "ok"))
