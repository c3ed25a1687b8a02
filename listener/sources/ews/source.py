"""The EWS implementation of :class:`listener.abc.MailSource`.

One ``EwsMailSource`` watches one folder of one mailbox. Sources of the same credential and endpoint
share one exchangelib ``Configuration`` (and so one ``Protocol`` with its session pool): a new
configuration per poll would make exchangelib cache a new ``Protocol`` every time and grow without
bound (DESIGN.md, "exchangelib facts").
"""

from __future__ import annotations

import binascii
import http.client
import threading
import xml.sax
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, TypeVar

import requests
import urllib3
from exchangelib import Account
from exchangelib import Message as EwsMessage
from exchangelib import errors as ews_errors
from exchangelib.folders import Folder, FolderCollection
from exchangelib.items import ALWAYS_OVERWRITE, ID_ONLY, MOVE_TO_DELETED_ITEMS, SAVE_ONLY
from exchangelib.queryset import Q

from listener.abc import ChangePage, FetchFailure, ItemRef, ProbeStep
from listener.errors import (
    Denied,
    Gone,
    ListenerError,
    SourceError,
    SyncStateLost,
    Throttled,
    TokenError,
    Unauthorized,
    Unavailable,
)
from listener.model import Attachment, Message
from listener.sources.ews._convert import FETCH_FIELDS, conversion_bug, to_message
from listener.sources.ews._folders import FolderResolver
from listener.sources.ews._services import (
    CreatedItems,
    ItemShape,
    MarkRead,
    MessageGetItem,
    SyncPrefix,
)
from listener.sources.ews._streaming import AttachmentStream, ElementNotFound, MimeStream, spool
from listener.sources.ews._transport import TokenBridge

__all__ = ["EwsMailSource", "translate_error"]

T = TypeVar("T")

# Errors that say the mailbox or the app's rights are wrong: retrying soon will not help.
_DENIED = (
    ews_errors.ErrorImpersonateUserDenied,
    ews_errors.ErrorImpersonationDenied,
    ews_errors.ErrorAccessDenied,
    ews_errors.ErrorInvalidExchangeImpersonationHeaderData,
    ews_errors.ErrorMailboxConfiguration,
)
_MISSING = (
    ews_errors.ErrorNonExistentMailbox,
    ews_errors.ErrorFolderNotFound,
    ews_errors.ErrorInvalidSmtpAddress,
)
# Errors that mean an item vanished between two requests (a person moved or deleted it).
_GONE = (ews_errors.ErrorItemNotFound, ews_errors.ErrorInvalidIdMalformed)
# SyncFolderItems' MaxChangesReturned: the most EWS allows. A large page keeps the read-flag
# changes our own mark_read causes from crowding the next page (one sync per 512 changes).
PAGE_LIMIT = 512
# m:Ignore of SyncFolderItems: at most this many of the items we tidied ourselves (the most
# recent); beyond it their changes come back as they did before (one sync page per 512).
IGNORE_LIMIT = 5_000
# Items a sync listed as created and the source has not tidied yet, kept from the last this many
# pages only (the poll's batches in flight come from the last two or three): a mailbox whose mail
# is never marked read (after_success = "none") keeps nothing for long.
REPORTED_PAGES = 4


def _one_item_may_be_at_fault(error: SourceError) -> bool:
    """The server answered, with an error that is about the content, not the mailbox or load."""
    cause = error.__cause__
    if isinstance(cause, _ITEM_LEVEL):
        return True
    return error.code in _ITEM_LEVEL_CODES


# Answers a single malformed or oversized item can provoke for the whole GetItem batch.
_ITEM_LEVEL = (
    ews_errors.ErrorInternalServerError,
    ews_errors.MalformedResponseError,
    ews_errors.ErrorCorruptData,
    ews_errors.ErrorItemCorrupt,
    ews_errors.ErrorMimeContentConversionFailed,
    ews_errors.ErrorResponseSchemaValidation,
)
_ITEM_LEVEL_CODES = frozenset(cls.__name__ for cls in _ITEM_LEVEL)


# What the server or the network did, as opposed to our code. Beyond exchangelib's and requests'
# own errors, a streamed answer (``_streaming``) is read from the raw socket, where urllib3 and
# http.client raise theirs unwrapped (a connection cut mid-body: ProtocolError), and parsed by
# SAX and base64 as it arrives (a truncated or corrupt answer). Anything else is a bug of ours
# (``conversion_bug``). Guarded by test_a_server_failure_while_streaming_content_is_transient.
_SERVER_OR_NETWORK = (
    ews_errors.EWSError,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    xml.sax.SAXException,
    binascii.Error,
    OSError,
)


def translate_error(error: BaseException) -> SourceError:
    """Map an exchangelib or HTTP failure to the typed :class:`SourceError` the pipeline knows."""
    code = type(error).__name__
    message = f"{code}: {error}"
    if isinstance(error, ews_errors.ErrorServerBusy):
        return Throttled(message, code="ErrorServerBusy", back_off=error.back_off)
    if isinstance(error, ews_errors.ErrorExceededConnectionCount):
        return Throttled(message, code=code, back_off=5.0)
    if isinstance(error, ews_errors.ErrorInvalidSyncStateData):
        return SyncStateLost(message, code=code)
    if isinstance(error, _DENIED):
        return Denied(message, code=code)
    if isinstance(error, _MISSING):
        return Gone(message, code=code)
    if isinstance(error, ews_errors.UnauthorizedError):
        return Unauthorized(
            f"{code}: Exchange rejected the access token (HTTP 401) even after a fresh one "
            f"({error}); if it says token_expired, compare this host's clock with the token "
            "endpoint's and Exchange's; otherwise check the app's full_access_as_app permission "
            "and EWSAllowedAppIDs",
            code="Unauthorized",
        )
    if isinstance(error, SourceError):
        return error
    # Connection errors, timeouts, 5xx, malformed responses, token outages: try again later.
    return Unavailable(message, code=code)


def _keep_last(ids: dict[str, Any], limit: int) -> None:
    """Drop the oldest of ``ids`` beyond ``limit`` (dicts keep insertion order)."""
    while len(ids) > limit:
        del ids[next(iter(ids))]


def _is_ews_state(state: str) -> bool:
    """EWS sync states are base64; another protocol's (a Graph delta link) is a URL."""
    return "://" not in state


class EwsMailSource:
    """One folder of one mailbox over EWS; implements ``MailSource`` and ``ContentLoader``."""

    kind = "ews"
    page_limit = PAGE_LIMIT

    def __init__(
        self,
        *,
        name: str,
        address: str,
        folder: str,
        account_factory: Callable[[], Account],
        bridge: TokenBridge,
        gate: Callable[[], Any],
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.mailbox = address
        self.folder = folder
        self._account_factory = account_factory
        self._account: Account | None = None
        self._bridge = bridge
        self._gate = gate
        self._observe = observe or (lambda operation, outcome: None)
        self._folders: FolderResolver | None = None
        self._watched: Folder | None = None
        self._item_shape: ItemShape | None = None  # GetItem's, built once
        self._sync_prefix: SyncPrefix | None = None  # SyncFolderItems', built once
        self._lock = threading.Lock()
        # Our own changes (mark read, categorise, move, delete) left out of the next syncs
        # (``changes``): the state the last page returned, the items created in the pages of
        # that chain and not tidied yet, and those tidied whose change may still be ahead.
        self._chain: set[str] = set()  # that state, and one it is as good as (``unchanged``)
        self._reported: dict[str, int] = {}  # item id -> the page that listed it
        self._pages = 0
        self._tidied: dict[str, None] = {}

    # --- plumbing ----------------------------------------------------------------------------

    @property
    def account(self) -> Account:
        if self._account is None:
            self._account = self._account_factory()
        return self._account

    @property
    def folders(self) -> FolderResolver:
        if self._folders is None:
            self._folders = FolderResolver(self.account)
        return self._folders

    def _call(self, fn: Callable[[], T], operation: str) -> T:
        """Run one EWS exchange under the credential's gate; recover once from a server-side 401."""
        for attempt in (1, 2):
            try:
                with self._gate():
                    result = fn()
                self._observe(operation, "ok")
                return result
            except Exception as e:
                self._observe(operation, type(e).__name__)
                if not isinstance(e, ews_errors.UnauthorizedError):
                    raise
                # Exchange rejected a token we believed valid (revoked, or clock skew): exchangelib
                # does not call refresh() for that, so fetch a new token and drop the sessions
                # that carry the old one.
                if attempt == 2:
                    raise
                self._bridge.server_rejected()
                self.account.protocol.close()
        raise AssertionError("unreachable")

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except SourceError:
            raise
        except _SERVER_OR_NETWORK as e:
            raise translate_error(e) from e
        except Exception as e:
            # TokenError and friends from the token provider: transient for the mailbox.
            if isinstance(e, TokenError):
                code = f"TokenError:{e.aadsts or e.error or 'unavailable'}"
                raise Unavailable(str(e), code=code) from e
            if isinstance(e, ListenerError):
                raise Unavailable(str(e), code=type(e).__name__) from e
            raise

    def watched_folder(self) -> Folder:
        if self._watched is None:
            with self._translated():
                self._watched = self._call(lambda: self.folders.resolve(self.folder), "GetFolder")
        return self._watched

    # --- MailSource ---------------------------------------------------------------------------

    def changes(self, sync_state: str | None, max_changes: int) -> ChangePage:
        """One SyncFolderItems page, leaving out the items this source tidied itself.

        Our own mark read (categorise, move, delete) is a change of the folder: without
        ``m:Ignore`` a backlog of 5,000 cost twice the sync pages, the second half read-flag
        changes of items already handed over. An item is ignored only when its creation is behind
        ``sync_state``: it was listed by a page of the chain that ended in this state (the
        normal poll, and the next poll from the state it committed); any other state (a poll
        from an older commit, a sync from the start) ignores nothing. It stays ignored until a
        page that reached the end of the folder (``IncludesLastItemInRange``) was asked for
        after it was tidied: its change is then behind the state. Guarded by
        tests/sources/test_ews_own_changes.py (an older state lists its mail again).
        """
        if sync_state is not None and not _is_ews_state(sync_state):
            raise SyncStateLost(
                "the stored sync state is not an EWS one (the mailbox used another protocol)",
                code="ForeignSyncState",
            )
        folder = self.watched_folder()
        with self._lock:
            if sync_state is None or sync_state not in self._chain:
                self._reported.clear()
                self._tidied.clear()
            ignore = [(item_id, None) for item_id in self._tidied]
        with self._translated():

            def page() -> ChangePage:
                svc = CreatedItems(account=self.account)
                if self._sync_prefix is None or self._sync_prefix.folder is not folder:
                    self._sync_prefix = SyncPrefix(svc, folder)
                svc.prefix = self._sync_prefix
                created: list[ItemRef] = []
                changes = 0
                for change_type, item_id in svc.call(
                    folder=folder,
                    shape=ID_ONLY,
                    additional_fields=set(),
                    sync_state=sync_state,
                    ignore=ignore,
                    max_changes_returned=max_changes,
                    sync_scope=None,
                ):
                    changes += 1
                    if change_type == CreatedItems.CREATE:
                        created.append(ItemRef(item_id))
                last = bool(svc.includes_last_item_in_range) or svc.sync_state == sync_state
                return ChangePage(
                    created=tuple(created),
                    sync_state=svc.sync_state,
                    last_page=last,
                    # Nothing listed and nothing left out (an m:Ignore may hide our own changes
                    # between the two states): a sync from the old state lists what one from
                    # the new state would (see ChangePage.unchanged).
                    unchanged=last and not changes and not ignore and sync_state is not None,
                )

            result = self._call(page, "SyncFolderItems")
        with self._lock:
            # An unchanged page's new state and the one asked with are the same position: the
            # poller may go on from either (it keeps the stored one, see Poller.poll).
            self._chain = {result.sync_state}
            if result.unchanged and sync_state is not None:
                self._chain.add(sync_state)
            if result.last_page:
                for item_id, _ in ignore:
                    self._tidied.pop(item_id, None)
            self._pages += 1
            for ref in result.created:
                self._reported.pop(ref.item_id, None)  # to the end: the dict stays in page order
                self._reported[ref.item_id] = self._pages
            # oldest first (insertion order): drop the pages before the last REPORTED_PAGES
            while self._reported and next(iter(self._reported.values())) <= (
                self._pages - REPORTED_PAGES
            ):
                del self._reported[next(iter(self._reported))]
        return result

    def _tidy(self, refs: Sequence[ItemRef], failed: Sequence[bool]) -> None:
        """``refs`` were changed by us (where not ``failed``): leave them out of the next syncs."""
        with self._lock:
            for ref, bad in zip(refs, failed, strict=True):
                if not bad and ref.item_id in self._reported:
                    del self._reported[ref.item_id]
                    self._tidied[ref.item_id] = None
            _keep_last(self._tidied, IGNORE_LIMIT)

    def current_state(self) -> str:
        state: str | None = None
        while True:
            page = self.changes(state, PAGE_LIMIT)
            state = page.sync_state
            if page.last_page:
                return state

    def unread(self) -> Sequence[ItemRef]:
        folder = self.watched_folder()
        with self._translated():

            def find() -> list[ItemRef]:
                query = FolderCollection(account=self.account, folders=[folder]).filter(
                    Q(is_read=False)
                )
                return [ItemRef(i.id) for i in query.only("id")]

            return self._call(find, "FindItem")

    def fetch(self, refs: Sequence[ItemRef]) -> list[Message | FetchFailure]:
        if not refs:
            return []
        ids: list[tuple[str, str | None]] = [(r.item_id, None) for r in refs]

        def get() -> list[Any]:
            # Account.fetch(ids, only_fields=FETCH_FIELDS), the items left as XML (_services)
            if self._item_shape is None:
                self._item_shape = ItemShape(self.account, FETCH_FIELDS)
            service = MessageGetItem(account=self.account, chunk_size=len(refs))
            return list(service.fetch(ids, self._item_shape))

        try:
            with self._translated():
                items = self._call(get, "GetItem")
        except SourceError as e:
            if not _one_item_may_be_at_fault(e):
                raise
            if len(refs) > 1:
                # The server answered the batch with an error that one bad item can cause (an
                # internal error, an answer it could not render): ask for each item alone, so one
                # poisoned message is parked and retried instead of blocking the mailbox.
                return [result for ref in refs for result in self.fetch([ref])]
            return [FetchFailure(refs[0], str(e), transient=True)]
        out: list[Message | FetchFailure] = []
        for ref, item in zip(refs, items, strict=True):
            if isinstance(item, BaseException):
                # A vanished item is not a server failure: retrying cannot bring it back
                # (ErrorItemNotFound maps to Unavailable, which says transient). Guarded by
                # tests/sources test_mail_deleted_for_good_is_gone.
                gone = isinstance(item, _GONE)
                out.append(
                    FetchFailure(
                        ref,
                        f"{type(item).__name__}: {item}",
                        gone=gone,
                        transient=not gone and translate_error(item).transient,
                    )
                )
                continue
            try:
                message = to_message(
                    item, mailbox=self.mailbox, folder=self.folder, account=self.account
                )
            except Exception as e:
                # Exchange answered and exchangelib parsed it: what failed is our conversion. Not
                # worth retrying for hours (the same item fails the same way): dead-letter it at
                # once, and say it is a bug to report (one item; its batch goes on).
                bug = conversion_bug("converting the item", e)
                out.append(FetchFailure(ref, str(bug), transient=False))
                continue
            out.append(message.bind(self))
        return out

    def _bulk(
        self,
        refs: Sequence[ItemRef],
        run: Callable[[list[tuple[str, str | None]]], list[Any]],
        operation: str,
    ) -> list[Any]:
        if not refs:
            return []
        ids: list[tuple[str, str | None]] = [(r.item_id, None) for r in refs]
        with self._translated():
            return self._call(lambda: run(ids), operation)

    @staticmethod
    def _errors(results: list[Any]) -> list[str | None]:
        return [
            f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else None for r in results
        ]

    def mark_read(self, refs: Sequence[ItemRef]) -> list[str | None]:
        def run(ids: list[tuple[str, str | None]]) -> list[Any]:
            # Account.bulk_update of Message(is_read=True) per id, built once (_services)
            return list(MarkRead(account=self.account).mark(ids))

        errors = self._errors(self._bulk(refs, run, "UpdateItem"))
        self._tidy(refs, [e is not None for e in errors])
        return errors

    def categorize(self, refs: Sequence[ItemRef], category: str) -> list[str | None]:
        # SetItemField replaces the whole list, so send what the item has plus the new one: read
        # the current categories in the same exchange to keep a person's own categories.
        def run(ids: list[tuple[str, str | None]]) -> list[Any]:
            current = list(self.account.fetch(ids=ids, only_fields=["categories"]))
            updates = []
            results: list[Any] = []
            for item in current:
                if isinstance(item, BaseException):
                    results.append(item)
                    continue
                categories = list(item.categories or [])
                if category not in categories:
                    categories.append(category)
                msg = EwsMessage(
                    account=self.account,
                    id=item.id,
                    changekey=item.changekey,
                    categories=categories,
                )
                updates.append((msg, ["categories"]))
                results.append(None)
            done = iter(
                self.account.bulk_update(
                    items=updates,
                    conflict_resolution=ALWAYS_OVERWRITE,
                    message_disposition=SAVE_ONLY,
                )
                if updates
                else []
            )
            return [next(done) if r is None else r for r in results]

        errors = self._errors(self._bulk(refs, run, "UpdateItem"))
        self._tidy(refs, [e is not None for e in errors])
        return errors

    def move(self, refs: Sequence[ItemRef], folder_path: str) -> list[ItemRef | str]:
        with self._translated():
            target = self._call(lambda: self.folders.resolve(folder_path, create=True), "GetFolder")

        def run(ids: list[tuple[str, str | None]]) -> list[Any]:
            return list(self.account.bulk_move(ids=ids, to_folder=target))

        out: list[ItemRef | str] = []
        for result in self._bulk(refs, run, "MoveItem"):
            if isinstance(result, BaseException):
                out.append(f"{type(result).__name__}: {result}")
            elif isinstance(result, tuple):
                out.append(ItemRef(result[0]))
            else:
                out.append(ItemRef(result.id))
        self._tidy(refs, [isinstance(r, str) for r in out])
        return out

    def delete(self, refs: Sequence[ItemRef]) -> list[str | None]:
        def run(ids: list[tuple[str, str | None]]) -> list[Any]:
            return list(
                self.account.bulk_delete(
                    ids=ids, delete_type=MOVE_TO_DELETED_ITEMS, suppress_read_receipts=True
                )
            )

        errors = self._errors(self._bulk(refs, run, "DeleteItem"))
        self._tidy(refs, [e is not None for e in errors])
        return errors

    def find(self, folder_path: str, internet_message_id: str) -> ItemRef | None:
        with self._translated():
            folder = self._call(lambda: self.folders.resolve(folder_path), "GetFolder")

            def first() -> ItemRef | None:
                found = folder.filter(message_id=internet_message_id).only("id")
                for item in found[:1]:
                    return ItemRef(item.id)
                return None

            return self._call(first, "FindItem")

    def probe(self) -> Iterator[ProbeStep]:
        """Token, impersonation, folder and item count, each a step; stops at the first failure."""
        step = "token"
        try:
            token = self._bridge.provider.get_token()
            expires = token.expires_at.isoformat(timespec="seconds")
            yield ProbeStep("token", True, f"expires {expires}")
            step = "folder"
            folder = self.watched_folder()
            yield ProbeStep("folder", True, f"{self.folder!r} opened with impersonation")
            step = "items"
            total = folder.total_count if folder.total_count is not None else "?"
            unread = len(self.unread())
            yield ProbeStep("items", True, f"{total} item(s), {unread} unread")
        except Exception as e:
            # Exchange's ErrorNonExistentMailbox does not say which address it looked for.
            where = f"mailbox {self.mailbox}, folder {self.folder!r}"
            yield ProbeStep(step, False, f"{type(e).__name__}: {e} ({where})")

    def close(self) -> None:
        # Sessions belong to the shared Protocol; its owner (EwsConnections) closes them.
        self._account = None

    # --- ContentLoader ------------------------------------------------------------------------

    def open_mime(self, message: Message) -> IO[bytes]:
        """The item's MIME, streamed from GetItem into a spooled file (see ``_streaming``)."""

        def chunks() -> Iterator[bytes]:
            try:
                yield from MimeStream(account=self.account).mime(message.item_id)
            except ElementNotFound:
                return  # an item without MimeContent (exchangelib's mime_content was None)

        return self._content(chunks, "GetItem", f"the MIME content of {message.subject!r}")

    def open_attachment(self, message: Message, attachment: Attachment) -> IO[bytes]:
        """An attachment's content, streamed from GetAttachment into a spooled file."""

        def chunks() -> Iterator[bytes]:
            stream = AttachmentStream(account=self.account)
            try:
                yield from stream.content(attachment.attachment_id, item=attachment.kind == "item")
            except ElementNotFound:
                # Exchange may leave t:Content out for an empty file; exchangelib's own
                # FileAttachment.content then fell back to a request it cannot make ("must have
                # an account"), which dead-lettered such mail (issue 11, point 5).
                if attachment.size == 0 or attachment.kind == "item":
                    return
                raise Unavailable(
                    f"GetAttachment answered without the content of {attachment.name!r} "
                    f"({attachment.size} bytes)",
                    code="ContentMissing",
                ) from None

        return self._content(chunks, "GetAttachment", f"attachment {attachment.name!r}")

    def _content(
        self, chunks: Callable[[], Iterator[bytes]], operation: str, what: str
    ) -> IO[bytes]:
        try:
            with self._translated():
                return self._call(lambda: spool(chunks()), operation)
        except SourceError:
            raise  # the server's or the network's answer, or our token: may heal
        except Exception as e:
            # Everything _translated lets through is our code (or exchangelib used wrongly): a bug
            # that retrying cannot fix, reported once with its traceback and dead-lettered.
            raise conversion_bug(f"reading {what}", e) from e

    def ref(self, message: Message) -> ItemRef:
        return ItemRef(message.item_id)
