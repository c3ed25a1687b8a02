"""Calling the Graph resources directly, without the HTTP layer: a ``GraphRequest`` on a real
``MailStore``, the route table the server uses, and every JSON answer checked against Microsoft's
OpenAPI description (../shared/graph-schema, or ``$GRAPH_SCHEMA_DIR``).

The HTTPS tests through ``GraphEmulator`` (conftest.py) cover the server; these pin what the
resources answer, including the documented samples of ../shared/graph-samples.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from openapi_schema_validator import OAS30ReadValidator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from ews_listener_emulators.graph._contract import GraphAnswer, GraphError, GraphRequest, match
from ews_listener_emulators.graph.messages import ROUTES
from ews_listener_emulators.store import Item, Mailbox, MailStore

_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SCHEMA_DIR = Path(os.environ.get("GRAPH_SCHEMA_DIR") or _SHARED / "graph-schema")
SAMPLES_DIR = _SHARED / "graph-samples"
BASE_URL = "https://127.0.0.1:8443/v1.0"
ALICE = "alice@contoso.com"
_BASE = "urn:graph-mail-v1.0"


@functools.cache
def _registry() -> Registry | None:
    document = SCHEMA_DIR / "graph-mail-v1.0.openapi.json"
    if not document.is_file():
        return None
    doc = _relaxed(json.loads(document.read_text(encoding="utf-8")))
    return Registry().with_resource(
        _BASE, Resource.from_contents(doc, default_specification=DRAFT4)
    )


def _relaxed(doc: dict[str, Any]) -> dict[str, Any]:
    """The schema as ../shared/graph-schema/README.md says Graph really answers: ``@odata.type``
    not required on every object (the generator's EnableDiscriminatorValue)."""
    doc = copy.deepcopy(doc)
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            required = node.get("required")
            if isinstance(required, list) and "@odata.type" in required:
                required.remove("@odata.type")
                if not required:
                    del node["required"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return doc


def violations(body: Any, pointer: str) -> list[str]:
    """Where ``body`` breaks the schema at ``pointer`` ([] when valid or no schema is here)."""
    registry = _registry()
    if registry is None:
        return []
    validator = OAS30ReadValidator(
        {"$ref": _BASE + pointer}, registry=registry, format_checker=oas30_format_checker
    )
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(body)]


def schema_available() -> bool:
    return _registry() is not None


@dataclass
class Answer:
    """What a resource answered, error or not."""

    status: int
    json: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] | None = None
    code: str | None = None  # error.code

    @property
    def value(self) -> list[dict[str, Any]]:
        return list(self.json["value"])


def split_path(path: str) -> tuple[str, ...]:
    """``mailFolders('inbox')/messages`` as the server hands it over: ("mailFolders", "inbox",
    "messages"), URL-decoded."""
    segments: list[str] = []
    for raw in path.strip("/").split("/"):
        segment = unquote(raw)
        key = re.fullmatch(r"(\w+)\('(.*)'\)", segment)
        if key:
            segments += [key.group(1), key.group(2)]
        else:
            segments.append(segment)
    return tuple(segments)


class Client:
    """Calls the routes of ``graph.messages`` for one mailbox of ``store``."""

    def __init__(self, store: MailStore, mailbox: Mailbox, *, user: str = ALICE) -> None:
        self.store = store
        self.mailbox = mailbox
        self.user = user

    def call(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        can_write: bool = True,
        immutable_ids: bool = False,
        max_page_size: int | None = None,
    ) -> Answer:
        segments = split_path(path)
        found = match(ROUTES, method, segments)
        assert found is not None, f"no route for {method} {path}"
        route, params = found
        request = GraphRequest(
            method=method,
            segments=segments,
            query=dict(query or {}),
            headers={k.lower(): v for k, v in (headers or {}).items()},
            body=b"" if body is None else json.dumps(body).encode(),
            store=self.store,
            mailbox=self.mailbox,
            base_url=BASE_URL,
            user=self.user,
            can_write=can_write,
            immutable_ids=immutable_ids,
            max_page_size=max_page_size,
            params=params,
        )
        try:
            answer: GraphAnswer = route.handler(request)
        except GraphError as error:
            return Answer(error.status, None, code=error.code, headers=error.headers)
        if answer.json is not None:
            assert answer.schema is not None, f"{route.operation} names no schema"
            problems = violations(answer.json, answer.schema)
            assert problems == [], f"{route.operation}: {problems}"
        return Answer(answer.status, answer.json, answer.raw, answer.content_type, answer.headers)

    def get(self, path: str, query: dict[str, str] | None = None, **kwargs: Any) -> Answer:
        return self.call("GET", path, query, **kwargs)

    def follow(self, link: str, **kwargs: Any) -> Answer:
        """GET an ``@odata.nextLink`` / ``@odata.deltaLink`` as a client would."""
        prefix = f"{BASE_URL}/users/{self.user.replace('@', '%40')}/"
        assert link.startswith(prefix), link
        parts = urlsplit(link)
        path = parts.path.removeprefix(urlsplit(prefix).path)
        return self.call("GET", path, dict(parse_qsl(parts.query)), **kwargs)


def deliver(
    store: MailStore,
    mailbox: Mailbox,
    raw: bytes,
    folder: str = "inbox",
    *,
    received_at: datetime | None = None,
    is_read: bool = False,
) -> Item:
    """File MIME as new mail, as ``EwsEmulator.deliver`` does."""
    item = store.parse(raw, received_at=received_at)
    item.is_read = is_read
    return store.file(store.folder_by_path(mailbox, folder, create=True), item)


def sample(name: str) -> Any:
    """The JSON body of a documented response in ../shared/graph-samples (read, never copied)."""
    text = (SAMPLES_DIR / name).read_text(encoding="utf-8")
    response = text.split("### response", 1)[1]
    start = response.index("{")
    return json.loads(response[start:])


def samples_available() -> bool:
    return (SAMPLES_DIR / "message-get.http.txt").is_file()
