"""SyncFolderItems with an opaque, tamper-evident sync state.

The state is base64 of (format byte, folder serial, change sequence number) followed
by an HMAC-SHA256 (truncated to 16 bytes) under the emulator's ``sync_key``: it really encodes the
position, a client cannot forge or edit it, and a state from another folder or another emulator
run (or from before ``reset()``: folders get new serials) fails. A bad state is answered as
Exchange does: ``ErrorInvalidSyncStateData`` in the response message with an empty
``SyncState`` (exchangelib raises ``ErrorInvalidSyncStateData``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Mapping

from lxml import etree

from ews_listener_emulators.ops import (
    OpContext,
    OpFault,
    OpResult,
    Reply,
    operation,
    response,
    success,
)
from ews_listener_emulators.ops._common import resolve_folder
from ews_listener_emulators.ops._render import item_element, parse_shape
from ews_listener_emulators.soap import error_message, m, sub, t
from ews_listener_emulators.store import Folder, StoreError

__all__ = ["MAX_CHANGES", "decode_state", "encode_state", "sync_folder_items"]

MAX_CHANGES = 512
_FORMAT = struct.Struct(">BQQ")
_VERSION = 1


def encode_state(key: bytes, folder: Folder, csn: int) -> str:
    """The sync state for ``folder`` at change sequence number ``csn``."""
    payload = _FORMAT.pack(_VERSION, folder.serial, csn)
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return base64.b64encode(payload + mac).decode("ascii")


def decode_state(key: bytes, folder: Folder, state: str) -> int | None:
    """The CSN encoded in ``state``, or None when it is not a valid state of ``folder``."""
    try:
        raw = base64.b64decode(state.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _FORMAT.size + 16:
        return None
    payload, mac = raw[: _FORMAT.size], raw[_FORMAT.size :]
    if not hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest()[:16], mac):
        return None
    version, serial, csn = _FORMAT.unpack(payload)
    if version != _VERSION or serial != folder.serial or csn > folder.mailbox.csn:
        return None
    return int(csn)


def _error(code: str, text: str, *, values: Mapping[str, str] | None = None) -> etree._Element:
    message = error_message("SyncFolderItemsResponseMessage", code, text, values=values)
    sub(message, m("SyncState"), "")
    sub(message, m("IncludesLastItemInRange"), "true")
    return message


@operation("SyncFolderItems")
def sync_folder_items(ctx: OpContext, request: etree._Element) -> OpResult:
    """Create/Update/Delete/ReadFlagChange since the given state, at most MaxChangesReturned."""
    key = ctx.emulator.sync_key
    shape = parse_shape(request.find(m("ItemShape")))
    reference = request.find(f"{m('SyncFolderId')}/*")
    max_text = (request.findtext(m("MaxChangesReturned")) or "").strip()
    try:
        max_changes = int(max_text)
    except ValueError:
        max_changes = 0
    if not 1 <= max_changes <= MAX_CHANGES:
        # messages.xsd restricts MaxChangesReturned to 1-512, so Exchange's schema check refuses
        # it; answer the same way when schema validation is off.
        raise OpFault(
            "ErrorSchemaValidation",
            f"The request failed schema validation: MaxChangesReturned must be 1-{MAX_CHANGES}.",
        )
    ignore_list = request.find(m("Ignore"))
    ignore = [e.get("Id") or "" for e in ignore_list] if ignore_list is not None else []
    try:
        if reference is None:
            raise StoreError("ErrorFolderNotFound", "No SyncFolderId was given.")
        with ctx.store.lock:
            folder = resolve_folder(ctx, reference)
            state = (request.findtext(m("SyncState")) or "").strip()
            since = decode_state(key, folder, state) if state else 0
            if since is None:
                message = _error(
                    "ErrorInvalidSyncStateData",
                    "Synchronization state data is corrupt or otherwise invalid.",
                )
                return Reply(response("SyncFolderItems", [message]))
            changes, position, last = ctx.store.sync(folder, since, max_changes, ignore)
            message = success("SyncFolderItemsResponseMessage")
            sub(message, m("SyncState"), encode_state(key, folder, position))
            sub(message, m("IncludesLastItemInRange"), "true" if last else "false")
            container = sub(message, m("Changes"))
            for change in changes:
                entry = sub(container, t(change.kind))
                if change.kind in ("Create", "Update") and change.item is not None:
                    entry.append(item_element(change.item, shape, owner=ctx.mailbox))
                elif change.kind == "Delete":
                    sub(entry, t("ItemId"), attrib={"Id": change.item_id})
                else:
                    item = change.item
                    assert item is not None
                    sub(
                        entry,
                        t("ItemId"),
                        attrib={"Id": item.item_id, "ChangeKey": item.change_key},
                    )
                    sub(entry, t("IsRead"), "true" if change.is_read else "false")
    except StoreError as exc:
        message = _error(exc.code, str(exc), values=exc.values)
    changed = message.find(m("Changes"))
    ctx.notes["changes"] = len(changed) if changed is not None else 0
    return Reply(response("SyncFolderItems", [message]))
