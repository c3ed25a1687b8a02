"""OData query options as Graph's mail resources apply them: ``$select``, ``$top``, ``$skip``,
``$count``, and the links and context URLs of an answer.

The server has already refused malformed values (``$top=abc``, a repeated option); what is left
here is what depends on the resource: the property names ``$select`` may name, and paging.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ews_listener_emulators.graph._contract import GraphError, GraphRequest

__all__ = ["collection", "context_user", "request_url", "selected"]


def selected(
    request: GraphRequest, properties: Sequence[str], type_name: str
) -> tuple[str, ...] | None:
    """The properties ``$select`` names (``id`` always among them, in the type's order), or None
    when there is no ``$select``; an unknown name is Graph's 400 ``RequestBroker--ParseUri``."""
    raw = request.query.get("$select")
    if raw is None:
        return None
    by_lower = {name.lower(): name for name in properties}
    wanted = {"id"}
    for name in (part.strip() for part in raw.split(",")):
        if not name:
            continue
        known = by_lower.get(name.lower())
        if known is None:
            raise GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{name}' on type '{type_name}'.",
            )
        wanted.add(known)
    return tuple(name for name in properties if name in wanted)


def context_user(request: GraphRequest) -> str:
    """``users('alice%40contoso.com')``: the user of the URL as ``@odata.context`` writes it."""
    return f"users('{quote(request.user, safe='')}')"


def request_url(request: GraphRequest, query: dict[str, str]) -> str:
    """The URL of this request's resource with ``query`` (for ``@odata.nextLink``)."""
    path = "/".join(quote(segment, safe="") for segment in request.segments)
    base = f"{request.base_url}/users/{quote(request.user, safe='')}/{path}"
    return f"{base}?{urlencode(query, quote_via=quote)}" if query else base


def collection(
    request: GraphRequest,
    entries: Sequence[dict[str, Any]],
    context: str,
    *,
    page_size: int,
) -> dict[str, Any]:
    """A collection answer: ``@odata.context``, ``@odata.count`` when ``$count=true``, ``value``
    (``$skip``, then ``$top`` or ``page_size``), and ``@odata.nextLink`` when more remain.

    Exchange pages mail folders by ``$skip``: the next link repeats the request's options with
    ``$skip`` moved on by the page (``…/mailFolders?%24skip=10``; with ``$top=2``,
    ``?%24top=2&%24skip=2``).
    """
    skip = int(request.query.get("$skip", "0"))
    top = request.query.get("$top")
    size = int(top) if top is not None else page_size
    window = entries[skip : skip + size]
    body: dict[str, Any] = {"@odata.context": context}
    if request.query.get("$count", "").lower() == "true":
        body["@odata.count"] = len(entries)
    body["value"] = list(window)
    if skip + size < len(entries):
        query = {k: v for k, v in request.query.items() if k != "$skip"}
        query["$skip"] = str(skip + size)
        body["@odata.nextLink"] = request_url(request, query)
    return body
