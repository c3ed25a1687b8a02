"""FindItem and GetItem.

FindItem pages with ``IndexedPageItemView``; Exchange Online caps a page at 1000 items (a larger
``MaxEntriesReturned`` returns 1000 and ``IncludesLastItemInRange=false``), and a FindItem without
a paging view over more than 1000 matches fails with ``ErrorExceededFindCountLimit`` and a
``PolicyLimit`` value (php-ews#143 shows that response).
"""

from __future__ import annotations

from lxml import etree

from ews_listener_emulators.ops import OpContext, OpResult, Reply, operation, response, success
from ews_listener_emulators.ops._common import find_item as find_item_by_id
from ews_listener_emulators.ops._common import resolve_folder
from ews_listener_emulators.ops._query import compile_restriction, sort_items
from ews_listener_emulators.ops._render import item_element, parse_shape
from ews_listener_emulators.soap import error_message, m, sub, t
from ews_listener_emulators.store import StoreError

__all__ = ["FIND_COUNT_LIMIT", "find_item", "get_item"]

FIND_COUNT_LIMIT = 1000


@operation("FindItem")
def find_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """Items of each parent folder that match the restriction, sorted and paged."""
    shape = parse_shape(request.find(m("ItemShape")))
    predicate = compile_restriction(request.find(m("Restriction")))
    sort_order = request.find(m("SortOrder"))
    view = request.find(m("IndexedPageItemView"))
    parents = request.find(m("ParentFolderIds"))
    messages: list[etree._Element] = []
    for parent in parents if parents is not None else ():
        try:
            folder = resolve_folder(ctx, parent)
        except StoreError as exc:
            messages.append(
                error_message("FindItemResponseMessage", exc.code, str(exc), values=exc.values)
            )
            continue
        with ctx.store.lock:
            candidates = list(folder.items.values())
            matched = [i for i in candidates if predicate is None or predicate(i)]
            ordered = sort_items(matched, sort_order)
            total = len(ordered)
            if view is None:
                if total > FIND_COUNT_LIMIT:
                    messages.append(
                        error_message(
                            "FindItemResponseMessage",
                            "ErrorExceededFindCountLimit",
                            "You have exceeded the maximum number of objects that can be "
                            "returned for the find operation. Use paging to reduce the result "
                            "size and try your request again.",
                            values={"PolicyLimit": str(FIND_COUNT_LIMIT)},
                        )
                    )
                    continue
                start, page = 0, ordered
            else:
                wanted = int(view.get("MaxEntriesReturned") or FIND_COUNT_LIMIT)
                size = max(0, min(wanted, FIND_COUNT_LIMIT))
                offset = max(0, int(view.get("Offset") or 0))
                if view.get("BasePoint") == "End":
                    end = max(0, total - offset)
                    start = max(0, end - size)
                    page = ordered[start:end]
                else:
                    start = min(offset, total)
                    page = ordered[start : start + size]
            rendered = [item_element(i, shape, owner=ctx.mailbox) for i in page]
        message = success("FindItemResponseMessage")
        next_offset = start + len(page)
        root = sub(
            message,
            m("RootFolder"),
            attrib={
                "IndexedPagingOffset": str(next_offset),
                "TotalItemsInView": str(total),
                "IncludesLastItemInRange": "true" if next_offset >= total else "false",
            },
        )
        items = sub(root, t("Items"))
        for element in rendered:
            items.append(element)
        messages.append(message)
    ctx.notes["items"] = sum(len(x) for x in messages)
    return Reply(response("FindItem", messages))


@operation("GetItem")
def get_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """Each requested item in the requested shape, or ``ErrorItemNotFound`` for it."""
    assert ctx.mailbox is not None
    shape = parse_shape(request.find(m("ItemShape")))
    ids = request.find(m("ItemIds"))
    messages: list[etree._Element] = []
    subjects: list[str] = []
    with ctx.store.lock:
        for element in ids if ids is not None else ():
            try:
                item = find_item_by_id(ctx, element.get("Id") or "")
            except StoreError as exc:
                messages.append(
                    error_message(
                        "GetItemResponseMessage",
                        exc.code,
                        str(exc),
                        values=exc.values,
                        container="Items",
                    )
                )
                continue
            message = success("GetItemResponseMessage")
            sub(message, m("Items")).append(item_element(item, shape, owner=ctx.mailbox))
            messages.append(message)
            subjects.append(item.subject)
    ctx.notes["detail"] = "; ".join(subjects)
    return Reply(response("GetItem", messages))
