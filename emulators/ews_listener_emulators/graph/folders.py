"""``mailFolders`` and ``childFolders``: the mail folders of a mailbox, as Graph v1.0 shows them.

Shapes follow ``microsoft.graph.mailFolder`` in the OpenAPI description (``id``, ``displayName``,
``parentFolderId``, ``childFolderCount``, ``unreadItemCount``, ``totalItemCount``, ``isHidden``).
``users/{user}/mailFolders`` lists the folders under the message folder root, as Exchange does:
mail folders only (``IPF.Note`` and its subclasses; no Calendar, Contacts, Tasks …), by display
name, ten a page (Exchange's default for mail folders) with ``$skip`` in ``@odata.nextLink``.
A folder is named by its REST id or by a well-known name (``inbox``, ``archive`` …, ``_ids``).
``DELETE mailFolders/{id}`` removes a user folder with what it holds (``MailStore.delete_folder``);
``mailFolders/delta`` is ``folder_delta``.
"""

from __future__ import annotations

from typing import Any

from ews_listener_emulators.graph._contract import GraphAnswer, GraphError, GraphRequest, Route
from ews_listener_emulators.graph._ids import folder_for, folder_id, to_ews_id
from ews_listener_emulators.graph._odata import collection, context_user, selected
from ews_listener_emulators.mailstore.model import well_formed_id
from ews_listener_emulators.store import Folder, StoreError

__all__ = ["FOLDER_PROPERTIES", "ROUTES", "folder_resource", "mail_folders", "resolve_folder"]

PAGE_SIZE = 10
_NOT_EMULATED = ("$filter", "$orderby", "$expand", "$search")
_TYPE = "microsoft.graph.mailFolder"
_SCHEMA = "#/components/schemas/microsoft.graph.mailFolder"
FOLDER_PROPERTIES = (
    "id",
    "displayName",
    "parentFolderId",
    "childFolderCount",
    "unreadItemCount",
    "totalItemCount",
    "isHidden",
)


def _is_mail_folder(folder: Folder) -> bool:
    return folder.folder_class == "IPF.Note" or folder.folder_class.startswith("IPF.Note.")


def _mail_children(folder: Folder) -> list[Folder]:
    return sorted(
        (child for child in folder.children if _is_mail_folder(child)),
        key=lambda child: child.name.lower(),
    )


def mail_folders(root: Folder) -> list[Folder]:
    """Every mail folder below ``root``, each before its children (mailFolders/delta)."""
    found: list[Folder] = []
    for child in _mail_children(root):
        found += [child, *mail_folders(child)]
    return found


def folder_resource(folder: Folder) -> dict[str, Any]:
    """A ``microsoft.graph.mailFolder`` (call with the store's lock held: counts are live)."""
    return {
        "id": folder_id(folder),
        "displayName": folder.name,
        "parentFolderId": folder_id(folder.parent) if folder.parent is not None else None,
        "childFolderCount": len(_mail_children(folder)),
        "unreadItemCount": folder.unread_count,
        "totalItemCount": len(folder.items),
        "isHidden": False,
    }


def resolve_folder(request: GraphRequest, token: str) -> Folder:
    """The folder ``token`` names; 400 ``ErrorInvalidIdMalformed`` or 404 ``ErrorItemNotFound``."""
    folder = folder_for(request.store, request.mailbox, token)
    if folder is not None:
        return folder
    if not well_formed_id(to_ews_id(token), b"F"):
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
    raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def _shaped(request: GraphRequest, folders: list[Folder]) -> tuple[list[dict[str, Any]], str]:
    """The folders as JSON with ``$select`` applied, and the context suffix it implies."""
    for option in _NOT_EMULATED:
        if option in request.query:
            # Graph can filter and sort folders; this emulator cannot, and says so rather
            # than answer as if it had.
            raise GraphError(501, "NotImplemented", f"{option} on mail folders is not emulated.")
    fields = selected(request, FOLDER_PROPERTIES, _TYPE)
    with request.store.lock:
        entries = [folder_resource(folder) for folder in folders]
    if fields is None:
        return entries, ""
    return [{name: entry[name] for name in fields} for entry in entries], f"({','.join(fields)})"


def list_folders(request: GraphRequest) -> GraphAnswer:
    root = request.mailbox.distinguished["msgfolderroot"]
    with request.store.lock:
        folders = _mail_children(root)
    entries, suffix = _shaped(request, folders)
    context = f"{request.base_url}/$metadata#{context_user(request)}/mailFolders{suffix}"
    return GraphAnswer(json=collection(request, entries, context, page_size=PAGE_SIZE))


def get_folder(request: GraphRequest) -> GraphAnswer:
    folder = resolve_folder(request, request.params["folder"])
    entries, suffix = _shaped(request, [folder])
    context = f"{request.base_url}/$metadata#{context_user(request)}/mailFolders{suffix}/$entity"
    return GraphAnswer(json={"@odata.context": context, **entries[0]})


def list_children(request: GraphRequest) -> GraphAnswer:
    token = request.params["folder"]
    parent = resolve_folder(request, token)
    with request.store.lock:
        folders = _mail_children(parent)
    entries, suffix = _shaped(request, folders)
    context = (
        f"{request.base_url}/$metadata#{context_user(request)}"
        f"/mailFolders('{token}')/childFolders{suffix}"
    )
    return GraphAnswer(json=collection(request, entries, context, page_size=PAGE_SIZE))


def get_child(request: GraphRequest) -> GraphAnswer:
    token = request.params["folder"]
    parent = resolve_folder(request, token)
    child = resolve_folder(request, request.params["child"])
    if child.parent is not parent:
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )
    entries, suffix = _shaped(request, [child])
    context = (
        f"{request.base_url}/$metadata#{context_user(request)}"
        f"/mailFolders('{token}')/childFolders{suffix}/$entity"
    )
    return GraphAnswer(json={"@odata.context": context, **entries[0]}, schema=_SCHEMA)


def _create(request: GraphRequest, parent: Folder, context: str) -> GraphAnswer:
    body = request.json()
    name = body.get("displayName") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise GraphError(400, "ErrorInvalidRequest", "The displayName property is required.")
    if body.get("isHidden") is True:
        # Hidden folders (isHidden true, includeHiddenFolders) are not emulated; say so
        # rather than answer isHidden false for a folder the client asked to hide.
        raise GraphError(501, "NotImplemented", "Hidden folders are not emulated.")
    try:
        folder = request.store.create_folder(request.mailbox, parent, name.strip())
    except StoreError as exc:
        if exc.code == "ErrorFolderExists":
            raise GraphError(409, exc.code, str(exc)) from None
        raise GraphError(400, exc.code, str(exc)) from None
    with request.store.lock:
        entry = folder_resource(folder)
    return GraphAnswer(status=201, json={"@odata.context": context, **entry})


def create_top_folder(request: GraphRequest) -> GraphAnswer:
    root = request.mailbox.distinguished["msgfolderroot"]
    context = f"{request.base_url}/$metadata#{context_user(request)}/mailFolders/$entity"
    return _create(request, root, context)


def create_child(request: GraphRequest) -> GraphAnswer:
    token = request.params["folder"]
    parent = resolve_folder(request, token)
    context = (
        f"{request.base_url}/$metadata#{context_user(request)}"
        f"/mailFolders('{token}')/childFolders/$entity"
    )
    return _create(request, parent, context)


def delete_folder(request: GraphRequest) -> GraphAnswer:
    """DELETE a user folder, its subfolders and their messages (204); a well-known folder is
    refused as EWS DeleteFolder refuses a distinguished one."""
    folder = resolve_folder(request, request.params["folder"])
    try:
        request.store.delete_folder(folder)
    except StoreError as exc:
        raise GraphError(403, exc.code, str(exc)) from None
    return GraphAnswer(status=204)


_FOLDERS = "/users/{user-id}/mailFolders"
_FOLDER = _FOLDERS + "/{mailFolder-id}"
_CHILDREN = _FOLDER + "/childFolders"

ROUTES: list[Route] = [
    Route("GET", "mailFolders", list_folders, _FOLDERS, "user_ListMailFolder"),
    Route("POST", "mailFolders", create_top_folder, _FOLDERS, "user_CreateMailFolder"),
    Route("GET", "mailFolders/{folder}", get_folder, _FOLDER, "user_GetMailFolder"),
    Route("DELETE", "mailFolders/{folder}", delete_folder, _FOLDER, "user_DeleteMailFolder"),
    Route(
        "GET",
        "mailFolders/{folder}/childFolders",
        list_children,
        _CHILDREN,
        "user.mailFolder_ListChildFolder",
    ),
    Route(
        "POST",
        "mailFolders/{folder}/childFolders",
        create_child,
        _CHILDREN,
        "user.mailFolder_CreateChildFolder",
    ),
    # Not in the description's subset (it stops at childFolders); the answer is a mailFolder.
    Route(
        "GET",
        "mailFolders/{folder}/childFolders/{child}",
        get_child,
        _CHILDREN + "/{mailFolder-id1}",
        "user.mailFolder_GetChildFolder",
    ),
]
