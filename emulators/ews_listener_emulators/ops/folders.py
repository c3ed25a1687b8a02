"""GetFolder, FindFolder and CreateFolder."""

from __future__ import annotations

from lxml import etree

from ews_listener_emulators.ops import OpContext, OpResult, Reply, operation, response, success
from ews_listener_emulators.ops._common import resolve_folder
from ews_listener_emulators.ops._render import folder_element
from ews_listener_emulators.soap import error_message, m, sub, t
from ews_listener_emulators.store import Folder, StoreError

__all__ = ["create_folder", "find_folder", "get_folder"]


@operation("GetFolder")
def get_folder(ctx: OpContext, request: etree._Element) -> OpResult:
    """Each requested folder (``t:FolderId`` or ``t:DistinguishedFolderId``)."""
    ids = request.find(m("FolderIds"))
    messages: list[etree._Element] = []
    for element in ids if ids is not None else ():
        try:
            with ctx.store.lock:
                folder = resolve_folder(ctx, element)
                rendered = folder_element(folder)
        except StoreError as exc:
            messages.append(
                error_message(
                    "GetFolderResponseMessage",
                    exc.code,
                    str(exc),
                    values=exc.values,
                    container="Folders",
                )
            )
            continue
        message = success("GetFolderResponseMessage")
        sub(message, m("Folders")).append(rendered)
        messages.append(message)
    return Reply(response("GetFolder", messages))


def _descendants(folder: Folder, deep: bool) -> list[Folder]:
    found: list[Folder] = []
    for child in folder.children:
        found.append(child)
        if deep:
            found.extend(_descendants(child, deep))
    return found


@operation("FindFolder")
def find_folder(ctx: OpContext, request: etree._Element) -> OpResult:
    """Child folders (``Shallow``) or the whole subtree (``Deep``) of each parent folder."""
    deep = request.get("Traversal") == "Deep"
    view = request.find(m("IndexedPageFolderView"))
    parents = request.find(m("ParentFolderIds"))
    messages: list[etree._Element] = []
    for element in parents if parents is not None else ():
        try:
            with ctx.store.lock:
                found = _descendants(resolve_folder(ctx, element), deep)
                total = len(found)
                offset = int(view.get("Offset") or 0) if view is not None else 0
                size = int(view.get("MaxEntriesReturned") or total) if view is not None else total
                page = found[offset : offset + size]
                rendered = [folder_element(f) for f in page]
        except StoreError as exc:
            messages.append(
                error_message("FindFolderResponseMessage", exc.code, str(exc), values=exc.values)
            )
            continue
        message = success("FindFolderResponseMessage")
        end = offset + len(page)
        root = sub(
            message,
            m("RootFolder"),
            attrib={
                "IndexedPagingOffset": str(end),
                "TotalItemsInView": str(total),
                "IncludesLastItemInRange": "true" if end >= total else "false",
            },
        )
        folders = sub(root, t("Folders"))
        for folder_xml in rendered:
            folders.append(folder_xml)
        messages.append(message)
    return Reply(response("FindFolder", messages))


@operation("CreateFolder")
def create_folder(ctx: OpContext, request: etree._Element) -> OpResult:
    """New user folders under the parent folder."""
    assert ctx.mailbox is not None
    parent_ref = request.find(f"{m('ParentFolderId')}/*")
    folders = request.find(m("Folders"))
    messages: list[etree._Element] = []
    for spec in folders if folders is not None else ():
        try:
            if parent_ref is None:
                raise StoreError("ErrorFolderNotFound", "No parent folder was given.")
            parent = resolve_folder(ctx, parent_ref)
            name = (spec.findtext(t("DisplayName")) or "").strip()
            if not name:
                raise StoreError("ErrorInvalidFolderName", "The folder name is empty.")
            folder_class = (spec.findtext(t("FolderClass")) or "IPF.Note").strip()
            folder = ctx.store.create_folder(parent.mailbox, parent, name, folder_class)
        except StoreError as exc:
            messages.append(
                error_message(
                    "CreateFolderResponseMessage",
                    exc.code,
                    str(exc),
                    values=exc.values,
                    container="Folders",
                )
            )
            continue
        message = success("CreateFolderResponseMessage")
        sub(message, m("Folders")).append(folder_element(folder, full=False))
        messages.append(message)
    return Reply(response("CreateFolder", messages))
