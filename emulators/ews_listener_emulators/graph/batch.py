"""``POST /v1.0/$batch``: JSON batching as Graph documents it (concepts/json-batching.md;
../shared/graph-samples/batch-mixed-statuses.http.txt, batch-dependson.request.http.txt).

The body is ``{"requests": [{"id", "method", "url", "headers"?, "body"?, "dependsOn"?}, …]}``, at
most 20 of them (more: 400 for the whole batch, as are a missing or repeated ``id``, a
``dependsOn`` naming no request of the batch, and a cycle). The answer is 200 with
``{"responses": [{"id", "status", "headers", "body"?}, …]}``, one per request, in request order.

Requests run one after the other, in the order given except that a request runs after the ones
it ``dependsOn``; one whose dependency failed (status >= 400) is not run and answers 424.

Each request goes through the whole pipeline of a request of its own (``_handler.GraphHandler``):
the outer request's token authenticates it, its role and the app's mailbox scope are checked,
fault rules and throttling apply to it on its own (a 429 inside is that response's status and
``Retry-After`` while the batch answers 200), its JSON answer is validated against the OpenAPI
description, and it has its own entry in the request log. ``_Part`` is that handler without a
socket: it reads the request from the batch and keeps the answer instead of sending it. A
dropped-connection fault inside drops the batch's connection, as the one connection breaks.

A JSON body is given as JSON; another (the MIME of ``$value``) base64-encoded, as Graph does.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPMessage
from typing import Any

from ews_listener_emulators.graph._contract import GraphAnswer, GraphError
from ews_listener_emulators.graph._handler import GraphHandler

__all__ = ["MAX_REQUESTS", "serve"]

#: "JSON batch requests are currently limited to 20 individual requests" (json-batching.md).
MAX_REQUESTS = 20
#: Headers of a part's answer that belong to the HTTP message, not to the response object.
_HOP_HEADERS = frozenset({"content-length", "connection", "transfer-encoding"})


@dataclass(frozen=True)
class _Request:
    """One entry of ``requests``, checked."""

    id: str
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    depends_on: tuple[str, ...]


class _Dropped(Exception):
    """A part's drop fault: the batch's connection goes."""


def serve(outer: GraphHandler, body: bytes) -> GraphAnswer | None:
    """The answer to a ``$batch`` POST; None when a fault dropped the connection."""
    if isinstance(outer, _Part):
        raise GraphError(400, "BadRequest", "A batch request cannot contain another batch.")
    requests = _parse(body)
    by_id: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    for request in _ordered(requests):
        blocker = next((d for d in request.depends_on if d in failed), None)
        if blocker is not None:
            response = _failed_dependency(request, blocker)
        else:
            try:
                response = _run(outer, request)
            except _Dropped:
                outer._record["error_code"] = "ConnectionDropped"
                outer._log(0)
                outer.drop_connection()
                return None
        if response["status"] >= 400:
            failed.add(request.id)
        by_id[request.id] = response
    return GraphAnswer(200, json={"responses": [by_id[r.id] for r in requests]})


def _bad(message: str) -> GraphError:
    return GraphError(400, "BadRequest", message)


def _parse(body: bytes) -> list[_Request]:
    try:
        payload = json.loads(body or b"null")
    except ValueError as exc:
        raise _bad(f"Unable to read JSON request payload: {exc}") from None
    entries = payload.get("requests") if isinstance(payload, dict) else None
    if not isinstance(entries, list) or not entries:
        raise _bad("Invalid batch payload format: a non-empty 'requests' array is required.")
    if len(entries) > MAX_REQUESTS:
        raise _bad(
            f"Invalid batch payload format: {len(entries)} requests, at most {MAX_REQUESTS} are "
            "allowed in a batch."
        )
    requests = [_request(entry, index) for index, entry in enumerate(entries)]
    ids = [r.id for r in requests]
    for request in requests:
        if ids.count(request.id) > 1:
            raise _bad(f"Invalid batch payload format: the id '{request.id}' is repeated.")
        unknown = [d for d in request.depends_on if d not in ids]
        if unknown:
            raise _bad(
                f"Invalid batch payload format: request '{request.id}' depends on "
                f"'{unknown[0]}', which is not in the batch."
            )
    return requests


def _request(entry: Any, index: int) -> _Request:
    if not isinstance(entry, dict):
        raise _bad(f"Invalid batch payload format: requests[{index}] is not an object.")
    fields = {k.lower(): v for k, v in entry.items()}
    ident, method, url = (_text(fields, name, index) for name in ("id", "method", "url"))
    headers = fields.get("headers") or {}
    depends = fields.get("dependson") or []
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _bad(f"Invalid batch payload format: the headers of request '{ident}'.")
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        raise _bad(f"Invalid batch payload format: the dependsOn of request '{ident}'.")
    raw: bytes | None = None
    if "body" in fields:
        value = fields["body"]
        raw = value.encode() if isinstance(value, str) else json.dumps(value).encode()
    return _Request(ident, method.upper(), url, headers, raw, tuple(depends))


def _text(fields: Mapping[str, Any], name: str, index: int) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise _bad(f"Invalid batch payload format: requests[{index}] has no '{name}'.")
    return value


def _ordered(requests: list[_Request]) -> list[_Request]:
    """The order given, each request moved after the ones it depends on (a cycle: 400)."""
    done: set[str] = set()
    order: list[_Request] = []
    pending = list(requests)
    while pending:
        ready = next((r for r in pending if set(r.depends_on) <= done), None)
        if ready is None:
            raise _bad("Invalid batch payload format: the dependsOn of the requests form a cycle.")
        pending.remove(ready)
        done.add(ready.id)
        order.append(ready)
    return order


def _failed_dependency(request: _Request, blocker: str) -> dict[str, Any]:
    body = {
        "error": {
            "code": "FailedDependency",
            "message": f"The request depends on request '{blocker}', which failed.",
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
            },
        }
    }
    return {
        "id": request.id,
        "status": 424,
        "headers": {"Content-Type": "application/json"},
        "body": body,
    }


def _run(outer: GraphHandler, request: _Request) -> dict[str, Any]:
    if request.body is not None and not any(k.lower() == "content-type" for k in request.headers):
        # json-batching.md: "If a body is included with the request, the headers object must
        # contain a value for Content-Type."
        return {
            "id": request.id,
            "status": 400,
            "headers": {"Content-Type": "application/json"},
            "body": _error_body("BadRequest", "A Content-Type header is required with a body."),
        }
    url = request.url.lstrip("/")
    part = _Part(outer, request, f"/v1.0/{url}")
    part.serve()
    status, headers, raw = part.answer
    response: dict[str, Any] = {
        "id": request.id,
        "status": status,
        "headers": {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS},
    }
    if raw:
        kind = headers.get("Content-Type", "")
        response["body"] = (
            json.loads(raw)
            if kind.startswith("application/json")
            else base64.b64encode(raw).decode()
        )
    return response


def _error_body(code: str, message: str) -> dict[str, Any]:
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": str(uuid.uuid4()),
    }
    return {"error": {"code": code, "message": message, "innerError": inner}}


class _Part(GraphHandler):
    """One request of a batch, served by the Graph handler's pipeline without a socket."""

    def __init__(self, outer: GraphHandler, request: _Request, path: str) -> None:
        # Not BaseHTTPRequestHandler.__init__, which would serve a connection: a part borrows the
        # batch's server (for the emulator) and reads its request from the batch.
        self.server = outer.server
        self.connection = outer.connection
        self.client_address = outer.client_address
        self.request_version = outer.request_version
        self.command = request.method
        self.path = path
        headers = HTTPMessage()
        for name, value in request.headers.items():
            if name.lower() not in _HOP_HEADERS and name.lower() != "authorization":
                headers[name] = value
        # Every request of a batch is authenticated with the batch's own token.
        headers["Authorization"] = outer.headers.get("Authorization") or ""
        headers["Content-Length"] = str(len(request.body or b""))
        self.headers = headers
        self.rfile = io.BytesIO(request.body or b"")
        self.wfile = io.BytesIO()
        self.answer: tuple[int, dict[str, str], bytes] = (500, {}, b"")
        self._status = 500
        self._headers: dict[str, str] = {}

    def serve(self) -> None:
        self._handle()

    # What GraphHandler sends is kept instead.

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status, self._headers = code, {}

    def send_header(self, keyword: str, value: str) -> None:
        self._headers[keyword] = value

    def end_headers(self) -> None:
        self.answer = (self._status, dict(self._headers), b"")

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        if self._cut_after:  # a drop fault in the middle of the answer
            raise _Dropped
        self.answer = (status, {"Content-Type": content_type, **(headers or {})}, body)

    def drop_connection(self) -> None:
        raise _Dropped
