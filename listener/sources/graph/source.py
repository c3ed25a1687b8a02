"""The Microsoft Graph implementation of :class:`listener.abc.MailSource` (delta queries).

One ``GraphMailSource`` watches one folder of one mailbox through ``_client.GraphClient`` (shared
by the mailboxes of a credential and endpoint). Sync states are the ``@odata.nextLink`` /
``@odata.deltaLink`` URLs Graph returned; ids are immutable ids (``Prefer: IdType=
"ImmutableId"``), so a message keeps its id when it moves.

Requests per message: a delta page already carries every property a ``Message`` needs
(``_convert.MESSAGE_SELECT``); they are kept in a bounded cache keyed by id, so ``fetch`` reads
the server only for what a delta page cannot give: attachment metadata (delta takes no
``$expand``) and the text rendering of an HTML body (one body type per request), both in
``$batch`` parts of 20. Post-processing goes in ``$batch`` too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

import structlog

from listener.abc import ChangePage, FetchFailure, ItemRef, ProbeStep, TokenProvider
from listener.errors import Gone, PermanentError, SourceError, SyncStateLost
from listener.model import Attachment, Message
from listener.sources.graph._client import GraphClient, SubRequest, SubResponse
from listener.sources.graph._convert import (
    ATTACHMENT_SELECT,
    MESSAGE_SELECT,
    is_html,
    needs_attachments,
    to_message,
)

__all__ = ["DEFAULT_PAGE_LIMIT", "ConversionError", "GraphMailSource"]

log = structlog.get_logger("listener.sources.graph")

#: ``Prefer: odata.maxpagesize`` of a delta round (tests/graph_source/test_page_size.py, 600
#: messages on the emulator: 50 → 13 requests 1.28 s, 100 → 6 / 1.27 s, 200 → 3 / 1.09 s,
#: 500 → 2 / 0.74 s, 1000 → 1 / 1.13 s). Past 200 a round saves at most one request per few
#: hundred messages, while what a page holds in memory (every body, in the delta cache) and
#: what a crash makes the poller redo (one page is one commit) grow with it.
DEFAULT_PAGE_LIMIT = 200
#: The largest page Graph serves for message collections (list-messages: ``$top`` 1-1000).
_WALK_PAGE = 1000
_CACHE_SIZE = 2000
_TEXT = 'outlook.body-content-type="text"'
_WELL_KNOWN = frozenset(
    {
        "archive",
        "clutter",
        "conflicts",
        "conversationhistory",
        "deleteditems",
        "drafts",
        "inbox",
        "junkemail",
        "localfailures",
        "msgfolderroot",
        "outbox",
        "recoverableitemsdeletions",
        "scheduled",
        "searchfolders",
        "sentitems",
        "serverfailures",
        "syncissues",
    }
)
# What people type for the well-known ones (the same words the EWS resolver takes).
_ALIASES = {
    "deleted items": "deleteditems",
    "sent items": "sentitems",
    "junk email": "junkemail",
    "junk e-mail": "junkemail",
    "top of information store": "msgfolderroot",
    "root": "msgfolderroot",
}


class ConversionError(PermanentError):
    """Our code failed on what Graph sent: a bug, dead-lettered at once (see EWS's twin)."""


def conversion_bug(doing: str, error: Exception) -> ConversionError:
    log.error(
        "graph.conversion_bug",
        doing=doing,
        error=f"{type(error).__name__}: {error}",
        exc_info=error,
    )
    return ConversionError(
        f"bug in ews-listener's Graph conversion ({doing}): {type(error).__name__}: {error}; "
        "not retried: please report it with the graph.conversion_bug traceback from the log, "
        "then `dead-letters replay` once fixed"
    )


def _split(path: str) -> list[str]:
    return [p.strip() for p in path.strip().strip("/").split("/") if p.strip()]


def _odata_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class GraphMailSource:
    """One folder of one mailbox over Graph; implements ``MailSource`` and ``ContentLoader``."""

    kind = "graph"

    def __init__(
        self,
        *,
        name: str,
        address: str,
        folder: str,
        client: GraphClient,
        tokens: TokenProvider,
        page_limit: int = DEFAULT_PAGE_LIMIT,
    ) -> None:
        self.name = name
        self.mailbox = address
        self.folder = folder
        self.page_limit = page_limit
        self._client = client
        self._tokens = tokens
        self._user = f"users/{quote(address, safe='@')}"
        self._folders: dict[str, str] = {}  # lower-cased path → folder id
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GraphMailSource({self.mailbox!r}, folder={self.folder!r})"

    # --- plumbing ----------------------------------------------------------------------------

    def _get(self, operation: str, url: str, **kw: Any) -> Any:
        return self._client.request(self.mailbox, operation, "GET", url, **kw)

    def _remember(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._cache[data["id"]] = data
            self._cache.move_to_end(data["id"])
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _take_cached(self, item_id: str) -> dict[str, Any] | None:
        """What the delta page said of ``item_id``, once: the fetch that follows the page uses
        it; any later fetch (a retry, a replay) asks the server, so mail a person deleted since
        is gone, not a stale Message."""
        with self._lock:
            data = self._cache.pop(item_id, None)
        # A page read with another $select (an ids-only round) is not enough for a Message.
        return data if data is not None and "internetMessageId" in data else None

    def _batch(self, operation: str, requests: Sequence[SubRequest]) -> list[SubResponse]:
        return self._client.batch(self.mailbox, operation, requests) if requests else []

    # --- folders -----------------------------------------------------------------------------

    def folder_id(self, path: str, *, create: bool = False) -> str:
        """The id of the folder at ``path`` (a well-known name first, then display names),
        resolved once and cached; ``create`` makes the missing levels."""
        key = "/".join(p.lower() for p in _split(path))
        with self._lock:
            found = self._folders.get(key)
        if found is not None:
            return found
        parts = _split(path)
        if not parts:
            raise Gone(f"empty folder path {path!r}", code="FolderPath")
        first = _ALIASES.get(parts[0].lower(), parts[0].lower())
        if first in _WELL_KNOWN:
            folder = self._get("getMailFolder", f"{self._user}/mailFolders/{first}?$select=id")
            current, rest = str(folder["id"]), parts[1:]
        else:
            current, rest = None, parts
        for part in rest:
            current = self._child(current, part, create=create, path=path)
        assert current is not None
        with self._lock:
            self._folders[key] = current
        return current

    def _child(self, parent: str | None, name: str, *, create: bool, path: str) -> str:
        base = f"{self._user}/mailFolders" + (f"/{parent}/childFolders" if parent else "")
        for page in self._client.pages(
            self.mailbox, "listMailFolders", f"{base}?$select=id,displayName&$top=100"
        ):
            for folder in page.get("value", []):
                if str(folder.get("displayName", "")).lower() == name.lower():
                    return str(folder["id"])
        if not create:
            raise Gone(
                f"mailbox {self.mailbox} has no folder {name!r} (path {path!r}); create it or "
                "fix the folder setting",
                code="ErrorFolderNotFound",
            )
        made = self._client.request(
            self.mailbox, "createMailFolder", "POST", base, json_body={"displayName": name}
        )
        return str(made["id"])

    def watched_folder_id(self) -> str:
        return self.folder_id(self.folder)

    # --- MailSource ---------------------------------------------------------------------------

    def _delta_url(self, *, select: Sequence[str]) -> str:
        folder = self.watched_folder_id()
        return (
            f"{self._client.url(self._user)}/mailFolders/{folder}/messages/delta"
            f"?changeType=created&$select={','.join(select)}"
        )

    def _check_state(self, sync_state: str) -> None:
        """A state that is not one of our delta links (an EWS state after a protocol switch,
        another endpoint's or folder's link) is lost: no request is sent with it."""
        root = urlsplit(self._client.url(self._user))
        link = urlsplit(sync_state)
        path = unquote(link.path).lower()
        ok = (
            (link.scheme, link.netloc.lower()) == (root.scheme, root.netloc.lower())
            and path.startswith(unquote(root.path).lower() + "/mailfolders")
            and path.endswith("/messages/delta")
            and ("$skiptoken=" in link.query or "$deltatoken=" in link.query)
        )
        if not ok:
            raise SyncStateLost(
                "the stored sync state is not a Graph delta link of this mailbox (a state of "
                "another protocol or endpoint): the folder is synced again from its start",
                code="ForeignSyncState",
            )

    def _delta_page(self, url: str, size: int) -> dict[str, Any]:
        page: dict[str, Any] = self._get(
            "messagesDelta", url, headers={"Prefer": f"odata.maxpagesize={size}"}
        )
        return page

    def changes(self, sync_state: str | None, max_changes: int) -> ChangePage:
        if sync_state is None:
            url = self._delta_url(select=MESSAGE_SELECT)
        else:
            self._check_state(sync_state)
            url = sync_state
        page = self._delta_page(url, max(1, min(max_changes, self.page_limit)))
        created: list[ItemRef] = []
        for entry in page.get("value", []):
            if "@removed" in entry:
                continue  # gone from the folder: nothing to hand over
            if len(entry) > 3:  # more than @odata.type, @odata.etag and id
                self._remember(entry)
            created.append(ItemRef(entry["id"]))
        next_link, delta_link = page.get("@odata.nextLink"), page.get("@odata.deltaLink")
        if next_link:
            return ChangePage(created=tuple(created), sync_state=next_link, last_page=False)
        if not delta_link:
            raise SourceError("Graph answered a delta page with no link", code="NoDeltaLink")
        return ChangePage(created=tuple(created), sync_state=delta_link, last_page=True)

    def current_state(self) -> str:
        # Neither Graph nor the emulator take $deltatoken=latest for messages (only directory
        # objects do): walk the round at the largest page. With the full $select, not ids only:
        # Graph keeps a round's $select in its links, and a chain of ids would cost a $batch
        # part per new message for ever after (0.16 requests a message instead of 0.1). The
        # walk is paid once, at a mailbox's first start, with bodies as text (smaller) and
        # nothing kept.
        url: str = self._delta_url(select=MESSAGE_SELECT)
        while True:
            page = self._get(
                "messagesDelta",
                url,
                headers={"Prefer": f"odata.maxpagesize={_WALK_PAGE}, {_TEXT}"},
            )
            if page.get("@odata.deltaLink"):
                return str(page["@odata.deltaLink"])
            url = page["@odata.nextLink"]

    def unread(self) -> Sequence[ItemRef]:
        folder = self.watched_folder_id()
        url = (
            f"{self._user}/mailFolders/{folder}/messages"
            f"?$filter=isRead eq false&$select=id&$top={_WALK_PAGE}"
        )
        return [
            ItemRef(m["id"])
            for page in self._client.pages(self.mailbox, "listMessages", url)
            for m in page.get("value", [])
        ]

    def fetch(self, refs: Sequence[ItemRef]) -> list[Message | FetchFailure]:
        if not refs:
            return []
        data: dict[str, dict[str, Any]] = {}
        failures: dict[str, FetchFailure] = {}
        attachments: dict[str, list[dict[str, Any]]] = {}
        for ref in refs:
            cached = self._take_cached(ref.item_id)
            if cached is not None:
                data[ref.item_id] = cached
        missing = [r for r in refs if r.item_id not in data]
        expand = f"attachments($select={','.join(ATTACHMENT_SELECT)})"
        full = [
            SubRequest(
                "GET",
                f"/{self._user}/messages/{quote(r.item_id, safe='')}"
                f"?$select={','.join(MESSAGE_SELECT)}&$expand={expand}",
            )
            for r in missing
        ]
        for ref, answer in zip(missing, self._batch("getMessage", full), strict=True):
            if answer.ok:
                body = dict(answer.body)
                attachments[ref.item_id] = body.pop("attachments", None) or []
                data[ref.item_id] = body
            else:
                failures[ref.item_id] = self._failure(ref, answer)
        # What a delta page could not give: the text of HTML bodies, attachment metadata.
        extra: list[tuple[ItemRef, SubRequest]] = []
        for ref in refs:
            item = data.get(ref.item_id)
            if item is None:
                continue
            want_text = is_html(item)
            want_attachments = ref.item_id not in attachments and needs_attachments(item)
            if not (want_text or want_attachments):
                continue
            query = f"?$select={'body' if want_text else 'id'}"
            if want_attachments:
                query += f"&$expand={expand}"
            headers = {"Prefer": _TEXT} if want_text else {}
            url = f"/{self._user}/messages/{quote(ref.item_id, safe='')}{query}"
            extra.append((ref, SubRequest("GET", url, headers=headers)))
        texts: dict[str, str | None] = {}
        answers = self._batch("getMessage", [request for _, request in extra])
        for (ref, _), answer in zip(extra, answers, strict=True):
            if not answer.ok:
                failures[ref.item_id] = self._failure(ref, answer)
                continue
            if "attachments" in answer.body:
                attachments[ref.item_id] = answer.body["attachments"] or []
            if "body" in answer.body:
                texts[ref.item_id] = (answer.body["body"] or {}).get("content")
        out: list[Message | FetchFailure] = []
        for ref in refs:
            if ref.item_id in failures:
                out.append(failures[ref.item_id])
                continue
            try:
                message = to_message(
                    data[ref.item_id],
                    mailbox=self.mailbox,
                    folder=self.folder,
                    text_body=texts.get(ref.item_id),
                    attachments=attachments.get(ref.item_id),
                )
            except Exception as e:
                # Graph answered and we parsed the JSON: what failed is our conversion. Not
                # worth retrying (the same item fails the same way): dead-letter it at once.
                bug = conversion_bug("converting the message", e)
                out.append(FetchFailure(ref, str(bug), transient=False))
                continue
            out.append(message.bind(self))
        return out

    @staticmethod
    def _failure(ref: ItemRef, answer: SubResponse) -> FetchFailure:
        error = answer.error()
        gone = answer.status == 404
        return FetchFailure(ref, str(error), gone=gone, transient=error.transient and not gone)

    def _per_item(
        self, operation: str, refs: Sequence[ItemRef], build: Callable[[str], SubRequest]
    ) -> list[SubResponse]:
        return self._batch(operation, [build(quote(r.item_id, safe="")) for r in refs])

    @staticmethod
    def _outcomes(answers: Sequence[SubResponse]) -> list[str | None]:
        return [None if a.ok else str(a.error()) for a in answers]

    def mark_read(self, refs: Sequence[ItemRef]) -> list[str | None]:
        def build(item: str) -> SubRequest:
            return SubRequest("PATCH", f"/{self._user}/messages/{item}", body={"isRead": True})

        return self._outcomes(self._per_item("markRead", refs, build))

    def categorize(self, refs: Sequence[ItemRef], category: str) -> list[str | None]:
        # PATCH replaces the whole list: send what the message has now plus the new one, so a
        # person's own categories stay. Read now, not from the delta cache: a person may have
        # categorised it since (test_post_processing_seen_through_ews).
        current: dict[str, list[str]] = {}
        unknown = list(refs)
        errors: dict[str, str] = {}
        reads = self._per_item(
            "getMessage",
            unknown,
            lambda item: SubRequest("GET", f"/{self._user}/messages/{item}?$select=categories"),
        )
        for ref, answer in zip(unknown, reads, strict=True):
            if answer.ok:
                current[ref.item_id] = list(answer.body.get("categories") or [])
            else:
                errors[ref.item_id] = str(answer.error())
        todo = [r for r in refs if r.item_id in current]
        patches = []
        for ref in todo:
            categories = current[ref.item_id]
            if category not in categories:
                categories.append(category)
            patches.append(
                SubRequest(
                    "PATCH",
                    f"/{self._user}/messages/{quote(ref.item_id, safe='')}",
                    body={"categories": categories},
                )
            )
        for ref, answer in zip(todo, self._batch("categorize", patches), strict=True):
            if not answer.ok:
                errors[ref.item_id] = str(answer.error())
        return [errors.get(r.item_id) for r in refs]

    def _move(self, operation: str, refs: Sequence[ItemRef], destination: str) -> list[Any]:
        def build(item: str) -> SubRequest:
            return SubRequest(
                "POST", f"/{self._user}/messages/{item}/move", body={"destinationId": destination}
            )

        out: list[ItemRef | str] = []
        for ref, answer in zip(refs, self._per_item(operation, refs, build), strict=True):
            if answer.ok and isinstance(answer.body, dict) and answer.body.get("id"):
                out.append(ItemRef(str(answer.body["id"])))
                with self._lock:
                    self._cache.pop(ref.item_id, None)
            else:
                out.append(str(answer.error()) if not answer.ok else "move answered no id")
        return out

    def move(self, refs: Sequence[ItemRef], folder_path: str) -> list[ItemRef | str]:
        if not refs:
            return []
        return self._move("move", refs, self.folder_id(folder_path, create=True))

    def delete(self, refs: Sequence[ItemRef]) -> list[str | None]:
        # A move to Deleted Items, as EWS's MoveToDeletedItems: Graph's DELETE is a soft delete
        # whose target folder its docs do not promise.
        moved = self._move("delete", refs, "deleteditems")
        return [None if isinstance(r, ItemRef) else r for r in moved]

    def find(self, folder_path: str, internet_message_id: str) -> ItemRef | None:
        folder = self.folder_id(folder_path)
        url = (
            f"{self._user}/mailFolders/{folder}/messages?$filter=internetMessageId eq "
            f"{quote(_odata_string(internet_message_id), safe='')}&$select=id&$top=1"
        )
        found = self._get("listMessages", url).get("value", [])
        return ItemRef(str(found[0]["id"])) if found else None

    def probe(self) -> Iterator[ProbeStep]:
        try:
            token = self._tokens.get_token()
        except Exception as e:
            yield ProbeStep("token", False, f"no token for the credential: {e}")
            return
        yield ProbeStep("token", True, f"token valid until {token.expires_at:%Y-%m-%d %H:%M} UTC")
        steps: list[tuple[str, Callable[[], str]]] = [
            ("mailbox", self._probe_mailbox),
            ("folder", lambda: f"{self.folder!r} is folder {self.watched_folder_id()}"),
            ("items", self._probe_items),
        ]
        for name, step in steps:
            try:
                detail = step()
            except SourceError as e:
                yield ProbeStep(name, False, str(e))
                return
            yield ProbeStep(name, True, detail)

    def _probe_mailbox(self) -> str:
        user = self._get("getUser", f"{self._user}?$select=id,mail")
        return f"mailbox {user.get('mail') or self.mailbox} reachable over Graph"

    def _probe_items(self) -> str:
        folder = self._get(
            "getMailFolder",
            f"{self._user}/mailFolders/{self.watched_folder_id()}"
            "?$select=totalItemCount,unreadItemCount",
        )
        return f"{folder.get('totalItemCount')} items, {folder.get('unreadItemCount')} unread"

    def close(self) -> None:
        # The HTTP pool belongs to the factory's client; forget what this source cached.
        with self._lock:
            self._cache.clear()

    # --- ContentLoader ------------------------------------------------------------------------

    def open_mime(self, message: Message) -> IO[bytes]:
        """The message's MIME (``$value``), streamed into a spooled file."""
        url = f"{self._user}/messages/{quote(message.item_id, safe='')}/$value"
        return self._content(lambda: self._client.open_stream(self.mailbox, "getMime", url))

    def open_attachment(self, message: Message, attachment: Attachment) -> IO[bytes]:
        """An attachment's content (``$value``; an item attachment as RFC 5322), spooled."""
        url = (
            f"{self._user}/messages/{quote(message.item_id, safe='')}/attachments/"
            f"{quote(attachment.attachment_id, safe='')}/$value"
        )
        return self._content(lambda: self._client.open_stream(self.mailbox, "getAttachment", url))

    @staticmethod
    def _content(open_: Callable[[], IO[bytes]]) -> IO[bytes]:
        try:
            return open_()
        except SourceError:
            raise
        except OSError:
            raise
        except Exception as e:
            raise conversion_bug("reading content", e) from e

    def ref(self, message: Message) -> ItemRef:
        return ItemRef(message.item_id)
