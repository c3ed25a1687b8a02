"""The emulator's admin API: JSON over HTTP under ``/admin/…``, a thin layer over the Python APIs.

It listens on its own loopback port (``AdminServer``), not on the EWS port, for three reasons:
the EWS handler answers everything else with Exchange's own 404/401 shapes and stays exactly what
a client sees; the admin API must keep answering while the EWS server is stopped and restarted
(outage drills); and it needs no Bearer token, so keeping it off the EWS port means no EWS client
can reach it by accident. It is meant for 127.0.0.1 and has no authentication.

Routes (bodies and answers are JSON; errors are ``{"error": "…"}`` with 400/404)::

    GET    /admin/health
    GET    /admin/mailboxes                          POST {"address", "display_name"?}
    POST   /admin/mailboxes/{address}/folders        {"path": "inbox/Processed"}
    POST   /admin/mailboxes/{address}/messages       {"folder"?, "mime_base64"} or
           {"folder"?, "from", "to", "subject", "text"?, "html"?, "attachments"?: [{"filename",
            "content_type"?, "content_base64"}], "is_read"?, "item_class"?}
    GET    /admin/mailboxes/{address}/items?folder=inbox
    GET    /admin/mailboxes/{address}/items/{item_id}    (URL-encode ids: base64 may hold '/')
    POST   /admin/apps                               {"client_id", "mailboxes"?: [...]}  (scope)
    GET    /admin/faults        POST {"kind", "operation"?, "mailbox"?, "count"?, …}
    DELETE /admin/faults        DELETE /admin/faults/{rule_id}
    GET    /admin/faults/counters
    PUT    /admin/faults/connection-limit            {"limit": 27 | null}
    GET    /admin/requests?limit=100
    POST   /admin/reset
    POST   /admin/token/down | /admin/token/up
    POST   /admin/token/fail-next                    {"count"?: 1, "status"?: 503}
    POST   /admin/token/revoke                       {"client_id"?}
    POST   /admin/token/expire                       {"count"?: 1, "mailbox"?}
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
from collections.abc import Callable
from dataclasses import asdict
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from ews_listener_emulators._http import LoopbackServer, QuietHandler
from ews_listener_emulators.ops import notifications
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.store import ItemView

__all__ = ["AdminError", "AdminServer", "TokenControl", "build_message"]

_MAX_BODY = 64 * 1024 * 1024


class TokenControl(Protocol):
    """What the admin API drives on ``token_server.TokenServer``."""

    def go_down(self) -> None: ...

    def come_back(self) -> None: ...

    def fail_next(self, count: int = 1, *, status: int = 503) -> None: ...

    def revoke(self, client_id: str | None = None) -> None: ...


class AdminError(Exception):
    """A request the admin API refuses: ``status`` 400 (bad input) or 404 (unknown thing)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def build_message(fields: dict[str, Any]) -> bytes:
    """RFC 5322 bytes from admin fields (from, to, subject, text, html, attachments)."""
    for name in ("from", "to"):
        if not isinstance(fields.get(name), str) or "@" not in fields[name]:
            raise AdminError(400, f"'{name}' must be an e-mail address, got {fields.get(name)!r}")
    message = EmailMessage()
    message["From"] = fields["from"]
    message["To"] = fields["to"]
    message["Subject"] = str(fields.get("subject", ""))
    message["Message-ID"] = fields.get("message_id") or make_msgid(domain="emulator.invalid")
    text = fields.get("text")
    html = fields.get("html")
    message.set_content(str(text if text is not None else ""))
    if html is not None:
        message.add_alternative(str(html), subtype="html")
    for index, attachment in enumerate(fields.get("attachments") or []):
        if not isinstance(attachment, dict) or "content_base64" not in attachment:
            raise AdminError(400, f"attachments[{index}] needs 'filename' and 'content_base64'")
        content = _b64(attachment["content_base64"], f"attachments[{index}].content_base64")
        maintype, _, subtype = str(
            attachment.get("content_type") or "application/octet-stream"
        ).partition("/")
        message.add_attachment(
            content,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=str(attachment.get("filename") or f"attachment-{index}"),
        )
    return message.as_bytes(policy=SMTP)


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise AdminError(400, f"'{where}' must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AdminError(400, f"'{where}' is not valid base64: {exc}") from None


def _view(view: ItemView) -> dict[str, Any]:
    data = asdict(view)
    data["categories"] = list(view.categories)
    return data


Route = Callable[["AdminServer", dict[str, str], dict[str, list[str]], Any], tuple[int, Any]]
_ROUTES: list[tuple[str, re.Pattern[str], Route]] = []


def _route(method: str, pattern: str) -> Callable[[Route], Route]:
    def register(handler: Route) -> Route:
        _ROUTES.append((method, re.compile(f"^{pattern}$"), handler))
        return handler

    return register


class AdminServer:
    """The admin API of one emulator (and optionally its token server) on its own port."""

    def __init__(
        self,
        emulator: EwsEmulator,
        token_server: TokenControl | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.emulator = emulator
        self.token_server = token_server
        self._server = LoopbackServer(_AdminHandler, host=host, port=port, ssl_context=ssl_context)
        self._server.owner = self  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:PORT/admin``."""
        return f"{self._server.url}/admin"

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> AdminServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dispatch(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        """Answer one request: (status, JSON-ready value)."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        allowed: list[str] = []
        for route_method, pattern, handler in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            return handler(self, params, query, body)
        if allowed:
            return 405, {"error": f"{method} not allowed; use {', '.join(sorted(allowed))}"}
        return 404, {"error": f"no admin route {path}"}

    # --- helpers -------------------------------------------------------------------------------

    def _mailbox_or_404(self, address: str) -> None:
        if self.emulator.store.mailbox(address) is None:
            raise AdminError(404, f"no mailbox {address!r}")

    def _tokens(self) -> TokenControl:
        if self.token_server is None:
            raise AdminError(404, "this emulator has no token server attached")
        return self.token_server


def _field(body: Any, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if not isinstance(body, dict):
        raise AdminError(400, "the request body must be a JSON object")
    if name not in body or body[name] is None:
        if default is ...:
            raise AdminError(400, f"'{name}' is required")
        return default
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise AdminError(400, f"'{name}' has the wrong type: {value!r}")
    return value


# --- routes ------------------------------------------------------------------------------------

_MAILBOX = r"/admin/mailboxes/(?P<address>[^/]+)"


@_route("GET", "/admin/health")
def _health(admin: AdminServer, params: dict[str, str], query: Any, body: Any) -> tuple[int, Any]:
    return 200, {"ok": True, "ews": admin.emulator.url}


@_route("GET", "/admin/mailboxes")
def _list_mailboxes(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    return 200, [
        {"address": mb.address, "display_name": mb.display_name}
        for mb in admin.emulator.store.mailboxes()
    ]


@_route("POST", "/admin/mailboxes")
def _add_mailbox(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    address = _field(body, "address", str)
    if "@" not in address:
        raise AdminError(400, f"'address' must be an e-mail address, got {address!r}")
    mailbox = admin.emulator.add_mailbox(address, _field(body, "display_name", str, None))
    return 201, {"address": mailbox.address, "display_name": mailbox.display_name}


@_route("POST", _MAILBOX + "/folders")
def _create_folder(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    admin._mailbox_or_404(params["address"])
    path = _field(body, "path", str)
    return 201, {"folder_id": admin.emulator.create_folder(params["address"], path), "path": path}


@_route("POST", _MAILBOX + "/messages")
def _deliver(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    address = params["address"]
    admin._mailbox_or_404(address)
    if isinstance(body, dict) and "mime_base64" in body:
        raw = _b64(body["mime_base64"], "mime_base64")
    else:
        fields = dict(body) if isinstance(body, dict) else {}
        fields.setdefault("to", address)
        raw = build_message(fields)
    item_id = admin.emulator.deliver(
        address,
        raw,
        _field(body, "folder", str, "inbox"),
        item_class=_field(body, "item_class", str, "IPM.Note"),
        is_read=_field(body, "is_read", bool, False),
    )
    return 201, {"item_id": item_id}


@_route("GET", _MAILBOX + "/items")
def _items(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    admin._mailbox_or_404(params["address"])
    folder = (query.get("folder") or ["inbox"])[0]
    return 200, [_view(v) for v in admin.emulator.items(params["address"], folder)]


@_route("GET", _MAILBOX + "/items/(?P<item_id>[^/]+)")
def _item(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    store = admin.emulator.store
    mailbox = store.mailbox(params["address"])
    if mailbox is None:
        raise AdminError(404, f"no mailbox {params['address']!r}")
    item = store.item(mailbox, params["item_id"])
    if item is None or item.folder is None:
        raise AdminError(404, f"no item {params['item_id']!r} in {params['address']!r}")
    view = next(v for v in store.views(item.folder) if v.item_id == item.item_id)
    return 200, _view(view)


@_route("POST", "/admin/apps")
def _scope_app(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    client_id = _field(body, "client_id", str)
    mailboxes = _field(body, "mailboxes", list, None)
    admin.emulator.allow(client_id, mailboxes)
    return 200, {"client_id": client_id, "mailboxes": mailboxes}


@_route("GET", "/admin/faults")
def _faults(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    return 200, [rule.as_dict() for rule in admin.emulator.faults.rules()]


@_route("POST", "/admin/faults")
def _add_fault(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict):
        raise AdminError(400, "the request body must be a JSON object")
    options = dict(body)
    kind = options.pop("kind", None)
    if not isinstance(kind, str):
        raise AdminError(400, "'kind' is required")
    try:
        rule = admin.emulator.faults.add(kind, **options)
    except (TypeError, ValueError) as exc:
        raise AdminError(400, str(exc)) from None
    return 201, rule.as_dict()


@_route("DELETE", "/admin/faults")
def _clear_faults(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    admin.emulator.faults.clear()
    return 200, {"cleared": True}


@_route("GET", "/admin/faults/counters")
def _counters(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    return 200, admin.emulator.faults.counters()


@_route("PUT", "/admin/faults/connection-limit")
def _limit(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    limit = _field(body, "limit", int, None)
    admin.emulator.faults.connection_limit = limit
    return 200, {"limit": limit}


@_route("POST", "/admin/streaming/(?P<action>drop|remove|miss)")
def _streaming_fault(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    """Streaming faults (ops/notifications.py): cut open streams, forget subscriptions, or make
    the next stream envelope ErrorMissedNotificationEvents; of one ``mailbox`` or all."""
    mailbox = _field(body or {}, "mailbox", str, None)
    registry = notifications.subscriptions(admin.emulator)
    action = {
        "drop": registry.drop_streams,
        "remove": registry.remove_subscriptions,
        "miss": registry.miss_events,
    }[params["action"]]
    return 200, {"action": params["action"], "mailbox": mailbox, "affected": action(mailbox)}


@_route("DELETE", "/admin/faults/(?P<rule_id>[^/]+)")
def _remove_fault(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    if not admin.emulator.faults.remove(params["rule_id"]):
        raise AdminError(404, f"no fault rule {params['rule_id']!r}")
    return 200, {"removed": params["rule_id"]}


@_route("GET", "/admin/requests")
def _requests(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    try:
        limit = int((query.get("limit") or ["100"])[0])
    except ValueError:
        raise AdminError(400, "'limit' must be an integer") from None
    records = list(admin.emulator.request_log)[-limit:] if limit > 0 else []
    return 200, [asdict(r) for r in records]


@_route("POST", "/admin/reset")
def _reset(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    admin.emulator.reset()
    admin.emulator.faults.reset()
    notifications.subscriptions(admin.emulator).clear()
    return 200, {"reset": True}


@_route("POST", "/admin/token/down")
def _token_down(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    admin._tokens().go_down()
    return 200, {"token_server": "down"}


@_route("POST", "/admin/token/up")
def _token_up(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    admin._tokens().come_back()
    return 200, {"token_server": "up"}


@_route("POST", "/admin/token/fail-next")
def _token_fail(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    body = body if body is not None else {}
    count = _field(body, "count", int, 1)
    status = _field(body, "status", int, 503)
    admin._tokens().fail_next(count, status=status)
    return 200, {"count": count, "status": status}


@_route("POST", "/admin/token/revoke")
def _token_revoke(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    client_id = _field(body if body is not None else {}, "client_id", str, None)
    admin._tokens().revoke(client_id)
    return 200, {"revoked": client_id or "*"}


@_route("POST", "/admin/token/expire")
def _token_expire(admin: AdminServer, params: Any, query: Any, body: Any) -> tuple[int, Any]:
    # The EWS side decides expiry: the next requests' tokens are treated as expired (401
    # token_expired), which is what a client holding a stale token sees.
    body = body if body is not None else {}
    rule = admin.emulator.faults.add(
        "expire_tokens",
        count=_field(body, "count", int, 1),
        mailbox=_field(body, "mailbox", str, "*"),
    )
    return 201, rule.as_dict()


class _AdminHandler(QuietHandler):
    """One connection to the admin API."""

    server_version = "ews-emulator-admin"

    def _handle(self) -> None:
        admin: AdminServer = self.server.owner.owner  # type: ignore[attr-defined]
        raw = self.read_body(_MAX_BODY)
        if raw is None:
            return
        try:
            body = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError as exc:
            self._json(400, {"error": f"the body is not JSON: {exc}"})
            return
        try:
            status, answer = admin.dispatch(self.command, self.path, body)
        except AdminError as exc:
            status, answer = exc.status, {"error": str(exc)}
        except KeyError as exc:
            status, answer = 404, {"error": str(exc.args[0]) if exc.args else "not found"}
        except Exception as exc:  # the API must answer, whatever a store call raises
            code = getattr(exc, "code", None)
            status, answer = 400, {"error": f"{type(exc).__name__}: {exc}", "code": code}
        self._json(status, answer)

    def _json(self, status: int, value: Any) -> None:
        body = json.dumps(value, default=str, ensure_ascii=False).encode()
        self.send_body(status, body, "application/json; charset=utf-8")

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_DELETE = _handle
