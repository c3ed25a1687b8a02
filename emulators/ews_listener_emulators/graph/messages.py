"""Graph's message resources on the mail store: list, get, PATCH, DELETE, ``$value``,
attachments, ``move`` and ``copy``, under ``users/{u}/messages`` and
``users/{u}/mailFolders/{f}/messages``.

Every change goes through the store (``update``, ``move``, ``copy``), so EWS SyncFolderItems and
GetEvents see what a Graph client did, and the other way round (issue 12, point 2).

Behaviours taken from Microsoft's documentation (../shared/graph-samples/ where a sample shows it):

- ``GET …/messages``: 10 per page by default, ``$top`` up to 1000 (list-messages: "within the
  range of 1 and 1000"; above is clamped), newest first (``receivedDateTime desc``), paged by
  ``$skip`` in ``@odata.nextLink``.
- ``$filter`` with ``$orderby``: the sorted properties must come first in the filter, in the
  same order, else 400 ``InefficientFilter`` (list-messages, "Using filter and orderby in the same
  query").
- ``DELETE`` moves to Deleted Items (from Deleted Items on to Recoverable Items), 204, as
  ``DeleteItem`` with ``MoveToDeletedItems`` does.
- ``move`` / ``copy`` answer 201 and the message with its new id (``message-move``); with
  ``Prefer: IdType="ImmutableId"`` a move keeps the id (``Item.immutable_id``).
- ``$value`` is the MIME as ``text/plain`` (``message-get-mime-value``).
- Ids: a string that is no id of ours is 400 ``ErrorInvalidIdMalformed``; a well-formed id that
  names nothing here is 404 ``ErrorItemNotFound``, as Exchange tells them apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from ews_listener_emulators.graph._contract import GraphAnswer, GraphError, GraphRequest, Route
from ews_listener_emulators.graph._ids import item_for, to_ews_id
from ews_listener_emulators.graph._render import (
    ATTACHMENT_PROPERTIES,
    attachment_json,
    attachment_type,
    message_json,
)
from ews_listener_emulators.graph._resource import (
    MESSAGE_SCHEMA,
    NOT_FOUND,
    SCHEMAS,
    answer_headers,
    check_options,
    folder_of,
    option,
    shape,
    user_context,
)
from ews_listener_emulators.graph.delta import ROUTES as DELTA_ROUTES
from ews_listener_emulators.mailstore.mime import build_mime
from ews_listener_emulators.mailstore.model import well_formed_id, well_formed_immutable_id
from ews_listener_emulators.store import Attachment, Flag, Folder, Item

__all__ = ["ROUTES"]

DEFAULT_TOP = 10
MAX_TOP = 1000
ACCESS_DENIED = "Access is denied. Check credentials and try again."


def message_of(request: GraphRequest) -> Item:
    """The message the path names (in the path's folder, when it names one); call under the
    store lock."""
    graph_id = request.params["message"]
    folder = folder_of(request, request.params["folder"]) if "folder" in request.params else None
    item = item_for(request.store, request.mailbox, graph_id)
    if item is None:
        if not (well_formed_id(to_ews_id(graph_id), b"I") or well_formed_immutable_id(graph_id)):
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND)
    if folder is not None and item.folder is not folder:
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND)
    return item


def attachment_of(request: GraphRequest, item: Item) -> Attachment:
    graph_id = request.params["attachment"]
    ews_id = to_ews_id(graph_id)
    for attachment in item.attachments:
        if attachment.attachment_id == ews_id:
            return attachment
    if not well_formed_id(ews_id, b"A"):
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
    raise GraphError(404, "ErrorItemNotFound", NOT_FOUND)


def require_write(request: GraphRequest) -> None:
    if not request.can_write:
        raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)


# --- $filter and $orderby --------------------------------------------------------------------

_CLAUSE = re.compile(
    r"^\s*(?P<prop>[A-Za-z/]+)\s+(?P<op>eq|ne|gt|ge|lt|le)\s+(?P<value>.+?)\s*$", re.IGNORECASE
)
_AND = re.compile(r"\s+and\s+(?=(?:[^']*'[^']*')*[^']*$)", re.IGNORECASE)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$")
_TIMES: dict[str, Callable[[Item], datetime | None]] = {
    "receivedDateTime": lambda i: i.received_at,
    "sentDateTime": lambda i: i.sent_at,
    "createdDateTime": lambda i: i.created_at,
    "lastModifiedDateTime": lambda i: i.modified_at,
}
_ADDRESSES: dict[str, Callable[[Item], str]] = {
    "from/emailAddress/address": lambda i: (i.from_.email if i.from_ else "").lower(),
    "sender/emailAddress/address": lambda i: (
        (
            (i.sender or i.from_).email if (i.sender or i.from_) else ""  # type: ignore[union-attr]
        ).lower()
    ),
}
_BOOLEANS: dict[str, Callable[[Item], bool]] = {
    "isRead": lambda i: i.is_read,
    "hasAttachments": lambda i: i.has_attachments,
    "isDraft": lambda i: i.is_draft,
}
_STRINGS: dict[str, Callable[[Item], str]] = {
    "subject": lambda i: i.subject,
    "importance": lambda i: i.importance.lower(),
    # Compared as sent (list-messages: "$filter=internetMessageId eq '<…>'").
    "internetMessageId": lambda i: i.internet_message_id or "",
}
_EXACT = frozenset({"subject", "internetMessageId"})
_FILTERABLE = {name.lower(): name for name in (*_TIMES, *_ADDRESSES, *_BOOLEANS, *_STRINGS)}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
}
Predicate = Callable[[Item], bool]


def _invalid_filter(detail: str) -> GraphError:
    return GraphError(400, "BadRequest", f"Invalid filter clause: {detail}")


def parse_filter(text: str) -> tuple[list[str], Predicate]:
    """``isRead eq false and receivedDateTime ge 2026-01-01T00:00:00Z``: the properties in
    order and the predicate. Clauses join with ``and``; what else OData allows is a 400."""
    properties: list[str] = []
    predicates: list[Predicate] = []
    for raw in _AND.split(text.strip()):
        clause = raw.strip()
        while clause.startswith("(") and clause.endswith(")"):
            clause = clause[1:-1].strip()
        found = _CLAUSE.match(clause)
        if found is None:
            raise _invalid_filter(f"'{clause}' is not 'property operator value'")
        name = _FILTERABLE.get(found["prop"].lower())
        if name is None:
            raise GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{found['prop']}' on type "
                "'microsoft.graph.message'.",
            )
        properties.append(name.split("/")[0])
        predicates.append(_clause(name, found["op"].lower(), found["value"]))
    return properties, lambda item: all(p(item) for p in predicates)


def _clause(name: str, op: str, value: str) -> Predicate:
    compare = _COMPARE[op]
    if name in _BOOLEANS:
        if value.lower() not in ("true", "false"):
            raise _invalid_filter(f"{name} takes true or false, got {value}")
        wanted = value.lower() == "true"
        get_bool = _BOOLEANS[name]
        if op not in ("eq", "ne"):
            raise _invalid_filter(f"{name} takes eq or ne, got {op}")
        return lambda item: compare(get_bool(item), wanted)
    if name in _TIMES:
        if not _DATETIME.match(value):
            raise _invalid_filter(
                f"{name} takes an unquoted date-time such as 2026-01-31T00:00:00Z, got {value}"
            )
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        get_time = _TIMES[name]
        return lambda item: compare(get_time(item), moment)
    if not (len(value) >= 2 and value.startswith("'") and value.endswith("'")):
        raise _invalid_filter(f"{name} takes a quoted string, got {value}")
    text = value[1:-1].replace("''", "'")
    if name in _ADDRESSES:
        get_address = _ADDRESSES[name]
        return lambda item: compare(get_address(item), text.lower())
    get_text = _STRINGS[name]
    return lambda item: compare(get_text(item), text if name in _EXACT else text.lower())


_SORTABLE = {name.lower(): name for name in (*_TIMES, "subject", "isRead", "importance")}


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    """``receivedDateTime desc, subject``: (property, descending) pairs."""
    order: list[tuple[str, bool]] = []
    for raw in text.split(","):
        words = raw.split()
        if (
            not words
            or len(words) > 2
            or (len(words) == 2 and words[1].lower() not in ("asc", "desc"))
        ):
            raise GraphError(400, "BadRequest", f"Invalid $orderby clause: '{raw.strip()}'")
        name = _SORTABLE.get(words[0].lower())
        if name is None:
            raise GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{words[0]}' on type 'microsoft.graph.message'.",
            )
        order.append((name, len(words) == 2 and words[1].lower() == "desc"))
    return order


def _sort_key(name: str) -> Callable[[Item], Any]:
    if name in _TIMES:
        get_time = _TIMES[name]
        return lambda item: (
            get_time(item) is not None,
            get_time(item) or datetime.min.replace(tzinfo=UTC),
        )
    if name == "subject":
        return lambda item: item.subject.lower()
    if name == "isRead":
        return lambda item: item.is_read
    return lambda item: ("low", "normal", "high").index(item.importance.lower())


def sort_items(items: list[Item], order: list[tuple[str, bool]]) -> list[Item]:
    items = sorted(items, key=lambda i: i.serial)  # ties: the order they were filed in
    for name, descending in reversed(order):
        items.sort(key=_sort_key(name), reverse=descending)
    return items


def _integer(request: GraphRequest, name: str) -> int | None:
    raw = option(request, name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise GraphError(400, "BadRequest", f"Invalid value '{raw}' for query option '{name}'.")
    return int(raw)


# --- handlers --------------------------------------------------------------------------------

_LIST_OPTIONS = frozenset({"$select", "$top", "$skip", "$filter", "$orderby", "$count", "$expand"})
_GET_OPTIONS = frozenset({"$select", "$expand"})


def _mail_folders(request: GraphRequest) -> list[Folder]:
    """The folders ``users/{u}/messages`` spans: every mail folder below the message root."""
    root = request.mailbox.distinguished["msgfolderroot"]
    found: list[Folder] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        if folder.folder_class.startswith("IPF.Note"):
            found.append(folder)
        stack.extend(folder.children)
    return found


_EXPAND = re.compile(r"^\s*attachments\s*(?:\(\s*\$select\s*=\s*(?P<select>[^()]*)\))?\s*$", re.I)


def _expand_attachments(request: GraphRequest) -> bool | frozenset[str]:
    """``$expand=attachments`` (True) or ``attachments($select=id,name,…)`` (the names, as
    query-parameters.md's nested ``$select`` in ``$expand``); False without ``$expand``."""
    raw = option(request, "$expand")
    if raw is None:
        return False
    found = _EXPAND.match(raw)
    if found is None:
        raise GraphError(400, "BadRequest", f"Expanding '{raw}' on a message is not supported.")
    if found["select"] is None:
        return True
    by_lower = {name.lower(): name for name in ATTACHMENT_PROPERTIES}
    names = set()
    for token in (t.strip() for t in found["select"].split(",")):
        if token and token.lower() not in by_lower:
            raise GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{token}' on type 'microsoft.graph.attachment'.",
            )
        if token:
            names.add(by_lower[token.lower()])
    return frozenset(names)


def _expanded(item: Item, expand: bool | frozenset[str]) -> list[dict[str, Any]]:
    select = expand if isinstance(expand, frozenset) else None
    return [attachment_json(a, select=select) for a in item.attachments]


def _message_body(request: GraphRequest, item: Item, **kinds: bool) -> dict[str, Any]:
    body = message_json(item, shape(request, **kinds))
    expand = _expand_attachments(request)
    if expand:
        body["attachments"] = _expanded(item, expand)
    return body


def list_messages(request: GraphRequest) -> GraphAnswer:
    check_options(request, _LIST_OPTIONS)
    top = _integer(request, "$top")
    skip = _integer(request, "$skip") or 0
    size = min(top if top is not None else request.max_page_size or DEFAULT_TOP, MAX_TOP)
    count = option(request, "$count")
    if count is not None and count.lower() not in ("true", "false"):
        raise GraphError(400, "BadRequest", f"Invalid value '{count}' for query option '$count'.")
    filter_text = option(request, "$filter")
    filtered, predicate = parse_filter(filter_text) if filter_text else ([], None)
    orderby = option(request, "$orderby")
    order = parse_orderby(orderby) if orderby else [("receivedDateTime", True)]
    if filter_text and orderby and [name for name, _ in order] != filtered[: len(order)]:
        raise GraphError(
            400,
            "InefficientFilter",
            "The restriction or sort order is too complex for this operation.",
        )
    item_shape = shape(request)
    expand = _expand_attachments(request)
    with request.store.lock:
        if "folder" in request.params:
            folders = [folder_of(request, request.params["folder"])]
        else:
            folders = _mail_folders(request)
        items = [i for f in folders for i in f.items.values()]
        if predicate is not None:
            items = [i for i in items if predicate(i)]
        items = sort_items(items, order)
        page = items[skip : skip + size]
        value = []
        for item in page:
            rendered = message_json(item, item_shape)
            if expand:
                rendered["attachments"] = _expanded(item, expand)
            value.append(rendered)
    path = "/".join(request.segments)
    body: dict[str, Any] = {"@odata.context": f"{user_context(request)}/{path}"}
    if count is not None and count.lower() == "true":
        body["@odata.count"] = len(items)
    body["value"] = value
    if size and skip + size < len(items):
        query = {k: v for k, v in request.query.items() if k.lower() != "$skip"}
        query["$skip"] = str(skip + size)
        body["@odata.nextLink"] = _url(request, query)
    return GraphAnswer(
        json=body,
        headers=answer_headers(request),
        schema=SCHEMAS + "microsoft.graph.messageCollectionResponse",
    )


def _url(request: GraphRequest, query: dict[str, str]) -> str:
    path = "/".join(quote(segment, safe="") for segment in request.segments)
    base = f"{request.base_url}/users/{quote(request.user, safe='')}/{path}"
    return f"{base}?{urlencode(query, quote_via=quote, safe='$,()/')}" if query else base


def get_message(request: GraphRequest) -> GraphAnswer:
    check_options(request, _GET_OPTIONS)
    with request.store.lock:
        item = message_of(request)
        body = {"@odata.context": f"{user_context(request)}/messages/$entity"}
        body.update(_message_body(request, item))
    return GraphAnswer(json=body, headers=answer_headers(request), schema=MESSAGE_SCHEMA)


# PATCH: what may change on a received message, and what only on a draft.
_DRAFT_ONLY = frozenset(
    {
        "subject",
        "body",
        "toRecipients",
        "ccRecipients",
        "bccRecipients",
        "replyTo",
        "from",
        "sender",
    }
)
_IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
_FLAG_STATUS = {"notFlagged": "NotFlagged", "flagged": "Flagged", "complete": "Complete"}
_KNOWN = frozenset(
    name.lower()
    for name in (
        *_DRAFT_ONLY,
        "isRead",
        "categories",
        "flag",
        "importance",
        "inferenceClassification",
    )
)


def _bad_value(name: str, value: object, expected: str) -> GraphError:
    return GraphError(
        400, "RequestBodyRead", f"Cannot convert the literal '{value}' of '{name}' to {expected}."
    )


def _flag(value: object) -> Flag:
    if not isinstance(value, dict):
        raise _bad_value("flag", value, "'microsoft.graph.followupFlag'")
    status = value.get("flagStatus", "notFlagged")
    if status not in _FLAG_STATUS:
        raise _bad_value("flag.flagStatus", status, "notFlagged, flagged or complete")
    flag = Flag(status=_FLAG_STATUS[status])
    for key, attribute in (
        ("startDateTime", "start"),
        ("dueDateTime", "due"),
        ("completedDateTime", "complete"),
    ):
        when = value.get(key)
        if when is None:
            continue
        if not isinstance(when, dict) or not isinstance(when.get("dateTime"), str):
            raise _bad_value(f"flag.{key}", when, "'microsoft.graph.dateTimeTimeZone'")
        text = re.sub(r"(\.\d{6})\d+", r"\1", when["dateTime"]).replace("Z", "")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _bad_value(
                f"flag.{key}.dateTime", when["dateTime"], "'Edm.String' date-time"
            ) from None
        setattr(flag, attribute, moment.replace(tzinfo=UTC))
    if flag.status == "Complete" and flag.complete is None:
        flag.complete = datetime.now(UTC)
    return flag


def _changes(item: Item, patch: dict[str, Any]) -> list[Callable[[Item], None]]:
    changes: list[Callable[[Item], None]] = []
    for name, value in patch.items():
        if name.startswith("@odata."):
            continue
        if name.lower() not in _KNOWN:
            raise GraphError(
                400,
                "RequestBodyRead",
                f"The property '{name}' does not exist on type 'microsoft.graph.message' or "
                "cannot be updated. Make sure to only use property names that are defined by "
                "the type.",
            )
        if name in _DRAFT_ONLY and not item.is_draft:
            raise GraphError(
                400,
                "ErrorInvalidPropertyUpdateSentMessage",
                "Update operation is invalid for property of a sent message.",
            )
        changes.append(_change(name, value))
    return changes


def _change(name: str, value: Any) -> Callable[[Item], None]:
    if name == "isRead":
        if not isinstance(value, bool):
            raise _bad_value(name, value, "'Edm.Boolean'")
        return lambda i: setattr(i, "is_read", value)
    if name == "categories":
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise _bad_value(name, value, "'Collection(Edm.String)'")
        return lambda i: setattr(i, "categories", list(value))
    if name == "importance":
        if value not in _IMPORTANCE:
            raise _bad_value(name, value, "low, normal or high")
        return lambda i: setattr(i, "importance", _IMPORTANCE[value])
    if name == "flag":
        flag = _flag(value)
        return lambda i: setattr(i, "flag", flag)
    if name == "inferenceClassification":
        if value not in ("focused", "other"):
            raise _bad_value(name, value, "focused or other")
        return lambda i: setattr(i, "inference_classification", value)
    if name == "subject":
        if not isinstance(value, str):
            raise _bad_value(name, value, "'Edm.String'")
        return lambda i: setattr(i, "subject", value)
    if name == "body":
        if not isinstance(value, dict) or value.get("contentType", "text") not in ("text", "html"):
            raise _bad_value(name, value, "'microsoft.graph.itemBody'")
        content = str(value.get("content") or "")
        is_html = value.get("contentType") == "html"

        def set_body(target: Item) -> None:
            target.html_body, target.text_body = (content, None) if is_html else (None, content)

        return set_body
    raise GraphError(501, "NotImplemented", f"Updating '{name}' is not emulated.")


def update_message(request: GraphRequest) -> GraphAnswer:
    require_write(request)
    patch = request.json()
    if not isinstance(patch, dict):
        raise GraphError(400, "RequestBodyRead", "The request body must be a JSON object.")
    with request.store.lock:
        item = message_of(request)
        changes = _changes(item, patch)
        names = {k for k in patch if not k.startswith("@odata.")}

        def apply(target: Item) -> None:
            for change in changes:
                change(target)

        # Only the read flag: EWS sync reports a ReadFlagChange, as Exchange does for it.
        request.store.update(item, apply, read_only=names == {"isRead"})
        body = {"@odata.context": f"{user_context(request)}/messages/$entity"}
        body.update(message_json(item, shape(request)))
    return GraphAnswer(json=body, headers=answer_headers(request), schema=MESSAGE_SCHEMA)


def delete_message(request: GraphRequest) -> GraphAnswer:
    require_write(request)
    with request.store.lock:
        item = message_of(request)
        folders = request.mailbox.distinguished
        deleted_items = folders["deleteditems"]
        # From Deleted Items one step further, as DeleteItem MoveToDeletedItems does.
        target = "recoverableitemsdeletions" if item.folder is deleted_items else "deleteditems"
        request.store.move(item, folders[target])
    return GraphAnswer(status=204)


def message_mime(request: GraphRequest) -> GraphAnswer:
    check_options(request, frozenset())
    with request.store.lock:
        item = message_of(request)
        raw = item.mime or build_mime(item)
    # message-get-mime-value: "Content-type: text/plain".
    return GraphAnswer(raw=raw, content_type="text/plain")


def _attachment_context(request: GraphRequest, item: Item) -> str:
    message = quote(request.params["message"], safe="")
    return f"{user_context(request)}/messages('{message}')/attachments"


_EXPAND_ITEM = "microsoft.graph.itemattachment/item"


def _attachment_select(request: GraphRequest) -> frozenset[str] | None:
    raw = option(request, "$select")
    if raw is None:
        return None
    by_lower = {name.lower(): name for name in ATTACHMENT_PROPERTIES}
    names = set()
    for token in (t.strip() for t in raw.split(",")):
        if token and token.lower() not in by_lower:
            raise GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{token}' on type 'microsoft.graph.attachment'.",
            )
        if token:
            names.add(by_lower[token.lower()])
    return frozenset(names)


def list_attachments(request: GraphRequest) -> GraphAnswer:
    check_options(request, frozenset({"$select", "$expand"}))
    select = _attachment_select(request)
    expand = _expand_item(request)
    with request.store.lock:
        item = message_of(request)
        context = _attachment_context(request, item)
        value = [attachment_json(a, expand_item=expand, select=select) for a in item.attachments]
    return GraphAnswer(
        json={"@odata.context": context, "value": value},
        schema=SCHEMAS + "microsoft.graph.attachmentCollectionResponse",
    )


def _expand_item(request: GraphRequest) -> bool:
    raw = option(request, "$expand")
    if raw is None:
        return False
    if raw.strip().lower() != _EXPAND_ITEM:
        raise GraphError(400, "BadRequest", f"Expanding '{raw}' on an attachment is not supported.")
    return True


def get_attachment(request: GraphRequest) -> GraphAnswer:
    check_options(request, frozenset({"$select", "$expand"}))
    select = _attachment_select(request)
    expand = _expand_item(request)
    with request.store.lock:
        item = message_of(request)
        attachment = attachment_of(request, item)
        context = _attachment_context(request, item)
        item_context = (
            f"{context}('{quote(request.params['attachment'], safe='')}')"
            "/microsoft.graph.itemAttachment/item/$entity"
        )
        body = {"@odata.context": f"{context}/$entity"}
        body.update(
            attachment_json(attachment, expand_item=expand, select=select, context=item_context)
        )
    kind = attachment_type(attachment).removeprefix("#")
    return GraphAnswer(json=body, schema=SCHEMAS + kind)


def attachment_content(request: GraphRequest) -> GraphAnswer:
    check_options(request, frozenset())
    with request.store.lock:
        attachment = attachment_of(request, message_of(request))
        if attachment.source_url is not None:
            # attachment-get.md: "attempting to get the $value of a reference attachment returns
            # HTTP 405"; the docs give no error code, this one is ours.
            raise GraphError(
                405,
                "ErrorInvalidRequest",
                "The raw contents of a reference attachment cannot be read; follow its link.",
            )
        if attachment.item is not None:
            embedded = attachment.item
            # attachment-get-item-eventmessage-value: the attached item's MIME.
            return GraphAnswer(raw=embedded.mime or build_mime(embedded), content_type="text/plain")
        return GraphAnswer(
            raw=attachment.content or b"",
            content_type=attachment.content_type or "application/octet-stream",
        )


def _destination(request: GraphRequest) -> Folder:
    payload = request.json()
    if not isinstance(payload, dict):
        raise GraphError(400, "RequestBodyRead", "The request body must be a JSON object.")
    by_lower = {k.lower(): v for k, v in payload.items()}
    destination = by_lower.get("destinationid")
    if not isinstance(destination, str) or not destination:
        raise GraphError(400, "ErrorInvalidParameter", "The destinationId parameter is required.")
    return folder_of(request, destination)


def _moved(request: GraphRequest, item: Item) -> GraphAnswer:
    # message-move: 201, "$metadata#message" and "@odata.type" on the moved message.
    body = {"@odata.context": f"{request.base_url}/$metadata#message"}
    body.update(message_json(item, shape(request, annotate_type=True)))
    return GraphAnswer(
        status=201, json=body, headers=answer_headers(request), schema=MESSAGE_SCHEMA
    )


def move_message(request: GraphRequest) -> GraphAnswer:
    require_write(request)
    with request.store.lock:
        item = message_of(request)
        destination = _destination(request)
        return _moved(request, request.store.move(item, destination))


def copy_message(request: GraphRequest) -> GraphAnswer:
    require_write(request)
    with request.store.lock:
        item = message_of(request)
        destination = _destination(request)
        return _moved(request, request.store.copy(item, destination))


# --- routes ----------------------------------------------------------------------------------

_PREFIXES = (
    ("messages", "/users/{user-id}/messages", "user"),
    (
        "mailFolders/{folder}/messages",
        "/users/{user-id}/mailFolders/{mailFolder-id}/messages",
        "user.mailFolder",
    ),
)


def _routes() -> list[Route]:
    """Each operation under both path forms; ``operation`` is the OpenAPI operationId (the
    description has attachments, ``$value``, ``move`` and ``copy`` only below
    ``users/{user-id}/messages``, and no path for an attachment's ``$value``: the folder form
    answers them under the same template and name)."""
    routes: list[Route] = []
    users_one = "/users/{user-id}/messages/{message-id}"
    for pattern, template, owner in _PREFIXES:
        one = f"{pattern}/{{message}}"
        one_template = f"{template}/{{message-id}}"
        routes += [
            Route("GET", pattern, list_messages, template, f"{owner}_ListMessage"),
            Route("GET", one, get_message, one_template, f"{owner}_GetMessage"),
            Route("PATCH", one, update_message, one_template, f"{owner}_UpdateMessage"),
            Route("DELETE", one, delete_message, one_template, f"{owner}_DeleteMessage"),
            Route(
                "GET",
                f"{one}/$value",
                message_mime,
                f"{users_one}/$value",
                "user_GetMessageContent",
            ),
            Route(
                "GET",
                f"{one}/attachments",
                list_attachments,
                f"{users_one}/attachments",
                "user.message_ListAttachment",
            ),
            Route(
                "GET",
                f"{one}/attachments/{{attachment}}",
                get_attachment,
                f"{users_one}/attachments/{{attachment-id}}",
                "user.message_GetAttachment",
            ),
            Route(
                "GET",
                f"{one}/attachments/{{attachment}}/$value",
                attachment_content,
                f"{users_one}/attachments/{{attachment-id}}/$value",
                "user.message_GetAttachmentContent",  # no such path in the description
            ),
            Route("POST", f"{one}/move", move_message, f"{users_one}/move", "user.message_move"),
            Route("POST", f"{one}/copy", copy_message, f"{users_one}/copy", "user.message_copy"),
        ]
    return routes


#: Delta first: ``mailFolders/{f}/messages/delta`` would otherwise match ``…/messages/{message}``.
ROUTES: list[Route] = [*DELTA_ROUTES, *_routes()]
