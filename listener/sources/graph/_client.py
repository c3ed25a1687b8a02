"""A small Microsoft Graph client on ``httpx``: tokens, throttling, ``$batch``, typed errors.

Why not ``msgraph-sdk``: it is async-only and pulls ~400 MB of generated code for the dozen mail
requests we send. What this module does, and which Graph behaviour each part answers:

- **Tokens**: a bearer token from the mailbox's ``TokenProvider`` on every request; a 401 gets
  ``invalidate`` and one retry with a fresh token, then :class:`Unauthorized` (a revoked or
  clock-skewed token heals; a second 401 in a row means the app's consent or role is wrong).
- **Immutable ids**: every request, and every ``$batch`` part, sends
  ``Prefer: IdType="ImmutableId"``; without it an id changes when the message moves, and the ids
  the pipeline stored (pending, dead letters) would go stale after our own ``move``.
- **Throttling** (concepts/throttling-limits.md, "Outlook service limits"): Exchange Online
  allows 4 concurrent requests per app and mailbox and answers ``429 ApplicationThrottled``
  ("MailboxConcurrency") past that, or after a request budget, with ``Retry-After``. A
  :class:`MailboxGate` per mailbox address, shared by every folder and source of that mailbox in
  this process, holds at most 4 requests and one pause: a 429/503 pauses the whole mailbox for the
  server's ``Retry-After`` (never less than ``min_back_off``, so a storm without the header is no
  hot loop). A pause that would last more than ``max_inline_wait`` is not slept through: it raises
  :class:`Throttled` with ``back_off`` and the scheduler backs the mailbox off.
- **Errors** map to ``listener.errors``: 401 → Unauthorized, 403 → Denied, 404 → Gone,
  410 / ``syncStateNotFound`` → SyncStateLost, 429/503 → Throttled, 5xx / network / timeouts →
  Unavailable; ``code`` carries Graph's ``error.code`` for logs. Tokens never reach a message, a
  log line or a ``repr`` (the ``Authorization`` header is built per request and not kept).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from listener._tls import trust_context
from listener.abc import TokenProvider
from listener.errors import (
    Denied,
    Gone,
    ListenerError,
    SourceError,
    SyncStateLost,
    Throttled,
    TokenError,
    Unauthorized,
    Unavailable,
)
from listener.sources._spool import spool

__all__ = [
    "MAX_BATCH",
    "GraphClient",
    "MailboxGate",
    "MailboxGates",
    "SubRequest",
    "SubResponse",
    "error_for",
    "http2_available",
]

#: "JSON batch requests are currently limited to 20 individual requests" (json-batching.md).
MAX_BATCH = 20
#: Exchange Online: 4 concurrent requests per app and mailbox (throttling-limits.md).
MAILBOX_CONCURRENCY = 4
PREFER_IMMUTABLE = 'IdType="ImmutableId"'
#: Graph codes that say the delta token is dead (delta-query-overview.md, "Synchronization
#: reset"; ``resyncRequired`` is what directory delta answers for the same).
_SYNC_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_THROTTLE_STATUSES = frozenset({429, 503})


def http2_available() -> bool:
    """Whether ``h2`` is importable (httpx's ``http2=True`` needs it)."""
    try:
        import h2  # noqa: F401, PLC0415 - probing an optional dependency
    except ImportError:
        return False
    return True


class MailboxGate:
    """At most ``MAILBOX_CONCURRENCY`` requests in flight for one mailbox, and its one pause."""

    def __init__(self, address: str, *, concurrency: int = MAILBOX_CONCURRENCY) -> None:
        self.address = address
        self.slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self.in_flight = 0  # for tests and metrics
        self.peak = 0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def remaining_pause(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - time.monotonic())

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self.slots:
            with self._lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            try:
                yield
            finally:
                with self._lock:
                    self.in_flight -= 1


class MailboxGates:
    """The gates of a process, by mailbox address (case-insensitive)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, MailboxGate] = {}

    def __call__(self, address: str) -> MailboxGate:
        key = address.strip().lower()
        with self._lock:
            gate = self._gates.get(key)
            if gate is None:
                gate = self._gates[key] = MailboxGate(key)
            return gate


@dataclass(frozen=True)
class SubRequest:
    """One request of a ``$batch``: ``url`` relative to the service root (``/users/…``)."""

    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubResponse:
    """One answer of a ``$batch``, mapped back to its request."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self) -> SourceError:
        return error_for(self.status, self.body, self.headers)


def _graph_error(body: Any) -> tuple[str | None, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    return (str(code) if code else None), str(error.get("message") or "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None  # an HTTP date: rare on Graph; the minimum back-off applies
    return None


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> SourceError:
    """The typed error of a Graph answer ``status`` with ODataError ``body``."""
    code, message = _graph_error(body)
    text = f"HTTP {status} {code or ''}: {message}".replace(" :", ":").strip()
    logged = code or f"HTTP {status}"
    if status == 410 or (code or "").lower() in _SYNC_CODES:
        return SyncStateLost(text, code=code or "HTTP 410")
    if status in _THROTTLE_STATUSES:
        return Throttled(text, code=logged, back_off=_retry_after(headers))
    if status == 401:
        return Unauthorized(
            f"{text}; Graph rejected the access token even after a fresh one: check the app's "
            "Mail.ReadWrite application permission and admin consent, and this host's clock",
            code=logged,
        )
    if status == 403:
        return Denied(
            f"{text}; the app may not open this mailbox: check its Mail.* role and any "
            "RBAC for Applications / application access policy scoping it",
            code=logged,
        )
    if status == 404:
        return Gone(text, code=logged)
    if status >= 500:
        return Unavailable(text, code=logged)
    return SourceError(text, code=logged, transient=False)


class GraphClient:
    """Graph requests for the mailboxes of one credential at one endpoint, over one ``httpx``
    connection pool. Thread-safe; ``close()`` ends the pool."""

    def __init__(
        self,
        *,
        endpoint: str,
        credential: str,
        tokens: TokenProvider,
        gates: MailboxGates,
        max_connections: int = 4,
        ca_bundle: str | None = None,
        timeout: float = 60.0,
        max_inline_wait: float = 30.0,
        min_back_off: float = 1.0,
        max_attempts: int = 4,
        stop: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.credential = credential
        self._tokens = tokens
        self._gates = gates
        self.max_inline_wait = max_inline_wait
        self.min_back_off = min_back_off
        self.max_attempts = max_attempts
        self._stop = stop or threading.Event()
        self._credential_slots = threading.BoundedSemaphore(max_connections)
        self.http2 = http2_available()
        self._http = httpx.Client(
            http2=self.http2,
            verify=trust_context(ca_bundle),
            trust_env=False,  # no proxy or CA from the environment (listener._tls)
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )
        self.on_request: Callable[[str, str], None] | None = None
        self.on_back_off: Callable[[str, float], None] | None = None

    def __repr__(self) -> str:
        return f"GraphClient({self.endpoint!r}, credential={self.credential!r})"

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.endpoint}/{path.lstrip('/')}"

    # --- one request -----------------------------------------------------------------------

    def _observe(self, operation: str, outcome: str) -> None:
        if self.on_request is not None:
            self.on_request(operation, outcome)

    def _back_off(self, gate: MailboxGate, seconds: float) -> None:
        gate.pause(seconds)
        if self.on_back_off is not None:
            self.on_back_off(self.credential, seconds)

    def _wait_for(self, gate: MailboxGate) -> None:
        wait = gate.remaining_pause()
        if wait > self.max_inline_wait:
            raise Throttled(
                f"mailbox {gate.address} is throttled by Graph for another {wait:.0f} s",
                code="MailboxPaused",
                back_off=wait,
            )
        if self._stop.is_set() or (wait > 0 and self._stop.wait(wait)):
            raise Unavailable("shutting down: no new Graph request", code="Stopping")

    def _token(self, *, force: bool = False) -> str:
        try:
            return self._tokens.get_token(force_refresh=force).token
        except TokenError as e:
            code = f"TokenError:{e.aadsts or e.error or 'unavailable'}"
            raise Unavailable(str(e), code=code) from e
        except ListenerError as e:
            raise Unavailable(str(e), code=type(e).__name__) from e

    def _send(
        self,
        mailbox: str,
        operation: str,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request under the mailbox's gate, retrying 401 once and throttling within
        ``max_inline_wait``; returns a 2xx response (open when ``stream``) or raises."""
        gate = self._gates(mailbox)
        fresh_token = False
        throttled_attempts = 0
        while True:
            self._wait_for(gate)
            token = self._token(force=fresh_token)
            sent = _with_prefer(headers, {"Authorization": f"Bearer {token}"})
            request = self._http.build_request(method, self.url(url), json=json_body, headers=sent)
            with gate.slot(), self._credential_slots:
                try:
                    response = self._http.send(request, stream=stream)
                except httpx.TimeoutException as e:
                    self._observe(operation, "timeout")
                    raise Unavailable(f"Graph {operation} timed out: {e}", code="Timeout") from e
                except httpx.HTTPError as e:
                    self._observe(operation, type(e).__name__)
                    raise Unavailable(
                        f"Graph {operation} failed: {type(e).__name__}: {e}", code=type(e).__name__
                    ) from e
            if response.is_success:
                self._observe(operation, "ok")
                return response
            if stream:
                response.read()
                response.close()
            body = _json(response)
            code, _ = _graph_error(body)
            self._observe(operation, code or str(response.status_code))
            if response.status_code == 401 and not fresh_token:
                # Graph rejected a token we believed valid (revoked, or clock skew): forget it and
                # try once more with a new one (tests/graph_source: test_401_recovers_once).
                self._tokens.invalidate(token)
                fresh_token = True
                continue
            error = error_for(response.status_code, body, response.headers)
            if isinstance(error, Throttled):
                throttled_attempts += 1
                pause = max(
                    error.back_off or 0.0, self.min_back_off * 2 ** (throttled_attempts - 1)
                )
                self._back_off(gate, pause)
                if throttled_attempts >= self.max_attempts or pause > self.max_inline_wait:
                    raise Throttled(str(error), code=error.code, back_off=pause)
                continue
            raise error

    def request(
        self,
        mailbox: str,
        operation: str,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the JSON answer (None for 204)."""
        response = self._send(mailbox, operation, method, url, json_body=json_body, headers=headers)
        return _json(response)

    def open_stream(self, mailbox: str, operation: str, url: str) -> IO[bytes]:
        """``GET url`` streamed into a spooled file (``listener.sources._spool``)."""
        response = self._send(mailbox, operation, "GET", url, stream=True)
        try:
            return spool(response.iter_bytes(64 * 1024))
        except httpx.HTTPError as e:
            raise Unavailable(
                f"Graph {operation} broke off: {type(e).__name__}: {e}", code=type(e).__name__
            ) from e
        finally:
            response.close()

    def pages(
        self,
        mailbox: str,
        operation: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every page of a collection, following ``@odata.nextLink``."""
        next_url: str | None = url
        while next_url:
            page = self.request(mailbox, operation, "GET", next_url, headers=headers)
            yield page
            next_url = page.get("@odata.nextLink")

    # --- $batch ------------------------------------------------------------------------------

    def batch(
        self, mailbox: str, operation: str, requests: Sequence[SubRequest]
    ) -> list[SubResponse]:
        """Every request in ``$batch`` POSTs of up to 20; answers in request order.

        The POSTs of one call go out side by side (the mailbox's gate still holds at most 4 in
        flight): a batch of 100 messages costs one round trip of latency, not five. A part
        answered 429/503 is sent again (with the others that were) after its ``Retry-After``, at
        most ``max_attempts`` times; any other answer is returned as it is.
        """
        chunks = [
            list(range(start, min(start + MAX_BATCH, len(requests))))
            for start in range(0, len(requests), MAX_BATCH)
        ]
        results: dict[int, SubResponse] = {}
        if len(chunks) <= 1:
            for chunk in chunks:
                results.update(self._batch_chunk(mailbox, operation, requests, chunk))
        else:
            with ThreadPoolExecutor(
                max_workers=min(len(chunks), MAILBOX_CONCURRENCY),
                thread_name_prefix="graph-batch",
            ) as pool:
                # Each POST in a copy of the caller's context: its log lines keep mailbox and
                # poll_id (structlog's contextvars).
                def send(job: tuple[contextvars.Context, list[int]]) -> dict[int, SubResponse]:
                    context, chunk = job
                    return context.run(self._batch_chunk, mailbox, operation, requests, chunk)

                jobs = [(contextvars.copy_context(), chunk) for chunk in chunks]
                for answers in pool.map(send, jobs):
                    results.update(answers)
        return [results[i] for i in range(len(requests))]

    def _batch_chunk(
        self, mailbox: str, operation: str, requests: Sequence[SubRequest], chunk: list[int]
    ) -> dict[int, SubResponse]:
        results: dict[int, SubResponse] = {}
        todo = chunk
        attempt = 0
        while todo:
            attempt += 1
            answers = self._batch_once(mailbox, operation, [(i, requests[i]) for i in todo])
            retry: list[int] = []
            pause = 0.0
            for index in todo:
                answer = answers[index]
                if answer.status in _THROTTLE_STATUSES and attempt < self.max_attempts:
                    retry.append(index)
                    pause = max(pause, _retry_after(answer.headers) or self.min_back_off)
                results[index] = answer
            if retry:
                self._back_off(self._gates(mailbox), pause)
                if pause > self.max_inline_wait:
                    break  # their 429 stays their answer; the next call waits or raises
            todo = retry
        return results

    def _batch_once(
        self, mailbox: str, operation: str, parts: Sequence[tuple[int, SubRequest]]
    ) -> dict[int, SubResponse]:
        ids = {f"{index}-{uuid.uuid4().hex[:8]}": index for index, _ in parts}
        by_index = {index: key for key, index in ids.items()}
        body = {"requests": [_part(by_index[index], request) for index, request in parts]}
        answer = self.request(mailbox, f"$batch:{operation}", "POST", "$batch", json_body=body)
        out: dict[int, SubResponse] = {}
        for response in (answer or {}).get("responses", []):
            index = ids.get(str(response.get("id")))
            if index is not None:
                out[index] = SubResponse(
                    status=int(response.get("status", 500)),
                    body=response.get("body"),
                    headers=response.get("headers") or {},
                )
        for index, _ in parts:
            if index not in out:  # a gateway that lost a part: transient for that item
                out[index] = SubResponse(500, {"error": {"code": "MissingBatchResponse"}})
        return out


def _part(request_id: str, request: SubRequest) -> dict[str, Any]:
    headers = _with_prefer(request.headers, {})
    part: dict[str, Any] = {
        "id": request_id,
        "method": request.method,
        "url": "/" + request.url.lstrip("/"),
        "headers": headers,
    }
    if request.body is not None:
        part["body"] = request.body
        headers.setdefault("Content-Type", "application/json")
    return part


def _with_prefer(headers: Mapping[str, str] | None, base: dict[str, str]) -> dict[str, str]:
    """``headers`` over ``base`` with ``IdType="ImmutableId"`` joined to any ``Prefer`` they
    give (one header, comma-separated: a second ``Prefer`` must not replace the id type)."""
    out = dict(base)
    preferences = [PREFER_IMMUTABLE]
    for name, value in (headers or {}).items():
        if name.lower() == "prefer":
            preferences.append(value)
        else:
            out[name] = value
    out["Prefer"] = ", ".join(preferences)
    return out


def _json(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None
