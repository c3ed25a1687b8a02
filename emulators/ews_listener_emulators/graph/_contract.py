"""What the Graph HTTP layer hands a resource, and what a resource answers.

The server parses the request (path below ``/v1.0``, OData query options, ``Prefer``), checks the
token (audience, role, the app's mailbox scope), resolves ``users/{id | userPrincipalName}`` to a
mailbox, and calls the first ``Route`` whose method and pattern match. A resource raises
``GraphError`` for an error answer; the server writes it in the ODataError shape
(``error.code``, ``error.message``, ``error.innerError`` with ``request-id``, ``date``,
``client-request-id``) and records it in the request log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ews_listener_emulators.store import Mailbox, MailStore

__all__ = ["GraphAnswer", "GraphError", "GraphRequest", "Route", "match"]


@dataclass(frozen=True)
class GraphRequest:
    """One request to a mailbox, as a resource sees it."""

    method: str  # GET, POST, PATCH, DELETE
    segments: tuple[str, ...]  # the path after users/{user}/, URL-decoded; OData key syntax
    #                            (mailFolders('inbox')) already split to ("mailFolders", "inbox")
    query: Mapping[str, str]  # OData query options as sent: {"$select": "id,subject", ...}
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    store: MailStore
    mailbox: Mailbox
    base_url: str  # https://127.0.0.1:PORT/v1.0, for @odata.nextLink / deltaLink / context
    user: str  # the {user} segment as the client wrote it (links echo it back)
    can_write: bool  # the app holds Mail.ReadWrite (Mail.Read only: writes get 403)
    immutable_ids: bool = False  # Prefer: IdType="ImmutableId"
    max_page_size: int | None = None  # Prefer: odata.maxpagesize=N
    params: Mapping[str, str] = field(default_factory=dict)  # the pattern's {name} values

    def json(self) -> Any:
        """The body as JSON; a ``GraphError`` 400 when it is not."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError as e:
            raise GraphError(400, "BadRequest", f"Unable to read JSON request payload: {e}") from e


@dataclass
class GraphAnswer:
    """A resource's answer: a JSON body (``json``) or raw bytes (``raw``)."""

    status: int = 200
    json: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # A JSON pointer into the OpenAPI description for the body, e.g.
    # "#/components/schemas/microsoft.graph.message"; None: the server finds the operation's
    # response schema from the path template and method.
    schema: str | None = None


class GraphError(Exception):
    """An error answer in Graph's shape (``status``, ``error.code``, ``error.message``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        inner: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        # innerError members beyond date and the two request ids (the documented 429 has code,
        # message and status there: ../shared/graph-samples/throttling-429.http.txt).
        self.inner = dict(inner or {})


Handler = Callable[[GraphRequest], GraphAnswer]


@dataclass(frozen=True)
class Route:
    """``pattern`` is the path after users/{user}/, with {name} for a segment:
    ``"mailFolders/{folder}/messages"``. ``template`` is the OpenAPI path it answers, for schema
    validation and the request log's ``operation``."""

    method: str
    pattern: str
    handler: Handler
    template: str
    operation: str

    def match(self, method: str, segments: tuple[str, ...]) -> dict[str, str] | None:
        parts = self.pattern.split("/")
        if method != self.method or len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            name = re.fullmatch(r"\{(\w+)\}", part)
            if name:
                params[name.group(1)] = segment
            elif part.lower() != segment.lower():  # Graph path segments are case-insensitive
                return None
        return params


def match(
    routes: list[Route], method: str, segments: tuple[str, ...]
) -> tuple[Route, dict[str, str]] | None:
    """The first route of ``routes`` that matches, with its parameters."""
    for route in routes:
        params = route.match(method, segments)
        if params is not None:
            return route, params
    return None
