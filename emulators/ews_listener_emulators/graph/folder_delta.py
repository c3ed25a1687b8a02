"""``users/{u}/mailFolders/delta``: Graph's delta query on a mailbox's folder hierarchy
(api-reference/v1.0/api/mailfolder-delta.md, ../shared/graph-samples/delta-mailfolders-page-next).

A round lists every mail folder below the message folder root (the hierarchy flattened, children
included, as ``mailFolders`` lists the top level); later rounds list the folders changed since, and
``{"id", "@removed": {"reason": "deleted"}}`` for the deleted ones.

A folder's position is the CSN of its last change (``changed_csn``): a folder change
(created, a child added or removed: ``Mailbox.folder_csns``) or an item change in it, which moves
``totalItemCount`` / ``unreadItemCount``. Folders are paged in that order, ties (folders never
changed since the mailbox was made: CSN 0) broken by serial, so a page is the folders after the
token's ``(csn, serial)``; a folder that changes while a round is paged moves behind the cursor and
comes again in the same round, as Graph warns ("the same item can be returned more than once").
The token is signed and stateless as ``delta``'s (``delta.sign_token``): replaying a link answers
the same page again, plus whatever changed since; a token that is not ours, names another mailbox
or outlived the store is a dead sync state, 410 ``syncStateNotFound``
(``delta.sync_state_not_found``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from ews_listener_emulators.graph._contract import GraphAnswer, GraphRequest, Route
from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.graph._odata import selected
from ews_listener_emulators.graph._resource import answer_headers, check_options, option
from ews_listener_emulators.graph.delta import (
    page_size,
    read_token,
    sign_token,
    sync_state_not_found,
)
from ews_listener_emulators.graph.folders import FOLDER_PROPERTIES, folder_resource, mail_folders
from ews_listener_emulators.store import Folder, Mailbox

__all__ = ["ROUTES", "mail_folders_delta"]

TEMPLATE = "/users/{user-id}/mailFolders/delta()"
SCHEMA = (
    "#/paths/~1users~1{user-id}~1mailFolders~1delta()"
    "/get/responses/2XX/content/application~1json/schema"
)
_OPTIONS = frozenset({"$select", "$top", "$skiptoken", "$deltatoken"})
_KIND = "mailFolders"  # a message-delta token is refused here, and the reverse


@dataclass(frozen=True)
class FolderDeltaState:
    """What a folder-delta token carries: the mailbox (its root folder's id, new after a store
    ``reset``), the cursor ``(csn, serial)``, the round's ``$select`` and whether the round is
    the initial one (no ``@removed`` then)."""

    root: str
    csn: int
    serial: int
    select: tuple[str, ...] | None = None
    initial: bool = True

    def encode(self) -> str:
        return sign_token([_KIND, self.root, self.csn, self.serial, self.select, self.initial])

    @classmethod
    def decode(cls, token: str) -> FolderDeltaState | None:
        payload = read_token(token)
        if not isinstance(payload, list) or len(payload) != 6 or payload[0] != _KIND:
            return None
        _, root, csn, serial, select, initial = payload
        return cls(root, csn, serial, tuple(select) if select else None, initial)


def _state(request: GraphRequest) -> FolderDeltaState:
    token = option(request, "$skiptoken") or option(request, "$deltatoken")
    mailbox = request.mailbox
    root = mailbox.distinguished["msgfolderroot"].folder_id
    if not token:  # none, or the empty $deltatoken of a reset's Location: a new initial round
        select = selected(request, FOLDER_PROPERTIES, "microsoft.graph.mailFolder")
        return FolderDeltaState(root, -1, -1, select)
    state = FolderDeltaState.decode(token)
    if state is None:
        raise sync_state_not_found(request, "The token is not one this service issued.")
    if state.root != root:
        raise sync_state_not_found(request, "The token belongs to another mailbox.")
    if state.csn > mailbox.csn:
        raise sync_state_not_found(request, "The token outlived the mailbox's sync state.")
    return state


def changed_csn(mailbox: Mailbox, folder: Folder) -> int:
    """The CSN of the folder's last change: its own (``folder_csns``) or its items' (``log``)."""
    own = mailbox.folder_csns.get(folder.folder_id, 0)
    return max(own, folder.log_csns[-1] if folder.log_csns else 0)


def _entries(request: GraphRequest, state: FolderDeltaState) -> list[tuple[int, int, Any]]:
    """``(csn, serial, Folder | removed id)`` after the cursor, in page order."""
    mailbox = request.mailbox
    cursor = (state.csn, state.serial)
    found: list[tuple[int, int, Any]] = [
        (csn, folder.serial, folder)
        for folder in mail_folders(mailbox.distinguished["msgfolderroot"])
        if (csn := changed_csn(mailbox, folder), folder.serial) > cursor
    ]
    if not state.initial:
        found += [
            (csn, 0, folder_id)
            for folder_id, csn in mailbox.removed_folders.items()
            if (csn, 0) > cursor
        ]
    return sorted(found, key=lambda entry: (entry[0], entry[1]))


def _link(request: GraphRequest, query: str) -> str:
    return f"{request.base_url}/users/{quote(request.user, safe='')}/mailFolders/delta{query}"


def mail_folders_delta(request: GraphRequest) -> GraphAnswer:
    """One page of a folder delta round."""
    check_options(request, _OPTIONS)
    size = page_size(request)
    with request.store.lock:
        state = _state(request)
        entries = _entries(request, state)
        page, more = entries[:size], len(entries) > size
        value: list[dict[str, Any]] = []
        for _, _, entry in page:
            if isinstance(entry, str):
                value.append({"id": to_rest_id(entry), "@removed": {"reason": "deleted"}})
                continue
            rendered = folder_resource(entry)
            if state.select is not None:
                rendered = {name: rendered[name] for name in state.select}
            value.append(rendered)
        end = request.mailbox.csn
    body: dict[str, Any] = {
        "@odata.context": f"{request.base_url}/$metadata#Collection(mailFolder)"
    }
    if more:
        last_csn, last_serial, _ = page[-1]
        after = replace(state, csn=last_csn, serial=last_serial)
        body["@odata.nextLink"] = _link(request, f"?$skiptoken={after.encode()}")
    else:
        # Everything up to the mailbox's CSN now was listed: the next round starts after it
        # (serial past any folder's, so folders with exactly that CSN are not listed again).
        after = replace(state, csn=end, serial=1 << 62, initial=False)
        body["@odata.deltaLink"] = _link(request, f"?$deltatoken={after.encode()}")
    body["value"] = value
    applied = (f"odata.maxpagesize={size}",) if request.max_page_size is not None else ()
    return GraphAnswer(json=body, headers=answer_headers(request, *applied), schema=SCHEMA)


ROUTES: list[Route] = [
    Route("GET", "mailFolders/delta", mail_folders_delta, TEMPLATE, "user.mailFolder_delta"),
    Route("GET", "mailFolders/delta()", mail_folders_delta, TEMPLATE, "user.mailFolder_delta"),
]
