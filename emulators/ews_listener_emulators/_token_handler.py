"""The token server's HTTP routes; all state and rules live in ``TokenServer`` and helpers."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from ews_listener_emulators import _entra_errors as errors
from ews_listener_emulators._entra_errors import OAuthError
from ews_listener_emulators._http import QuietHandler
from ews_listener_emulators._token_requests import (
    AuthMethod,
    ClientAuth,
    TokenRequest,
    basic_client_id,
    openid_configuration,
    parse_client_auth,
    resource_of,
)

if TYPE_CHECKING:
    from ews_listener_emulators.token_server import TokenServer

__all__ = ["TokenHandler"]

_FORM_LIMIT = 1 << 20


class TokenHandler(QuietHandler):
    """Routes: discovery, JWKS, instance discovery, the Entra and the generic token endpoints."""

    @property
    def owner(self) -> TokenServer:
        return cast("TokenServer", cast(Any, self.server).owner)

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        extra = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
        extra["x-ms-request-id"] = str(uuid.uuid4())
        if cid := self.headers.get("client-request-id"):
            extra["client-request-id"] = cid
        extra.update(headers or {})
        data = json.dumps(body).encode()
        self.send_body(status, data, "application/json; charset=utf-8", extra)

    def _entra_error(self, err: OAuthError) -> None:
        body = errors.entra_body(
            err, correlation_id=self.headers.get("client-request-id"), now=self.owner.clock()
        )
        self._json(err.status, body)

    def _wait(self) -> None:
        delay = self.owner._delay_seconds()
        if delay > 0:
            self.owner._stopping.wait(delay)

    def do_GET(self) -> None:
        """Discovery documents and keys."""
        self._wait()
        owner = self.owner
        path = urlsplit(self.path).path.rstrip("/")
        parts = path.split("/")[1:]
        if parts in (["common", "discovery", "keys"], ["common", "discovery", "v2.0", "keys"]):
            self._json(200, owner.jwks())
            return
        if parts[:3] == ["common", "discovery", "instance"]:
            self._instance_discovery()
            return
        if len(parts) >= 2:
            tenant = owner._find_tenant(parts[0])
            rest = parts[1:]
            routes = (
                ["v2.0", ".well-known", "openid-configuration"],
                [".well-known", "openid-configuration"],
                ["discovery", "v2.0", "keys"],
                ["discovery", "keys"],
            )
            if rest in routes:
                if tenant is None:
                    self._entra_error(errors.unknown_tenant(parts[0]))
                elif rest[-1] == "keys":
                    self._json(200, owner.jwks())
                else:
                    self._json(
                        200, openid_configuration(owner.url, tenant.tenant_id, v2=rest[0] == "v2.0")
                    )
                return
        self.send_body(404, b"", "text/plain")

    def _instance_discovery(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        endpoint = (query.get("authorization_endpoint") or [""])[0]
        segments = urlsplit(endpoint).path.split("/")
        tenant = segments[1] if len(segments) > 1 and segments[1] else "common"
        host = f"{self.owner.host}:{self.owner.port}"
        self._json(
            200,
            {
                "tenant_discovery_endpoint": (
                    f"{self.owner.url}/{tenant}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            },
        )

    def do_POST(self) -> None:
        """The token endpoints."""
        owner = self.owner
        path = urlsplit(self.path).path.rstrip("/")
        parts = path.split("/")[1:]
        generic = parts == ["oauth2", "token"]
        if not generic and not (len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]):
            if self.read_body(_FORM_LIMIT) is not None:
                self.send_body(404, b"", "text/plain")
            return
        raw = self.read_body(_FORM_LIMIT)
        if raw is None:
            return
        form = self._form(raw)
        self._wait()
        guess = form.get("client_id") or basic_client_id(self.headers.get("Authorization"))
        fault = owner._take_fault()
        if fault is not None:
            kind, value = fault
            if kind == "drop":
                owner._record(TokenRequest(guess, None, 0, "dropped"))
                self.drop_connection()
                return
            if kind == "raw":
                status, body, content_type = value
                owner._record(TokenRequest(guess, None, status, "raw answer"))
                self.send_body(status, body, content_type)
                return
            status = int(value)
            err = OAuthError(
                status,
                "temporarily_unavailable" if status == 503 else "server_error",
                50196 if status == 503 else 90033,
                "The service is temporarily unavailable (injected fault).",
            )
            owner._record(TokenRequest(guess, None, status, err.error))
            self._answer_error(err, generic, None)
            return
        auth = ClientAuth(client_id=guess)
        try:
            auth = parse_client_auth(self.headers.get("Authorization"), form)
            body = self._grant(parts, form, auth, generic)
        except OAuthError as err:
            owner._record(TokenRequest(auth.client_id, auth.method, err.status, err.error))
            self._answer_error(err, generic, auth.method)
            return
        owner._record(TokenRequest(auth.client_id, auth.method, 200, None, auth.encoding))
        self._json(200, body)

    def _form(self, raw: bytes) -> dict[str, str]:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return {}
        try:
            pairs = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return {}
        return {name: values[0] for name, values in pairs.items()}

    def _grant(
        self, parts: list[str], form: dict[str, str], auth: ClientAuth, generic: bool
    ) -> dict[str, Any]:
        owner = self.owner
        if generic:
            tenant = owner._first()
            if tenant is None:
                raise OAuthError(400, "invalid_request", None, "No tenant is configured.")
            endpoints = [owner.generic_token_endpoint()]
        else:
            tenant = owner._find_tenant(parts[0])
            if tenant is None:
                raise errors.unknown_tenant(parts[0])
            endpoints = [
                owner.token_endpoint(name) for name in {parts[0], tenant.name, tenant.tenant_id}
            ]
        grant = form.get("grant_type")
        if not grant:
            raise errors.missing_parameter("grant_type")
        if grant != "client_credentials":
            raise errors.unsupported_grant(grant)
        app = owner._authenticate(tenant, auth, endpoints)
        resource = resource_of(form.get("scope"), owner.audience if generic else None)
        token, expires_in = owner._mint(app, resource, None, None)
        if generic:
            return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        return {
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }

    def _answer_error(self, err: OAuthError, generic: bool, method: AuthMethod | None) -> None:
        if not generic:
            self._entra_error(err)
            return
        headers = {}
        if err.status == 401 and method == "client_secret_basic":
            # RFC 6749 §5.2: a failed Basic authentication answers with the scheme the client used.
            headers["WWW-Authenticate"] = 'Basic realm="token"'
        self._json(err.status, errors.rfc6749_body(err), headers)
