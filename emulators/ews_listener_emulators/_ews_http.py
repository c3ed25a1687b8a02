"""The request handler of the EWS emulator: one keep-alive connection, one request at a time.

A request goes through, in this order (each step can end it the way Exchange Online would):
``Content-Length`` (400/411/413 before a byte of the body is read) → Bearer token and its
``full_access_as_app`` role (401 + ``x-ms-diagnostics``) → body (read only now) → SOAP parse →
schema validation (``ErrorSchemaValidation``) → operation lookup → ``ExchangeImpersonation`` +
``X-AnchorMailbox`` → mailbox exists (``ErrorNonExistentMailbox``) → RBAC for Applications scope
(``ErrorImpersonateUserDenied``) → fault engine (injected faults, concurrency limit) → the
operation (``ops/``) → response validation (test switch) → request log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from ews_listener_emulators import ops
from ews_listener_emulators._http import QuietHandler
from ews_listener_emulators._unauthorized import NO_PERMISSION, unauthorized_headers
from ews_listener_emulators.schema import SchemaValidator
from ews_listener_emulators.soap import (
    NON_EXISTENT_MAILBOX_TEXT,
    Envelope,
    Fault,
    SoapError,
    build_envelope,
    error_message,
    m,
    parse_envelope,
    soap_fault,
    streaming_envelope,
    sub,
    t,
)
from ews_listener_emulators.store import Mailbox, StoreError

if TYPE_CHECKING:
    from ews_listener_emulators.server import EwsEmulator

__all__ = ["AUDIENCE", "ROLE", "EwsHandler", "RequestRecord"]

log = logging.getLogger("ews_listener_emulators.server")

AUDIENCE = "https://outlook.office365.com"
EWS_PATH = "/ews/exchange.asmx"
ROLE = "full_access_as_app"

# Fault kinds after which the operation still runs (a delay, or a cut in the answer).
_PASS_THROUGH = ("latency", "drop")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it, for assertions and the admin API."""

    operation: str | None
    mailbox: str | None
    status: int
    duration: float
    schema_valid: bool | None  # None: validation off
    error_code: str | None
    response_valid: bool | None = None  # None: response validation off
    schema_error: str | None = None
    client_id: str | None = None
    detail: str = ""  # operation-specific, e.g. the subjects a GetItem returned


class _Rejected(Exception):
    def __init__(
        self, code: str, message: str, values: Mapping[str, str] | None = None, status: int = 500
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.values = values
        self.status = status


def _impersonated(envelope: Envelope) -> str | None:
    header = envelope.header("ExchangeImpersonation")
    if header is None:
        return None
    for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
        found = header.find(f".//{t(name)}")
        if found is not None and found.text:
            return found.text.strip()
    return None


class EwsHandler(QuietHandler):
    """One keep-alive connection to the emulator."""

    _cut_after = 0  # > 0: send only this many bytes of the next answer, then drop
    _unread = 0  # body bytes not read yet (a refused token: read and thrown away)
    _logged: RequestRecord | None = None  # this request's entry in the request log

    @property
    def emulator(self) -> EwsEmulator:
        owner: EwsEmulator = self.server.owner.owner  # type: ignore[attr-defined]
        return owner

    def do_GET(self) -> None:
        # Exchange answers an unauthenticated GET of the endpoint with the same 401 challenge.
        headers = {
            "WWW-Authenticate": self._unauthorized_headers("invalid_token")["WWW-Authenticate"]
        }
        self.send_body(401, b"", "text/plain", headers)

    def do_POST(self) -> None:
        started = time.perf_counter()
        record: dict[str, Any] = {
            "operation": None,
            "mailbox": None,
            "schema_valid": None,
            "error_code": None,
        }
        self._pending: tuple[dict[str, Any], float] | None = (record, started)
        status = self._serve(self.emulator, record)
        self._log_request(status)  # a dropped connection sends no status line

    def send_response(self, code: int, message: str | None = None) -> None:
        # Log before the status line goes out: a client that reads the answer and then looks at
        # request_log must find its request there.
        self._log_request(code)
        super().send_response(code, message)

    def _log_request(self, status: int) -> None:
        pending = getattr(self, "_pending", None)
        if pending is None:
            return
        self._pending = None
        record, started = pending
        self._logged = RequestRecord(
            status=status, duration=time.perf_counter() - started, **record
        )
        self.emulator.request_log.append(self._logged)

    # Every branch returns the HTTP status it sent; ``record`` collects the request log fields.
    def _serve(self, emulator: EwsEmulator, record: dict[str, Any]) -> int:
        # The body is read only once the token is good: an anonymous client must not make us
        # hold (or, with a bad Content-Length, read without end) a body it declares.
        length = self.body_length(emulator.max_request_bytes)
        if length is None:
            return self.refused
        self._unread = length
        if self.path.split("?")[0].lower() != EWS_PATH:
            self.discard_body(length)
            self.send_body(404, b"", "text/html")
            return 404
        claims = self._authenticate(emulator, record)
        if claims is None:
            return 401
        data = self.rfile.read(length) if length else b""
        self._unread = 0
        try:
            envelope = parse_envelope(data, emulator.max_request_bytes)
        except SoapError as exc:
            record["error_code"] = "ErrorInvalidRequest"
            return self._fault("ErrorInvalidRequest", f"The request is invalid: {exc}", status=400)
        record["operation"] = envelope.operation
        if emulator.validator is not None:
            problem = self._validate_request(emulator.validator, envelope)
            record["schema_valid"] = problem is None
            if problem is not None:
                record["error_code"] = "ErrorSchemaValidation"
                record["schema_error"] = problem
                return self._schema_fault(problem)
        try:
            spec, mailbox = self._admit(emulator, envelope, claims, record)
        except _Rejected as exc:
            record["error_code"] = exc.code
            return self._fault(exc.code, exc.message, values=exc.values, status=exc.status)
        context = ops.OpContext(
            emulator=emulator,
            store=emulator.store,
            mailbox=mailbox,
            envelope=envelope,
            http=self,
            client_id=record.get("client_id"),
            api_version=self._api_version(envelope),
            closing=emulator.closing,
        )
        return self._run(emulator, spec, context, record)

    def _authenticate(
        self, emulator: EwsEmulator, record: dict[str, Any]
    ) -> Mapping[str, Any] | None:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            record["error_code"] = "invalid_token"
            self._unauthorized("invalid_token", "Bearer token is missing.")
            return None
        if emulator.token_server is None:
            return {"roles": [ROLE], "appid": None}
        try:
            claims = emulator.token_server.verify(token.strip(), audience=emulator.audience)
        except Exception as exc:
            category = getattr(exc, "category", None)
            if category is None:
                raise
            record["error_code"] = str(category)
            self._unauthorized(str(category), str(getattr(exc, "reason", "")))
            return None
        record["client_id"] = claims.get("appid") or claims.get("azp")
        if ROLE not in (claims.get("roles") or []):
            # Exchange Online refuses an app token without the role at the door (HTTP 401), not
            # with an ErrorAccessDenied fault after parsing the request.
            record["error_code"] = "invalid_grant"
            self._unauthorized("invalid_grant", NO_PERMISSION)
            return None
        return claims

    def _unauthorized(self, category: str, reason: str | None = None) -> None:
        unread, self._unread = self._unread, 0
        self.discard_body(unread)  # in 64 KiB pieces, so the connection stays usable
        self.send_body(401, b"", "text/html", self._unauthorized_headers(category, reason))

    def _unauthorized_headers(self, category: str, reason: str | None = None) -> dict[str, str]:
        authority = getattr(self.emulator.token_server, "url", None)
        return unauthorized_headers(category, reason, authority)

    def _validate_request(self, validator: SchemaValidator, envelope: Envelope) -> str | None:
        for element in (*envelope.headers, envelope.body):
            problem = validator.validate(element)
            if problem is not None:
                return problem
        return None

    def _admit(
        self,
        emulator: EwsEmulator,
        envelope: Envelope,
        claims: Mapping[str, Any],
        record: dict[str, Any],
    ) -> tuple[ops.OperationSpec, Mailbox | None]:
        spec = ops.lookup(envelope.operation)
        if spec is None:
            # Exchange answers a valid operation it does not support, and (with validation off)
            # an unknown element, with ErrorInvalidRequest; exchangelib reads that as "wrong
            # API version", tries its other versions and then raises ErrorInvalidServerVersion.
            raise _Rejected("ErrorInvalidRequest", "The request is invalid.")
        address = _impersonated(envelope)
        if address is None:
            if not spec.needs_mailbox:
                return spec, None
            raise _Rejected(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
            )
        anchor = self.headers.get("X-AnchorMailbox")
        if emulator.require_anchor_mailbox and not anchor:
            raise _Rejected(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "The X-AnchorMailbox HTTP header must be present for app-only impersonation.",
            )
        record["mailbox"] = address
        mailbox = emulator.store.mailbox(address)
        if mailbox is None:
            raise _Rejected(
                "ErrorNonExistentMailbox", NON_EXISTENT_MAILBOX_TEXT, {"SmtpAddress": address}
            )
        if not emulator.allowed(record.get("client_id"), address):
            raise _Rejected(
                "ErrorImpersonateUserDenied",
                "The account does not have permission to impersonate the requested user.",
            )
        return spec, mailbox

    @staticmethod
    def _api_version(envelope: Envelope) -> str:
        header = envelope.header("RequestServerVersion")
        return (header.get("Version") if header is not None else None) or "Exchange2016"

    def _run(
        self,
        emulator: EwsEmulator,
        spec: ops.OperationSpec,
        context: ops.OpContext,
        record: dict[str, Any],
    ) -> int:
        engine = emulator.faults
        address = context.mailbox.address if context.mailbox is not None else None
        if engine is not None:
            fault = engine.decide(spec.name, address)
            if fault is not None:
                record["error_code"] = fault.code if fault.kind not in _PASS_THROUGH else None
                if fault.kind == "drop":
                    record["error_code"] = "ConnectionDropped"
                status = self._inject(fault, spec.name)
                if status is not None:
                    return status
        try:
            with self._slot(engine, address) as refused:
                if refused is not None:
                    record["error_code"] = refused.code
                    status = self._inject(refused, spec.name)
                    return status if status is not None else 500
                result = spec.handler(context, context.envelope.body)
        except ops.OpFault as exc:
            record["error_code"] = exc.code
            return self._fault(exc.code, exc.message, values=exc.values)
        except StoreError as exc:
            record["error_code"] = exc.code
            return self._fault(exc.code, str(exc), values=exc.values)
        except Exception:
            log.exception("EWS emulator: %s failed", spec.name)
            record["error_code"] = "ErrorInternalServerError"
            return self._fault("ErrorInternalServerError", "An internal server error occurred.")
        if "detail" in context.notes:
            record["detail"] = str(context.notes["detail"])
        if isinstance(result, ops.Stream):
            return self._stream(emulator, result)
        record["error_code"] = record["error_code"] or _first_error(result.body)
        if emulator.validate_responses and emulator.validator is not None:
            problem = emulator.validator.validate(result.body)
            record["response_valid"] = problem is None
            if problem is not None:
                record["schema_error"] = f"response: {problem}"
                log.warning("EWS emulator: invalid %s response: %s", spec.name, problem)
        self._send_xml(result.status, build_envelope(result.body), dict(result.headers))
        return result.status

    @staticmethod
    def _slot(engine: Any, address: str | None) -> contextlib.AbstractContextManager[Fault | None]:
        """The engine's per-mailbox concurrency slot (yields a refusal ``Fault`` or None)."""
        if engine is None or not hasattr(engine, "slot"):
            return contextlib.nullcontext()
        slot: contextlib.AbstractContextManager[Fault | None] = engine.slot(address)
        return slot

    def _inject(self, fault: Fault, operation: str) -> int | None:
        """Render an injected fault; None when the request should go on (latency only)."""
        if fault.delay:
            time.sleep(fault.delay)
        if fault.kind == "latency":
            return None
        if fault.kind == "drop":
            if fault.after_bytes:
                # Mid-response: the operation runs (its effects happen, as when a real
                # connection breaks on the way back) and only the start of its answer is sent.
                self._cut_after = fault.after_bytes
                return None
            self._log_request(0)  # before the client can see the cut
            self.drop_connection()
            return 0
        if fault.kind == "http":
            headers = (
                {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            )
            self.send_body(fault.status, b"", "text/html", headers)
            return fault.status
        if fault.kind == "unauthorized":
            self._unauthorized(fault.code)
            return 401
        if fault.kind == "server_busy":
            if fault.back_off_ms is not None:
                values = {"BackOffMilliseconds": str(fault.back_off_ms), **fault.extra}
            elif fault.extra:
                values = dict(fault.extra)
            else:
                values = {
                    "Policy": "MaxConcurrency",
                    "MaxConcurrencyLimit": fault.extra.get("MaxConcurrencyLimit", "27"),
                    "ErrorMessage": fault.extra.get(
                        "ErrorMessage",
                        "This operation exceeds the throttling budget for policy part "
                        "'MaxConcurrency', policy value '27', Budget type: 'Ews'. "
                        "Suggested backoff time 0 ms.",
                    ),
                }
            # exchangelib.ErrorServerBusy.BackOffMilliseconds.fault.xml: HTTP 500, no SOAP header.
            return self._fault(
                "ErrorServerBusy", fault.message, values=values, status=500, with_version=False
            )
        if fault.kind == "response_error":
            message = error_message(f"{operation}ResponseMessage", fault.code, fault.message)
            if operation == "SyncFolderItems":
                # A bad sync state is answered with an empty SyncState (DESIGN.md).
                sub(message, m("SyncState"), "")
                sub(message, m("IncludesLastItemInRange"), "true")
            body = ops.response(operation, [message])
            self._send_xml(200, build_envelope(body))
            return 200
        return self._fault(fault.code, fault.message, values=dict(fault.extra), status=fault.status)

    def _fault(
        self,
        code: str,
        message: str,
        *,
        values: Mapping[str, str] | None = None,
        status: int = 500,
        with_version: bool = True,
    ) -> int:
        fault = soap_fault(code, message, values=values)
        self._send_xml(status, build_envelope(fault, with_version=with_version))
        return status

    def _schema_fault(self, problem: str) -> int:
        line, _, rest = problem.partition(":")
        column, _, violation = rest.partition(":")
        details = []
        for name, value in (
            ("LineNumber", line),
            ("LinePosition", column),
            ("Violation", violation),
        ):
            element = etree.Element(t(name))
            element.text = value.strip()
            details.append(element)
        fault = soap_fault(
            "ErrorSchemaValidation",
            "The request failed schema validation.",
            message_xml=details,
        )
        self._send_xml(500, build_envelope(fault))
        return 500

    def _send_xml(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        cut, self._cut_after = self._cut_after, 0
        if not cut:
            self.send_body(status, body, "text/xml; charset=utf-8", headers)
            return
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body[: min(cut, max(len(body) - 1, 0))])
            self.wfile.flush()
        self.drop_connection()

    def _stream(self, emulator: EwsEmulator, result: ops.Stream) -> int:
        self.send_response(result.status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        validator = emulator.validator if emulator.validate_responses else None
        problem: str | None = None
        try:
            for body_child in result.chunks:
                if validator is not None and problem is None:
                    problem = validator.validate(body_child)
                    if problem is not None:
                        log.warning("EWS emulator: invalid streamed envelope: %s", problem)
                chunk = streaming_envelope(body_child)
                self.wfile.write(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            # The request was logged when the status line went out; its verdict on the streamed
            # envelopes is known only now, before the last chunk tells the client the stream ended.
            if validator is not None:
                self._amend_record(
                    response_valid=problem is None,
                    schema_error=f"response: {problem}" if problem else None,
                )
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        return result.status

    def _amend_record(self, **changes: Any) -> None:
        """Replace this request's record in the request log by one with ``changes``."""
        logged = self._logged
        if logged is None:
            return
        log_ = self.emulator.request_log
        with contextlib.suppress(ValueError, IndexError):  # rotated out of a full log
            log_[log_.index(logged)] = dataclasses.replace(logged, **changes)


def _first_error(body: etree._Element) -> str | None:
    """The first ResponseCode other than NoError among the response messages (for the log)."""
    messages = body.find(m("ResponseMessages"))
    for message in messages if messages is not None else ():
        code = message.findtext(m("ResponseCode"))
        if code and code != "NoError":
            return code
    return None
