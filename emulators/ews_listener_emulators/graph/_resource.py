"""What the message and delta resources share: query options, folders, the render shape."""

from __future__ import annotations

from urllib.parse import quote

from ews_listener_emulators.graph._contract import GraphError, GraphRequest
from ews_listener_emulators.graph._ids import folder_for, to_ews_id
from ews_listener_emulators.graph._render import (
    Shape,
    body_preference,
    parse_select,
    preference_applied,
)
from ews_listener_emulators.mailstore.model import well_formed_id
from ews_listener_emulators.store import Folder

__all__ = [
    "MESSAGE_SCHEMA",
    "NOT_FOUND",
    "SCHEMAS",
    "answer_headers",
    "check_options",
    "folder_of",
    "option",
    "shape",
    "user_context",
]

SCHEMAS = "#/components/schemas/"
MESSAGE_SCHEMA = SCHEMAS + "microsoft.graph.message"
NOT_FOUND = "The specified object was not found in the store."


def option(request: GraphRequest, name: str) -> str | None:
    """A query option by name, any case (``$Select`` is ``$select``)."""
    lowered = name.lower()
    for key, value in request.query.items():
        if key.lower() == lowered:
            return value
    return None


def check_options(request: GraphRequest, allowed: frozenset[str]) -> None:
    """400 for a ``$`` option this resource does not take; custom options are ignored, as Graph
    ignores them."""
    for key in request.query:
        if key.startswith("$") and key.lower() not in allowed:
            raise GraphError(400, "BadRequest", f"Query option '{key}' is not allowed here.")


def shape(request: GraphRequest, *, annotate_type: bool = False) -> Shape:
    return Shape(
        immutable_ids=request.immutable_ids,
        select=parse_select(option(request, "$select")),
        body_type=body_preference(request.headers),
        annotate_type=annotate_type,
    )


def answer_headers(request: GraphRequest, *applied: str) -> dict[str, str]:
    """``Preference-Applied`` for the preferences honoured: ``applied``, the body type, and the
    immutable ids (which the server adds only when the resource sets no such header)."""
    preferences = list(applied)
    body_type = body_preference(request.headers)
    if body_type:
        preferences.append(preference_applied(body_type)["Preference-Applied"])
    if preferences and request.immutable_ids:
        preferences.append('IdType="ImmutableId"')
    return {"Preference-Applied": ", ".join(preferences)} if preferences else {}


def user_context(request: GraphRequest) -> str:
    return f"{request.base_url}/$metadata#users('{quote(request.user, safe='')}')"


def folder_of(request: GraphRequest, token: str) -> Folder:
    """A folder by well-known name or id: 400 when malformed, 404 when unknown."""
    found = folder_for(request.store, request.mailbox, token)
    if found is not None:
        return found
    if not well_formed_id(to_ews_id(token), b"F"):
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
    raise GraphError(404, "ErrorItemNotFound", NOT_FOUND)
