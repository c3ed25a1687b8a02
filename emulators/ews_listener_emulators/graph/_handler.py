"""The request handler of the Graph emulator: one keep-alive connection, one request at a time.

A request goes through, in this order (each step can end it as Graph would):
``Content-Length`` (400/411/413 before a byte of the body is read, ``_http.QuietHandler``) →
Bearer token: signature, expiry, audience ``https://graph.microsoft.com`` or Graph's app id
(401 ``InvalidAuthenticationToken`` + ``WWW-Authenticate``) → body (read only now) → path below
``/v1.0`` (400 ``BadRequest`` for a segment nothing serves, 405 for a method) → query options
(400) → a ``Mail.*`` role, ``Mail.ReadWrite`` for anything but GET (403 ``ErrorAccessDenied``) →
the user (404) → the app's mailbox scope, RBAC for Applications (403 ``ErrorAccessDenied``) →
injected faults (``faults``) → Exchange Online's throttling per app and mailbox (429,
``throttling``) → the resource (``folders``, ``users``, ``messages``) → schema validation of the
JSON answer (``$GRAPH_SCHEMA_DIR``) and of its OData annotations (the samples beside it,
``_annotations``) → request log. ``$batch`` (``batch``) sends each of its
requests through these steps on its own.

Every error body is Graph's ODataError: ``error.code``, ``error.message`` and ``error.innerError``
with ``date`` (no offset, as Graph writes it), ``request-id`` and ``client-request-id``, the same
two ids as the response headers of that name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ews_listener_emulators._http import QuietHandler
from ews_listener_emulators.graph._contract import (
    GraphAnswer,
    GraphError,
    GraphRequest,
    Route,
    match,
)
from ews_listener_emulators.graph.delta import sync_state_not_found
from ews_listener_emulators.graph.faults import GraphFault, fault_error
from ews_listener_emulators.graph.users import mailbox_for
from ews_listener_emulators.store import StoreError

if TYPE_CHECKING:
    from ews_listener_emulators.graph.server import GraphEmulator

__all__ = ["GraphHandler", "GraphRequestRecord", "parse_path", "parse_prefer"]

log = logging.getLogger("ews_listener_emulators.graph")

JSON_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
    "charset=utf-8"
)
READ_ROLES = frozenset({"Mail.Read", "Mail.ReadWrite"})
WRITE_ROLE = "Mail.ReadWrite"
ACCESS_DENIED = "Access is denied. Check credentials and try again."
_ERROR_SCHEMA = "#/components/responses/error/content/application~1json/schema"

#: System query options the mail resources understand (custom ones without ``$`` pass through).
_KNOWN_OPTIONS = frozenset(
    {
        "$select",
        "$top",
        "$skip",
        "$filter",
        "$orderby",
        "$count",
        "$expand",
        "$search",
        "$skiptoken",
        "$deltatoken",
        "$format",
    }
)

#: ``TokenRejected.category`` → Graph's message for its 401.
_TOKEN_MESSAGES = {
    "token_expired": "Lifetime validation failed, the token is expired.",
    "invalid_resource": "Invalid audience.",
    "invalid_signature": "Signature verification failed.",
    "invalid_token": "Access token validation failure.",
}

_NOT_ALLOWED = "Specified HTTP method is not allowed for the request uri."
_KEY = re.compile(r"^([^()]+)\((.*)\)$")


@dataclass(frozen=True)
class GraphRequestRecord:
    """One request as the Graph emulator saw it, for assertions and benchmarks."""

    operation: str | None  # the OpenAPI operationId, e.g. user_ListMailFolder
    mailbox: str | None
    method: str
    template: str | None  # the OpenAPI path, e.g. /users/{user-id}/mailFolders
    status: int
    duration: float
    schema_valid: bool | None  # None: validation off, or no schema for this answer
    error_code: str | None
    schema_error: str | None = None
    client_id: str | None = None
    request_id: str = ""


def parse_path(path: str) -> tuple[str, ...] | None:
    """The segments below ``/v1.0`` (URL-decoded; ``mailFolders('inbox')`` → two segments), or
    None when the path is not below ``/v1.0``."""
    parts = [part for part in path.split("/") if part]
    if not parts or parts[0].lower() != "v1.0":
        return None
    segments: list[str] = []
    for part in parts[1:]:
        decoded = unquote(part)
        key = _KEY.match(decoded)
        if key is None:
            segments.append(decoded)
            continue
        segments.append(key.group(1))
        value = key.group(2)
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1].replace("''", "'")
        segments.append(value)
    return tuple(segments)


def parse_prefer(values: list[str]) -> tuple[bool, int | None]:
    """``Prefer`` headers → (``IdType="ImmutableId"``, ``odata.maxpagesize``)."""
    immutable = False
    page_size: int | None = None
    for value in values:
        for preference in value.split(","):
            name, _, argument = preference.strip().partition("=")
            argument = argument.strip().strip('"')
            if name.strip().lower() == "idtype" and argument.lower() == "immutableid":
                immutable = True
            elif name.strip().lower() == "odata.maxpagesize" and argument.isdigit():
                page_size = int(argument) or None
    return immutable, page_size


class _Refused(Exception):
    """An answer decided by the HTTP layer (``GraphError`` is the resources' own)."""


class GraphHandler(QuietHandler):
    """One keep-alive connection to the Graph emulator."""

    _cut_after = 0  # > 0: send only this many bytes of the next answer, then drop (a fault)

    @property
    def emulator(self) -> GraphEmulator:
        owner: GraphEmulator = self.server.owner.owner  # type: ignore[attr-defined]
        return owner

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # --- one request ---------------------------------------------------------------------------

    def _handle(self) -> None:
        started = time.perf_counter()
        self._request_id = str(uuid.uuid4())
        self._client_request_id = self.headers.get("client-request-id") or self._request_id
        self._record: dict[str, Any] = {
            "operation": None,
            "mailbox": None,
            "method": self.command,
            "template": None,
            "schema_valid": None,
            "error_code": None,
            "client_id": None,
            "request_id": self._request_id,
        }
        self._started = started
        self._logged = False
        try:
            answer = self._serve(self.emulator)
        except GraphError as exc:
            answer = self._error(exc)
        if answer is None:  # refused by body_length: the status went out already
            return
        self._send(answer)

    def _serve(self, emulator: GraphEmulator) -> GraphAnswer | None:
        length = self.body_length(emulator.max_request_bytes)
        if length is None:
            self._log(self.refused)
            return None
        claims = self._authenticate(emulator, length)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        segments = parse_path(url.path)
        if segments is None:
            version = next((p for p in url.path.split("/") if p), "")
            raise GraphError(400, "BadRequest", f"Invalid version: {version}")
        if segments and segments[0].lower() == "subscriptions":
            return self._subscriptions(emulator, claims, segments[1:], body, url.query)
        if segments and segments[0].lower() == "$batch":
            self._record["operation"], self._record["template"] = "$batch", "/$batch"
            if len(segments) > 1 or self.command != "POST":
                raise GraphError(405, "Request_BadRequest", _NOT_ALLOWED)
            return emulator.serve_batch(self, body)
        route, params, user = self._route(emulator.routes, segments)
        self._record["operation"] = route.operation
        self._record["template"] = route.template
        query = self._query(url.query)
        roles = set(claims.get("roles") or ())
        if not roles & READ_ROLES or (self.command != "GET" and WRITE_ROLE not in roles):
            raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
        mailbox = mailbox_for(emulator.store, user)
        if mailbox is None:
            if not route.pattern:
                raise GraphError(
                    404,
                    "Request_ResourceNotFound",
                    f"Resource '{user}' does not exist or one of its queried reference-property "
                    "objects are not present.",
                )
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        self._record["mailbox"] = mailbox.address
        if not emulator.scopes.allowed(self._record["client_id"], mailbox.address):
            raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
        immutable, page_size = parse_prefer(self.headers.get_all("Prefer") or [])
        request = GraphRequest(
            method=self.command,
            segments=segments[2:],
            query=query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            store=emulator.store,
            mailbox=mailbox,
            base_url=emulator.url,
            user=user,
            can_write=WRITE_ROLE in roles,
            immutable_ids=immutable,
            max_page_size=page_size,
            params=params,
        )
        fault = emulator.faults.decide(route.operation, mailbox.address)
        if fault is not None and self._inject(emulator, fault, request):
            return None  # the connection was dropped before an answer
        try:
            with emulator.throttle.slot(self._record["client_id"], mailbox.address):
                if fault is not None and fault.kind == "latency":
                    # Inside the slot: a slow request holds its place, so the fifth concurrent
                    # one is refused (test_throttling.test_mailbox_concurrency_past_four).
                    time.sleep(fault.delay)
                answer = route.handler(request)
        except GraphError:
            raise
        except StoreError as exc:
            raise GraphError(400, exc.code, str(exc)) from None
        except Exception:
            log.exception("Graph emulator: %s %s failed", self.command, route.template)
            raise GraphError(
                500, "generalException", "General exception while processing."
            ) from None
        if immutable:
            answer.headers.setdefault("Preference-Applied", 'IdType="ImmutableId"')
        return answer

    def _inject(self, emulator: GraphEmulator, fault: GraphFault, request: GraphRequest) -> bool:
        """Act on an injected fault: raise its error answer, or drop the connection (True), or
        let the request go on (False: latency, or a drop in the middle of the answer)."""
        if fault.kind != "latency" and fault.delay:
            time.sleep(fault.delay)
        if fault.kind == "drop":
            self._record["error_code"] = "ConnectionDropped"
            if fault.after_bytes:
                # Mid-answer: the request runs (its effects happen, as when a real connection
                # breaks on the way back) and only the start of its answer is sent.
                self._cut_after = fault.after_bytes
                return False
            self._log(0)  # before the client can see the cut
            self.drop_connection()
            return True
        if fault.kind == "token_revoked":
            revoke = getattr(emulator.token_server, "revoke", None)
            if revoke is not None:
                revoke(self._record["client_id"])
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                _TOKEN_MESSAGES["invalid_token"],
                headers={"WWW-Authenticate": emulator.challenge()},
            )
        if fault.kind == "delta_token_invalidated":
            raise sync_state_not_found(request)
        error = fault_error(fault)
        if error is not None:
            raise error
        return False

    def _subscriptions(
        self,
        emulator: GraphEmulator,
        claims: Mapping[str, Any],
        segments: tuple[str, ...],
        body: bytes,
        raw_query: str,
    ) -> GraphAnswer:
        """``/subscriptions…``: not below ``users/{user}``; ``subscriptions.Subscriptions`` checks
        the role and, from the subscribed resource, the mailbox and the app's scope."""
        template, operation = emulator.subscriptions.route(self.command, segments)
        self._record["operation"] = operation
        self._record["template"] = template
        self._query(raw_query)
        immutable, _ = parse_prefer(self.headers.get_all("Prefer") or [])
        return emulator.subscriptions.serve(
            method=self.command,
            segments=segments,
            body=body,
            claims=claims,
            token=(self.headers.get("Authorization") or "").partition(" ")[2].strip(),
            base_url=emulator.url,
            immutable_ids=immutable,
        )

    def _authenticate(self, emulator: GraphEmulator, length: int) -> Mapping[str, Any]:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise _Refused("Access token is empty.")
            if emulator.token_server is None:
                return {"roles": sorted(READ_ROLES), "appid": None}
            try:
                claims = emulator.token_server.verify(token.strip(), audience=emulator.audiences)
            except Exception as exc:
                category = getattr(exc, "category", None)
                if category is None:
                    raise
                self._record["error_code"] = "InvalidAuthenticationToken"
                raise _Refused(
                    _TOKEN_MESSAGES.get(str(category), _TOKEN_MESSAGES["invalid_token"])
                ) from None
        except _Refused as refused:
            self.discard_body(length)  # in 64 KiB pieces, so the connection stays usable
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                str(refused),
                headers={"WWW-Authenticate": emulator.challenge()},
            ) from None
        self._record["client_id"] = claims.get("appid") or claims.get("azp")
        return claims

    def _route(
        self, routes: list[Route], segments: tuple[str, ...]
    ) -> tuple[Route, dict[str, str], str]:
        if not segments or segments[0].lower() != "users":
            raise GraphError(
                400,
                "BadRequest",
                f"Resource not found for the segment '{segments[0] if segments else ''}'.",
            )
        if len(segments) == 1:
            raise GraphError(501, "NotImplemented", "This operation target is not yet supported.")
        user, rest = segments[1], segments[2:]
        if not rest:  # users/{user} itself
            own = [r for r in routes if not r.pattern]
            route = next((r for r in own if r.method == self.command), None)
            if route is not None:
                return route, {}, user
            if own:
                raise GraphError(405, "Request_BadRequest", _NOT_ALLOWED)
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{user}'.")
        found = match(routes, self.command, rest)
        if found is not None:
            return found[0], found[1], user
        if any(r.pattern and r.match(r.method, rest) is not None for r in routes):
            raise GraphError(405, "Request_BadRequest", _NOT_ALLOWED)
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[-1]}'.")

    def _query(self, raw: str) -> dict[str, str]:
        query: dict[str, str] = {}
        for name, value in parse_qsl(raw, keep_blank_values=True):
            if name in query:
                raise GraphError(
                    400,
                    "BadRequest",
                    f"Query option '{name}' was specified more than once, but it must be "
                    "specified at most once.",
                )
            query[name] = value
        for name, value in query.items():
            if name.startswith("$") and name not in _KNOWN_OPTIONS:
                raise GraphError(
                    400,
                    "BadRequest",
                    f"The query specified in the URI is not valid. Query option '{name}' is not "
                    "allowed.",
                )
            if name in ("$top", "$skip") and not value.isdigit():
                raise GraphError(
                    400,
                    "BadRequest",
                    f"Invalid value '{value}' for {name} query option found. The {name} query "
                    "option requires a non-negative integer value.",
                )
            if name == "$count" and value.lower() not in ("true", "false"):
                raise GraphError(
                    400,
                    "BadRequest",
                    f"Invalid value '{value}' for $count query option found. Valid values are "
                    "'true', 'false'.",
                )
        return query

    # --- answers -------------------------------------------------------------------------------

    def _error(self, exc: GraphError) -> GraphAnswer:
        self._record["error_code"] = exc.code
        body = {
            "error": {
                "code": exc.code,
                "message": exc.message,
                "innerError": {
                    **exc.inner,
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": self._request_id,
                    "client-request-id": self._client_request_id,
                },
            }
        }
        return GraphAnswer(status=exc.status, json=body, headers=dict(exc.headers))

    def _send(self, answer: GraphAnswer) -> None:
        headers = {
            "request-id": self._request_id,
            "client-request-id": self._client_request_id,
            **answer.headers,
        }
        if answer.json is None and answer.raw is None:
            self._log(answer.status)
            self.send_response(answer.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if answer.raw is not None:
            self._log(answer.status)
            self.send_body(answer.status, answer.raw, answer.content_type, headers)
            return
        self._validate(answer)
        self._log(answer.status)
        data = json.dumps(answer.json, ensure_ascii=False, separators=(",", ":")).encode()
        content_type = (
            JSON_TYPE if answer.content_type == "application/json" else answer.content_type
        )
        headers["OData-Version"] = "4.0"
        self.send_body(answer.status, data, content_type, headers)

    def _validate(self, answer: GraphAnswer) -> None:
        """The answer against the OpenAPI description (``$GRAPH_SCHEMA_DIR``) and its OData
        annotations against the samples (``_annotations``); a violation of either is recorded
        as ``schema_valid`` False with ``schema_error``."""
        problems: list[str] = []
        checked = False
        schema = self.emulator.schema
        pointer = self._schema_pointer(answer) if schema is not None else None
        if schema is not None and pointer is not None:
            checked = True
            problem = schema.validate(answer.json, pointer)
            if problem is not None:
                problems.append(problem)
        annotations = self.emulator.annotations
        if annotations is not None:
            checked = True
            problems += annotations.check(answer.json, self.emulator.url)
        if not checked:
            return
        self._record["schema_valid"] = not problems
        if problems:
            self._record["schema_error"] = "\n".join(problems)
            log.warning(
                "Graph emulator: invalid %s %s answer: %s",
                self.command,
                self._record["template"],
                "; ".join(problems),
            )

    def _schema_pointer(self, answer: GraphAnswer) -> str | None:
        schema = self.emulator.schema
        pointer = answer.schema
        if pointer is None and answer.status >= 400:
            pointer = _ERROR_SCHEMA
        if pointer is None and schema is not None and self._record["template"] is not None:
            pointer = schema.response_pointer(self._record["template"], self.command, answer.status)
        return pointer

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        cut, self._cut_after = self._cut_after, 0
        if not cut:
            super().send_body(status, body, content_type, headers)
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body[: min(cut, max(len(body) - 1, 0))])
            self.wfile.flush()
        self.drop_connection()

    def _log(self, status: int) -> None:
        # Logged before the status line goes out: a client that reads the answer and then looks
        # at request_log must find its request there.
        if self._logged:
            return
        self._logged = True
        record = GraphRequestRecord(
            status=status, duration=time.perf_counter() - self._started, **self._record
        )
        self.emulator.request_log.append(record)
