"""``mailFolders/{folder}/messages/delta``: Graph's delta query on the folder change log that EWS
SyncFolderItems reads (``Folder.log``, ``MailStore.sync``).

A position is a change sequence number, as for SyncFolderItems. The token in ``@odata.nextLink``
(``$skiptoken``) and ``@odata.deltaLink`` (``$deltatoken``) carries it with the round's options,
because "Microsoft Graph automatically encodes any OData and custom query options into the
@odata.nextLink or @odata.deltaLink" (concepts/delta-query-messages.md): the folder, the CSN, the
``$select`` and ``changeType`` of the first request, and whether the round is the initial one
(``changeType`` filters later rounds only: "do an initial round of synchronization of all the
messages in the folder, and then get incremental changes of a specific desired type in subsequent
rounds", same page). Tokens are HMAC-signed per process, so a link is stateless: replaying one
answers the same page again (plus whatever changed since), and an emulator restart ends them all.

- Each changed message appears once per page with its net effect (``MailStore.sync``): created or
  updated as a message with ``@odata.type`` (``delta-messages-*`` samples), gone as
  ``{"id", "@removed": {"reason"}}`` (``delta-messages-next-round-removed``).
- ``reason``: concepts/delta-query-overview.md says ``changed`` when the item "was deleted and can
  be restored from deletedItems" and ``deleted`` when it "is deleted and can't be restored". So a
  message moved out of the folder (to Deleted Items or elsewhere: still in the mailbox) is
  ``changed``; one deleted for good, or moved to Recoverable Items, is ``deleted``. A moved
  message is new in its new folder's delta; with ``Prefer: IdType="ImmutableId"`` both name it by
  the same id.
- Page size: ``Prefer: odata.maxpagesize`` (echoed in ``Preference-Applied``), else ``$top``,
  else 10, at most 1000 (the list-messages limits; the delta pages name no other).
- A token that is not ours, was tampered with, names another folder or outlived the store
  (``reset``) is a dead sync state: 410 Gone with ``Location`` the initial request (an empty
  ``$deltatoken``), as delta-query-overview.md "Synchronization reset" describes, and code
  ``syncStateNotFound``, which its "Token duration" section gives for an expired token
  (../shared/graph-samples/delta-sync-reset-and-token-expiry.prose.txt). ``sync_state_not_found``
  builds it for fault injection too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from ews_listener_emulators.graph._contract import GraphAnswer, GraphError, GraphRequest, Route
from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.graph._render import (
    MESSAGE_TYPE,
    Shape,
    body_preference,
    message_json,
    parse_select,
)
from ews_listener_emulators.graph._resource import answer_headers, check_options, folder_of, option
from ews_listener_emulators.store import Folder, Item, SyncChange

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "ROUTES",
    "messages_delta",
    "page_size",
    "read_token",
    "sign_token",
    "sync_state_not_found",
]

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
TEMPLATE = "/users/{user-id}/mailFolders/{mailFolder-id}/messages/delta()"
SCHEMA = (
    "#/paths/~1users~1{user-id}~1mailFolders~1{mailFolder-id}~1messages~1delta()"
    "/get/responses/2XX/content/application~1json/schema"
)
_KEY = os.urandom(32)  # signs this process's tokens
_MAC_LENGTH = 12
_CHANGE_TYPES = {
    "created": frozenset({"Create"}),
    "updated": frozenset({"Update", "ReadFlagChange"}),
    "deleted": frozenset({"Delete"}),
}
_OPTIONS = frozenset({"$select", "$top", "$skiptoken", "$deltatoken"})


@dataclass(frozen=True)
class DeltaState:
    """What a token carries."""

    folder_id: str  # the folder's EWS id
    csn: int
    select: tuple[str, ...] | None = None
    change_type: str | None = None
    initial: bool = True

    def encode(self) -> str:
        return sign_token([self.folder_id, self.csn, self.select, self.change_type, self.initial])

    @classmethod
    def decode(cls, token: str) -> DeltaState | None:
        payload = read_token(token)
        if not isinstance(payload, list) or len(payload) != 5:  # 6: a mailFolders/delta token
            return None
        folder_id, csn, select, change_type, initial = payload
        return cls(folder_id, csn, tuple(select) if select else None, change_type, initial)


def sign_token(payload: Any) -> str:
    """``payload`` as JSON, signed with this process's key, URL-safe: a delta token."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    mac = hmac.new(_KEY, data, hashlib.sha256).digest()[:_MAC_LENGTH]
    return base64.urlsafe_b64encode(mac + data).decode().rstrip("=")


def read_token(token: str) -> Any:
    """The payload of a token ``sign_token`` made in this process, or None."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    mac, data = raw[:_MAC_LENGTH], raw[_MAC_LENGTH:]
    expected = hmac.new(_KEY, data, hashlib.sha256).digest()[:_MAC_LENGTH]
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _folder_segment(request: GraphRequest) -> str:
    # The samples' links name the folder in key syntax: mailfolders('AQMkADNkNAAAgEMAAAA').
    return f"mailFolders('{quote(request.params['folder'], safe='')}')"


def _link(request: GraphRequest, query: str) -> str:
    base = f"{request.base_url}/users/{quote(request.user, safe='')}"
    if "folder" not in request.params:  # users/{u}/mailFolders/delta (folder_delta)
        return f"{base}/mailFolders/delta{query}"
    return f"{base}/{_folder_segment(request)}/messages/delta{query}"


def sync_state_not_found(request: GraphRequest, detail: str = "") -> GraphError:
    """The answer to a dead delta token: 410, ``syncStateNotFound``, ``Location`` to start over."""
    message = "The sync state generation is not found. The delta token is expired and data "
    message += "must be synchronized again."
    return GraphError(
        410,
        "syncStateNotFound",
        f"{message} {detail}".strip(),
        headers={"Location": _link(request, "?$deltatoken=")},
    )


def _state(request: GraphRequest, folder: Folder) -> DeltaState:
    token = option(request, "$skiptoken") or option(request, "$deltatoken")
    if not token:  # none, or the empty $deltatoken of a reset's Location: a new initial round
        change_type = option(request, "changeType")
        if change_type is not None and change_type not in _CHANGE_TYPES:
            raise GraphError(
                400,
                "BadRequest",
                f"Invalid value '{change_type}' for changeType: created, updated or deleted.",
            )
        select = parse_select(option(request, "$select"))
        return DeltaState(
            folder.folder_id, 0, tuple(sorted(select)) if select is not None else None, change_type
        )
    state = DeltaState.decode(token)
    if state is None:
        raise sync_state_not_found(request, "The token is not one this service issued.")
    if state.folder_id != folder.folder_id:
        raise sync_state_not_found(request, "The token belongs to another folder.")
    if state.csn > folder.mailbox.csn:
        raise sync_state_not_found(request, "The token outlived the mailbox's sync state.")
    return state


def page_size(request: GraphRequest) -> int:
    """A delta page's size: ``Prefer: odata.maxpagesize``, else ``$top``, else the default."""
    top = option(request, "$top")
    if top is not None and not top.isdigit():
        raise GraphError(400, "BadRequest", f"Invalid value '{top}' for query option '$top'.")
    wanted = request.max_page_size or (int(top) if top else DEFAULT_PAGE_SIZE)
    return max(1, min(wanted, MAX_PAGE_SIZE))


def _wanted(change: SyncChange, state: DeltaState) -> bool:
    if state.initial or state.change_type is None:
        return True
    return change.kind in _CHANGE_TYPES[state.change_type]


def _in_mailbox(request: GraphRequest, item: Item | None) -> bool:
    """Whether a message that left the folder can still be found (not deleted, not in
    Recoverable Items)."""
    folder = item.folder if item is not None else None
    recoverable = request.mailbox.distinguished.get("recoverableitemsroot")
    while folder is not None:
        if folder is recoverable:
            return False
        folder = folder.parent
    return item is not None and item.folder is not None


def _removed(request: GraphRequest, change: SyncChange) -> dict[str, Any]:
    former = request.store.former(request.mailbox, change.item_id)
    immutable = request.immutable_ids and former is not None
    return {
        "@odata.type": MESSAGE_TYPE,
        "id": former.immutable_id if immutable and former else to_rest_id(change.item_id),
        "@removed": {"reason": "changed" if _in_mailbox(request, former) else "deleted"},
    }


def messages_delta(request: GraphRequest) -> GraphAnswer:
    """One page of a delta round."""
    check_options(request, _OPTIONS)
    size = page_size(request)
    body_type = body_preference(request.headers)
    with request.store.lock:
        folder = folder_of(request, request.params["folder"])
        state = _state(request, folder)
        shape = Shape(
            immutable_ids=request.immutable_ids,
            select=frozenset(state.select) if state.select is not None else None,
            body_type=body_type,
            annotate_type=True,
        )
        collected: list[SyncChange] = []
        csn, last = state.csn, False
        # Filtered rounds (changeType) read on until the page is full or the log ends; each
        # call moves the CSN on (MailStore.sync reports at least one change per call).
        while not last and len(collected) < size:
            changes, csn, last = request.store.sync(folder, csn, size - len(collected))
            collected += [c for c in changes if _wanted(c, state)]
        value = [
            _removed(request, c)
            if c.kind == "Delete" or c.item is None
            else message_json(c.item, shape)
            for c in collected
        ]
    body: dict[str, Any] = {"@odata.context": f"{request.base_url}/$metadata#Collection(message)"}
    if last:
        after = replace(state, csn=csn, initial=False)
        body["@odata.deltaLink"] = _link(request, f"?$deltatoken={after.encode()}")
    else:
        body["@odata.nextLink"] = _link(request, f"?$skiptoken={replace(state, csn=csn).encode()}")
    body["value"] = value
    page = (f"odata.maxpagesize={size}",) if request.max_page_size is not None else ()
    headers = answer_headers(request, *page)
    return GraphAnswer(json=body, headers=headers, schema=SCHEMA)


def users_messages_delta(request: GraphRequest) -> GraphAnswer:
    """``users/{u}/messages/delta``: the CSDL marks ``user/messages`` ChangeTracking
    Supported=false, and the docs describe delta per folder only."""
    raise GraphError(
        400,
        "BadRequest",
        "Change tracking is not supported against 'microsoft.graph.message' across folders; "
        "use users/{id}/mailFolders/{id}/messages/delta.",
    )


ROUTES: list[Route] = [
    Route(
        "GET",
        "mailFolders/{folder}/messages/delta",
        messages_delta,
        TEMPLATE,
        "user.mailFolder.message_delta",
    ),
    Route(
        "GET",
        "mailFolders/{folder}/messages/delta()",
        messages_delta,
        TEMPLATE,
        "user.mailFolder.message_delta",
    ),
    Route(
        "GET",
        "messages/delta",
        users_messages_delta,
        "/users/{user-id}/messages/delta()",
        "user.message_delta",
    ),
    Route(
        "GET",
        "messages/delta()",
        users_messages_delta,
        "/users/{user-id}/messages/delta()",
        "user.message_delta",
    ),
]
