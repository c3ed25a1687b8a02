"""An OAuth 2.0 token server on loopback that behaves like the Microsoft identity platform.

It serves the client-credentials grant the way Entra ID does, for msal and for plain RFC 6749
clients: OpenID discovery, JWKS, ``/{tenant}/oauth2/v2.0/token`` with ``client_secret_basic``,
``client_secret_post`` and ``private_key_jwt``, Entra's AADSTS errors, and Entra v1 app-only access
tokens that the EWS emulator checks with :meth:`TokenServer.verify`. ``/oauth2/token`` is a
non-Microsoft-shaped RFC 6749 endpoint for the generic client. Faults (5xx, delays, dropped
connections, raw answers, downtime on the same port) are injected from tests.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography import x509

from ews_listener_emulators import _entra_errors as errors
from ews_listener_emulators._entra_errors import OAuthError
from ews_listener_emulators._http import LoopbackServer
from ews_listener_emulators._jwt import AssertionRejected, SigningKey
from ews_listener_emulators._jwt import check_client_assertion as _check_assertion
from ews_listener_emulators._token_handler import TokenHandler
from ews_listener_emulators._token_requests import AuthMethod, ClientAuth, TokenRequest, same_secret
from ews_listener_emulators.ca import EmulatorCA

__all__ = [
    "GRAPH_AUDIENCE",
    "GRAPH_AUDIENCES",
    "GRAPH_ROLES",
    "AuthMethod",
    "RejectCategory",
    "TokenRejected",
    "TokenRequest",
    "TokenServer",
]

RejectCategory = Literal["invalid_signature", "token_expired", "invalid_token", "invalid_resource"]

#: Microsoft Graph's resource URI: a token asked for with scope ``https://graph.microsoft.com/.default``
#: has this ``aud`` (Entra v1 tokens; v2 tokens carry Graph's app id instead). Graph accepts both.
GRAPH_AUDIENCE = "https://graph.microsoft.com"
GRAPH_AUDIENCES = (GRAPH_AUDIENCE, "00000003-0000-0000-c000-000000000000")
#: The Graph application roles an app gets unless ``register_app(graph_roles=...)`` says
#: otherwise: what the EWS role ``full_access_as_app`` grants for mail, read and write.
GRAPH_ROLES = ("Mail.ReadWrite",)

_SIGNATURE_CACHE_SIZE = 4096  # tokens whose signature was checked (see _signature_checked)

_GUID_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # uuid.NAMESPACE_URL


class TokenRejected(Exception):
    """``verify()`` refused a token; ``category`` maps to EWS's x-ms-diagnostics codes.

    ``invalid_signature`` → 2000000, ``invalid_token`` → 2000001, ``token_expired`` → 2000002,
    ``invalid_resource`` (a token for another audience) → 2000003.
    The text never contains the token.
    """

    def __init__(self, reason: str, category: RejectCategory) -> None:
        super().__init__(f"{category}: {reason}")
        self.reason = reason
        self.category: RejectCategory = category


@dataclass
class _App:
    tenant_id: str
    client_id: str
    display_name: str
    roles: tuple[str, ...]
    # Entra puts in a token the roles granted on the resource it is for: ``roles`` for Exchange
    # Online (EWS), ``graph_roles`` for Microsoft Graph.
    graph_roles: tuple[str, ...] = GRAPH_ROLES
    secret: str | None = field(default=None, repr=False)
    secret_expired: bool = False
    certificate: x509.Certificate | None = field(default=None, repr=False)
    object_id: str = ""


@dataclass
class _Tenant:
    name: str
    tenant_id: str


def tenant_guid(tenant: str) -> str:
    """The tenant id for ``tenant``: itself when a GUID, else a GUID derived from the domain."""
    try:
        return str(uuid.UUID(tenant))
    except ValueError:
        return str(uuid.uuid5(_GUID_NAMESPACE, "tenant:" + tenant.lower()))


class TokenServer(LoopbackServer):
    """The emulated Microsoft identity platform. Thread-safe; see the module docstring."""

    def __init__(
        self,
        *,
        ca: EmulatorCA | None,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: float = 3600,
        audience: str = "https://outlook.office365.com",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            TokenHandler,
            host=host,
            port=port,
            ssl_context=ca.server_context() if ca is not None else None,
        )
        self.token_lifetime = token_lifetime
        self.audience = audience
        self.clock = clock
        self.requests: list[TokenRequest] = []
        self._key = SigningKey()
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}  # by lower-case name and by tenant id
        self._first_tenant: _Tenant | None = None
        self._apps: dict[tuple[str, str], _App] = {}  # (tenant id, lower-case client id)
        self._issued: dict[str, str] = {}  # uti -> client id
        self._revoked: set[str] = set()
        self.revocations = 0  # calls of revoke(): what has verified may verify no more
        self._signatures: OrderedDict[str, dict[str, Any]] = OrderedDict()  # token -> claims
        self._fail: deque[int] = deque()
        self._drop = 0
        self._raw: deque[tuple[int, bytes, str]] = deque()
        self._delay = 0.0
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"TokenServer(url={self.url!r}, tenants={len(self._tenant_list())})"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> TokenServer:
        """Listen (on the same port when restarted) and serve in a daemon thread."""
        self._stopping.clear()
        super().start()
        return self

    def stop(self) -> None:
        """Stop listening, cut open connections and wake delayed answers."""
        self._stopping.set()
        super().stop()

    def __enter__(self) -> TokenServer:
        return self.start()

    def go_down(self) -> None:
        """Stop listening: clients get connection refused until :meth:`come_back`."""
        self.stop()

    def come_back(self) -> None:
        """Listen again on the same port."""
        self.start()

    # --- directory --------------------------------------------------------------------------

    def token_endpoint(self, tenant: str) -> str:
        """``{url}/{tenant}/oauth2/v2.0/token``."""
        return f"{self.url}/{tenant}/oauth2/v2.0/token"

    def generic_token_endpoint(self) -> str:
        """``{url}/oauth2/token``: RFC 6749-shaped, the first tenant added."""
        return f"{self.url}/oauth2/token"

    def add_tenant(self, tenant: str) -> None:
        """Create a tenant named by a GUID or a domain; a domain maps to a stable GUID ``tid``."""
        with self._lock:
            entry = _Tenant(tenant, tenant_guid(tenant))
            self._tenants[tenant.lower()] = entry
            self._tenants[entry.tenant_id] = entry
            if self._first_tenant is None:
                self._first_tenant = entry

    def register_app(
        self,
        tenant: str,
        client_id: str,
        *,
        secret: str | None = None,
        certificate_pem: bytes | None = None,
        roles: Sequence[str] = ("full_access_as_app",),
        graph_roles: Sequence[str] = GRAPH_ROLES,
        display_name: str | None = None,
        secret_expired: bool = False,
    ) -> None:
        """Register (or replace) an app with a secret and/or a certificate (PEM).

        ``roles`` are its Exchange Online application roles (EWS tokens), ``graph_roles`` its
        Microsoft Graph ones (``Mail.Read``, ``Mail.ReadWrite``; Graph tokens).
        """
        certificate = x509.load_pem_x509_certificate(certificate_pem) if certificate_pem else None
        with self._lock:
            tid = self._tenant_or_raise(tenant).tenant_id
            self._apps[(tid, client_id.lower())] = _App(
                tenant_id=tid,
                client_id=client_id,
                display_name=display_name or f"app {client_id}",
                roles=tuple(roles),
                graph_roles=tuple(graph_roles),
                secret=secret,
                secret_expired=secret_expired,
                certificate=certificate,
                object_id=str(uuid.uuid5(_GUID_NAMESPACE, f"sp:{tid}:{client_id.lower()}")),
            )

    def set_secret(self, tenant: str, client_id: str, secret: str) -> None:
        """Rotate an app's secret: the old one stops working now."""
        with self._lock:
            app = self._app_or_raise(tenant, client_id)
            app.secret = secret
            app.secret_expired = False

    # --- tokens -----------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set the tokens are signed with."""
        return {"keys": [self._key.jwk()]}

    def issue_token(
        self,
        tenant: str,
        client_id: str,
        *,
        lifetime: float | None = None,
        roles: Sequence[str] | None = None,
        audience: str | None = None,
    ) -> str:
        """A signed token for ``audience`` (default ``self.audience``, EWS), no request needed
        (the app may be unregistered); ``roles`` default to the app's for that audience."""
        with self._lock:
            entry = self._tenant_or_raise(tenant)
            app = self._apps.get((entry.tenant_id, client_id.lower())) or _App(
                tenant_id=entry.tenant_id,
                client_id=client_id,
                display_name=f"app {client_id}",
                roles=("full_access_as_app",),
                object_id=str(uuid.uuid5(_GUID_NAMESPACE, f"sp:{entry.tenant_id}:{client_id}")),
            )
        token, _ = self._mint(app, audience or self.audience, lifetime, roles)
        return token

    def verify(self, token: str, *, audience: str | Sequence[str] | None = None) -> dict[str, Any]:
        """The claims of a token this server issued; raises :class:`TokenRejected` otherwise.

        ``audience``: the ``aud`` wanted, or several accepted ones (Graph: ``GRAPH_AUDIENCES``).
        """
        claims = self._signature_checked(token)
        expected = audience if audience is not None else self.audience
        accepted = (expected,) if isinstance(expected, str) else tuple(expected)
        if claims.get("aud") not in accepted:
            # Exchange Online's reason, verbatim: it names the claim, not the value.
            raise TokenRejected("The audience claim value is invalid 'aud'.", "invalid_resource")
        tid = str(claims.get("tid", ""))
        with self._lock:
            known = tid in self._tenants
            revoked = claims.get("uti") in self._revoked
        if not known or claims.get("iss") != f"https://sts.windows.net/{tid}/":
            raise TokenRejected("the issuer is not valid for this tenant", "invalid_token")
        if revoked:
            raise TokenRejected("the token has been revoked", "invalid_token")
        now = self.clock()
        if now < float(claims.get("nbf", 0)):
            raise TokenRejected("the token is not valid yet", "invalid_token")
        if now >= float(claims.get("exp", 0)):
            raise TokenRejected("the token has expired", "token_expired")
        return claims

    def _signature_checked(self, token: str) -> dict[str, Any]:
        """The claims of a token whose header names our key and whose signature verifies.

        Remembered per token: PyJWT's header and signature checks take ~0.4 ms, half of a small
        Graph GET (benchmarks/emulator.py), and a client sends the same token for an hour. Only
        this is remembered; ``verify`` checks every claim (audience, issuer, revocation,
        lifetime) on every call.
        """
        with self._lock:
            cached = self._signatures.get(token)
            if cached is not None:
                self._signatures.move_to_end(token)
                return dict(cached)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("the token is not a JWT", "invalid_token") from None
        if header.get("kid") != self._key.kid:
            raise TokenRejected("the signing key is not known", "invalid_signature")
        try:
            claims = self._key.decode(token)
        except jwt.InvalidSignatureError:
            raise TokenRejected("the signature does not verify", "invalid_signature") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(
                f"malformed token ({type(exc).__name__})", "invalid_token"
            ) from None
        with self._lock:
            self._signatures[token] = claims
            if len(self._signatures) > _SIGNATURE_CACHE_SIZE:
                self._signatures.popitem(last=False)
        return dict(claims)

    def revoke(self, client_id: str | None = None) -> None:
        """Tokens issued so far to ``client_id`` (or to anyone) now fail :meth:`verify`."""
        with self._lock:
            for uti, owner in self._issued.items():
                if client_id is None or owner.lower() == client_id.lower():
                    self._revoked.add(uti)
            self.revocations += 1

    def request_count(self, client_id: str | None = None) -> int:
        """Token requests received (successful and failed), for one client or all."""
        with self._lock:
            if client_id is None:
                return len(self.requests)
            wanted = client_id.lower()
            return sum(1 for r in self.requests if (r.client_id or "").lower() == wanted)

    # --- fault injection --------------------------------------------------------------------

    def fail_next(self, count: int = 1, *, status: int = 503) -> None:
        """The next ``count`` token requests get HTTP ``status`` (a 5xx)."""
        with self._lock:
            self._fail.extend([status] * count)

    def set_delay(self, seconds: float) -> None:
        """Hold every answer (discovery and token) this long; 0 turns it off."""
        with self._lock:
            self._delay = seconds

    def drop_next(self, count: int = 1) -> None:
        """Close the connection of the next ``count`` token requests without answering."""
        with self._lock:
            self._drop += count

    def answer_next_raw(self, status: int, body: bytes, content_type: str) -> None:
        """Answer the next token request with exactly this (e.g. HTML, or JSON without a token)."""
        with self._lock:
            self._raw.append((status, body, content_type))

    # --- internals used by the handler ------------------------------------------------------

    def _tenant_list(self) -> list[_Tenant]:
        with self._lock:
            return list({id(t): t for t in self._tenants.values()}.values())

    def _tenant_or_raise(self, tenant: str) -> _Tenant:
        entry = self._tenants.get(tenant.lower())
        if entry is None:
            raise KeyError(f"unknown tenant {tenant!r}: call add_tenant() first")
        return entry

    def _app_or_raise(self, tenant: str, client_id: str) -> _App:
        tid = self._tenant_or_raise(tenant).tenant_id
        app = self._apps.get((tid, client_id.lower()))
        if app is None:
            raise KeyError(f"unknown app {client_id!r} in tenant {tenant!r}")
        return app

    def _find_tenant(self, name: str) -> _Tenant | None:
        with self._lock:
            return self._tenants.get(name.lower())

    def _first(self) -> _Tenant | None:
        with self._lock:
            return self._first_tenant

    def _find_app(self, tenant: _Tenant, client_id: str) -> _App | None:
        with self._lock:
            return self._apps.get((tenant.tenant_id, client_id.lower()))

    def _delay_seconds(self) -> float:
        with self._lock:
            return self._delay

    def _take_fault(self) -> tuple[str, Any] | None:
        """The fault for this token request, if any: drop, then raw, then status."""
        with self._lock:
            if self._drop:
                self._drop -= 1
                return ("drop", None)
            if self._raw:
                return ("raw", self._raw.popleft())
            if self._fail:
                return ("fail", self._fail.popleft())
        return None

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _mint(
        self,
        app: _App,
        audience: str,
        lifetime: float | None,
        roles: Sequence[str] | None,
    ) -> tuple[str, int]:
        """Sign an Entra v1 app-only access token; returns it and its ``expires_in``."""
        now = self.clock()
        seconds = self.token_lifetime if lifetime is None else lifetime
        iat = int(now)
        exp = int(now + seconds)
        uti = b64url_uuid()
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{app.tenant_id}/",
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "aio": b64url_uuid(),
            "app_displayname": app.display_name,
            "appid": app.client_id,
            "appidacr": "1",
            "idp": f"https://sts.windows.net/{app.tenant_id}/",
            "idtyp": "app",
            "oid": app.object_id,
            "rh": "0.emulator.",
            "roles": list(self._roles_for(app, audience) if roles is None else roles),
            "sid": str(uuid.uuid4()),
            "sub": app.object_id,
            "tid": app.tenant_id,
            "uti": uti,
            "ver": "1.0",
            "wids": ["0997a1d0-0d1d-4acb-b408-d5ca73121e90"],
        }
        token = self._key.sign(claims)
        with self._lock:
            self._issued[uti] = app.client_id
        return token, max(exp - iat, 0)

    @staticmethod
    def _roles_for(app: _App, audience: str) -> tuple[str, ...]:
        """The app's roles on the resource ``audience`` names (Graph's or Exchange Online's)."""
        return app.graph_roles if audience in GRAPH_AUDIENCES else app.roles

    def _authenticate(self, tenant: _Tenant, auth: ClientAuth, endpoints: list[str]) -> _App:
        """The app ``auth`` proves to be, or the OAuthError Entra would answer."""
        if auth.client_id is None:
            raise errors.missing_parameter("client_id")
        app = self._find_app(tenant, auth.client_id)
        if app is None:
            raise errors.unknown_client(auth.client_id, tenant.name)
        if auth.method == "private_key_jwt":
            assert auth.assertion is not None
            try:
                _check_assertion(
                    auth.assertion,
                    certificate=app.certificate,
                    client_id=auth.client_id,
                    audiences=endpoints,
                    now=self.clock(),
                )
            except AssertionRejected as exc:
                raise OAuthError(401, "invalid_client", exc.code, exc.message) from None
            return app
        if auth.method is None or auth.secret is None:
            raise errors.missing_client_auth()
        with self._lock:
            current = app.secret
            expired = app.secret_expired
        if current is None:
            raise errors.invalid_secret(app.client_id)
        if same_secret(auth.secret, current):
            auth.encoding = "form" if auth.method == "client_secret_basic" else None
        elif auth.raw_secret is not None and same_secret(auth.raw_secret, current):
            # Some clients put the secret in the Basic header without form-encoding it first
            # (RFC 6749 §2.3.1 says to encode); Entra accepts both, so do we, and record it.
            auth.encoding = "raw"
        else:
            raise errors.invalid_secret(app.client_id)
        if expired:
            raise errors.expired_secret(app.client_id)
        return app


def b64url_uuid() -> str:
    """A random 22-character identifier, like Entra's ``uti`` and ``aio``."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
