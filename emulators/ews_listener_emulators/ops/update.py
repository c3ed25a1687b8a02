"""UpdateItem, MoveItem, CopyItem, DeleteItem and CreateItem.

Moves give the item a new id (Exchange ids encode the folder); ``ReturnNewItemIds="false"`` leaves
them out. ``SoftDelete`` moves to ``recoverableitemsdeletions``, ``MoveToDeletedItems`` to
``deleteditems``, ``HardDelete`` removes. UpdateItem with a stale change key fails with
``ErrorIrresolvableConflict`` unless ``ConflictResolution="AlwaysOverwrite"``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime

from lxml import etree

from ews_listener_emulators.ops import OpContext, OpResult, Reply, operation, response, success
from ews_listener_emulators.ops._common import bool_text, find_item, resolve_folder
from ews_listener_emulators.soap import error_message, m, sub, t
from ews_listener_emulators.store import Address, Flag, Folder, Item, StoreError

__all__ = ["copy_item", "create_item", "delete_item", "move_item", "update_item"]

_IMPORTANCE = ("Low", "Normal", "High")


def _id_only(parent: etree._Element, item: Item) -> None:
    element = sub(parent, t(item.element))
    sub(element, t("ItemId"), attrib={"Id": item.item_id, "ChangeKey": item.change_key})


def _datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _strings(element: etree._Element | None) -> list[str]:
    if element is None:
        return []
    return [(s.text or "") for s in element if s.tag == t("String")]


def _addresses(element: etree._Element | None) -> list[Address]:
    if element is None:
        return []
    found = []
    for mailbox in element.iter(t("Mailbox")):
        email = (mailbox.findtext(t("EmailAddress")) or "").strip()
        if email:
            found.append(Address(email, (mailbox.findtext(t("Name")) or "").strip()))
    return found


_Change = Callable[[Item], None]


def _set_field(uri: str, source: etree._Element | None, append: bool) -> _Change:
    """The change a SetItemField/AppendToItemField (``source`` = the t:Message) makes."""

    def value(tag: str) -> etree._Element | None:
        return source.find(t(tag)) if source is not None else None

    if uri == "message:IsRead":
        new = bool_text(source.findtext(t("IsRead")) if source is not None else None)
        return lambda item: setattr(item, "is_read", new)
    if uri == "item:Categories":
        categories = _strings(value("Categories"))
        if append:
            return lambda item: item.categories.extend(
                c for c in categories if c not in item.categories
            )
        return lambda item: setattr(item, "categories", list(categories))
    if uri == "item:Importance":
        importance = (source.findtext(t("Importance")) if source is not None else None) or ""
        if importance not in _IMPORTANCE:
            raise StoreError("ErrorInvalidValueForProperty", f"Importance {importance!r}")
        return lambda item: setattr(item, "importance", importance)
    if uri == "item:Flag":
        flag_xml = value("Flag")
        flag = Flag()
        if flag_xml is not None:
            flag = Flag(
                status=(flag_xml.findtext(t("FlagStatus")) or "NotFlagged").strip(),
                start=_datetime(flag_xml.findtext(t("StartDate"))),
                due=_datetime(flag_xml.findtext(t("DueDate"))),
                complete=_datetime(flag_xml.findtext(t("CompleteDate"))),
            )
        return lambda item: setattr(item, "flag", flag)
    if uri == "item:Subject":
        subject = (source.findtext(t("Subject")) if source is not None else None) or ""
        return lambda item: setattr(item, "subject", subject)
    if uri == "item:Sensitivity":
        sensitivity = (source.findtext(t("Sensitivity")) if source is not None else None) or ""
        return lambda item: setattr(item, "sensitivity", sensitivity or "Normal")
    raise StoreError("ErrorInvalidPropertySet", f"The emulator cannot update the property {uri}.")


def _delete_field(uri: str) -> _Change:
    defaults: dict[str, Callable[[Item], None]] = {
        "item:Categories": lambda item: setattr(item, "categories", []),
        "item:Flag": lambda item: setattr(item, "flag", Flag()),
        "item:Importance": lambda item: setattr(item, "importance", "Normal"),
        "message:IsRead": lambda item: setattr(item, "is_read", False),
        "item:Subject": lambda item: setattr(item, "subject", ""),
    }
    if uri not in defaults:
        raise StoreError("ErrorInvalidPropertyDelete", f"The property {uri} cannot be deleted.")
    return defaults[uri]


def _changes(updates: etree._Element | None) -> tuple[list[_Change], bool]:
    """The changes of a ``t:Updates`` element and whether they only touch the read flag."""
    changes: list[_Change] = []
    uris: set[str] = set()
    for update in updates if updates is not None else ():
        kind = etree.QName(update).localname
        path = update.find(t("FieldURI"))
        uri = path.get("FieldURI") if path is not None else None
        if uri is None:
            raise StoreError("ErrorInvalidPropertySet", "Only t:FieldURI paths are supported.")
        uris.add(uri)
        item_xml = next((c for c in update if c.tag != t("FieldURI")), None)
        if kind == "DeleteItemField":
            changes.append(_delete_field(uri))
        else:
            changes.append(_set_field(uri, item_xml, append=kind == "AppendToItemField"))
    return changes, uris == {"message:IsRead"}


@operation("UpdateItem")
def update_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """Apply each ItemChange; the response carries the new change keys."""
    resolution = request.get("ConflictResolution") or "AutoResolve"
    changes_xml = request.find(m("ItemChanges"))
    messages: list[etree._Element] = []
    for change in changes_xml if changes_xml is not None else ():
        reference = change.find(t("ItemId"))
        try:
            if reference is None:
                raise StoreError("ErrorInvalidIdMalformed", "Only t:ItemId is supported.")
            with ctx.store.lock:
                item = find_item(ctx, reference.get("Id") or "")
                stale = reference.get("ChangeKey") not in (None, item.change_key)
                if stale and resolution != "AlwaysOverwrite":
                    raise StoreError(
                        "ErrorIrresolvableConflict",
                        "The send or update operation could not be performed because the change "
                        "key passed in the request does not match the current change key for "
                        "the item.",
                    )
                updates, read_only = _changes(change.find(t("Updates")))

                def apply(target: Item, updates: list[_Change] = updates) -> None:
                    for update in updates:
                        update(target)

                ctx.store.update(item, apply, read_only=read_only)
        except StoreError as exc:
            messages.append(
                error_message(
                    "UpdateItemResponseMessage",
                    exc.code,
                    str(exc),
                    values=exc.values,
                    container="Items",
                )
            )
            continue
        message = success("UpdateItemResponseMessage")
        _id_only(sub(message, m("Items")), item)
        conflicts = sub(message, m("ConflictResults"))
        sub(conflicts, t("Count"), "0")
        messages.append(message)
    return Reply(response("UpdateItem", messages))


def _move_or_copy(ctx: OpContext, request: etree._Element, name: str) -> OpResult:
    target_ref = request.find(f"{m('ToFolderId')}/*")
    ids = request.find(m("ItemIds"))
    return_ids = bool_text(request.get("ReturnNewItemIds"), default=True)
    tag = f"{name}ResponseMessage"
    messages: list[etree._Element] = []
    try:
        if target_ref is None:
            raise StoreError("ErrorFolderNotFound", "No ToFolderId was given.")
        destination: Folder | None = resolve_folder(ctx, target_ref)
        failure: StoreError | None = None
    except StoreError as exc:
        destination, failure = None, exc
    for reference in ids if ids is not None else ():
        try:
            if failure is not None:
                raise failure
            assert destination is not None
            with ctx.store.lock:
                item = find_item(ctx, reference.get("Id") or "")
                if name == "MoveItem":
                    result = ctx.store.move(item, destination)
                else:
                    result = ctx.store.copy(item, destination)
        except StoreError as exc:
            messages.append(
                error_message(tag, exc.code, str(exc), values=exc.values, container="Items")
            )
            continue
        message = success(tag)
        items = sub(message, m("Items"))
        if return_ids:
            _id_only(items, result)
        messages.append(message)
    return Reply(response(name, messages))


@operation("MoveItem")
def move_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """Move items to a folder; each gets a new id."""
    return _move_or_copy(ctx, request, "MoveItem")


@operation("CopyItem")
def copy_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """Copy items to a folder."""
    return _move_or_copy(ctx, request, "CopyItem")


@operation("DeleteItem")
def delete_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """HardDelete, SoftDelete (→ recoverableitemsdeletions) or MoveToDeletedItems."""
    assert ctx.mailbox is not None
    mode = request.get("DeleteType") or "MoveToDeletedItems"
    ids = request.find(m("ItemIds"))
    messages: list[etree._Element] = []
    for reference in ids if ids is not None else ():
        try:
            with ctx.store.lock:
                item = find_item(ctx, reference.get("Id") or "")
                if mode == "HardDelete":
                    ctx.store.delete(item)
                else:
                    deleted_items = ctx.mailbox.distinguished["deleteditems"]
                    # Deleting from Deleted Items goes one step further, as in Outlook/Exchange.
                    soft = mode == "SoftDelete" or item.folder is deleted_items
                    target = "recoverableitemsdeletions" if soft else "deleteditems"
                    ctx.store.move(item, ctx.mailbox.distinguished[target])
        except StoreError as exc:
            messages.append(
                error_message("DeleteItemResponseMessage", exc.code, str(exc), values=exc.values)
            )
            continue
        messages.append(success("DeleteItemResponseMessage"))
    return Reply(response("DeleteItem", messages))


def _new_item(ctx: OpContext, element: etree._Element) -> Item:
    mime = element.findtext(t("MimeContent"))
    item_class = (element.findtext(t("ItemClass")) or "IPM.Note").strip()
    if mime:
        try:
            raw = base64.b64decode(mime.strip(), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise StoreError("ErrorMimeContentInvalid", "MimeContent is not base64.") from exc
        item = ctx.store.parse(raw, item_class=item_class)
    else:
        body = element.find(t("Body"))
        is_html = body is not None and body.get("BodyType") == "HTML"
        text = body.text if body is not None else None
        senders = _addresses(element.find(t("From")))
        item = ctx.store.new_item(
            item_class=item_class,
            subject=element.findtext(t("Subject")) or "",
            text_body=None if is_html else text,
            html_body=text if is_html else None,
            to=_addresses(element.find(t("ToRecipients"))),
            cc=_addresses(element.find(t("CcRecipients"))),
            bcc=_addresses(element.find(t("BccRecipients"))),
            from_=senders[0] if senders else None,
            sender=senders[0] if senders else None,
            internet_message_id=element.findtext(t("InternetMessageId")),
        )
        from ews_listener_emulators.mailstore.mime import build_mime  # noqa: PLC0415 - rare path

        item.mime = build_mime(item)
    item.categories = _strings(element.find(t("Categories"))) or item.categories
    importance = element.findtext(t("Importance"))
    if importance in _IMPORTANCE:
        item.importance = importance
    item.is_read = bool_text(element.findtext(t("IsRead")), default=True)
    return item


@operation("CreateItem")
def create_item(ctx: OpContext, request: etree._Element) -> OpResult:
    """Save items (``SaveOnly``); ``SendOnly``/``SendAndSaveCopy`` deliver to local mailboxes."""
    assert ctx.mailbox is not None
    disposition = request.get("MessageDisposition") or "SaveOnly"
    saved_ref = request.find(f"{m('SavedItemFolderId')}/*")
    items_xml = request.find(m("Items"))
    messages: list[etree._Element] = []
    for element in items_xml if items_xml is not None else ():
        try:
            item = _new_item(ctx, element)
            # IsDraft is read-only in EWS: Exchange derives it from MSGFLAG_UNSENT, which a saved,
            # never-sent message has (whatever folder it is saved in, MIME imports included) and
            # a sent copy and delivered mail do not.
            item.is_draft = disposition == "SaveOnly"
            saved: Item | None = None
            if disposition in ("SaveOnly", "SendAndSaveCopy"):
                if saved_ref is not None:
                    folder = resolve_folder(ctx, saved_ref)
                else:
                    default = "drafts" if disposition == "SaveOnly" else "sentitems"
                    folder = ctx.mailbox.distinguished[default]
                saved = ctx.store.file(folder, item, new_mail=False)
            if disposition in ("SendOnly", "SendAndSaveCopy"):
                _send_locally(ctx, item)
        except StoreError as exc:
            messages.append(
                error_message(
                    "CreateItemResponseMessage",
                    exc.code,
                    str(exc),
                    values=exc.values,
                    container="Items",
                )
            )
            continue
        message = success("CreateItemResponseMessage")
        items = sub(message, m("Items"))
        if saved is not None and disposition == "SaveOnly":
            _id_only(items, saved)
        messages.append(message)
    return Reply(response("CreateItem", messages))


def _send_locally(ctx: OpContext, item: Item) -> None:
    """Deliver a sent message to the recipients that are mailboxes of this emulator."""
    for address in [*item.to, *item.cc, *item.bcc]:
        mailbox = ctx.store.mailbox(address.email)
        if mailbox is not None:
            copy = ctx.store.parse(item.mime, item_class=item.item_class)
            copy.is_read = False
            ctx.store.file(mailbox.distinguished["inbox"], copy)
