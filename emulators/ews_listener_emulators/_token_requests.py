"""Reading token requests: client authentication, scopes, and the discovery document.

Pure functions over the request's header and form, kept apart from the server's state so each
rule (RFC 6749 §2.3.1 Basic encoding, RFC 7523 assertions, Entra's scope rule) reads on its own.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus

import jwt

from ews_listener_emulators import _entra_errors as errors
from ews_listener_emulators._entra_errors import OAuthError
from ews_listener_emulators._jwt import ASSERTION_TYPE

__all__ = [
    "AuthMethod",
    "ClientAuth",
    "TokenRequest",
    "basic_client_id",
    "openid_configuration",
    "parse_client_auth",
    "resource_of",
    "same_secret",
]

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass(frozen=True)
class TokenRequest:
    """One request to a token endpoint, as the server saw it.

    ``status`` 0 means the connection was dropped without an answer. ``basic_encoding`` says how
    a Basic header's credentials were written: ``"form"`` (RFC 6749 §2.3.1 form-url-encoded) or
    ``"raw"`` (not encoded, accepted because only the raw form matched).
    """

    client_id: str | None
    auth_method: AuthMethod | None
    status: int
    error: str | None
    basic_encoding: Literal["form", "raw"] | None = None


@dataclass
class ClientAuth:
    """What the client presented, before it is checked."""

    client_id: str | None = None
    method: AuthMethod | None = None
    secret: str | None = field(default=None, repr=False)
    raw_secret: str | None = field(default=None, repr=False)  # Basic, not form-decoded
    assertion: str | None = field(default=None, repr=False)
    encoding: Literal["form", "raw"] | None = None


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def parse_client_auth(authorization: str | None, form: dict[str, str]) -> ClientAuth:
    """Read the client authentication from the header and the form; OAuthError when malformed."""
    auth = ClientAuth(client_id=form.get("client_id"))
    has_basic = authorization is not None and authorization.split(" ", 1)[0].lower() == "basic"
    if authorization is not None and has_basic:
        try:
            decoded = base64.b64decode(authorization.split(" ", 1)[1].strip(), validate=True)
            raw_id, sep, raw_secret = decoded.decode("utf-8").partition(":")
        except (IndexError, binascii.Error, UnicodeDecodeError):
            raw_id, sep, raw_secret = "", "", ""
        if not sep:
            raise OAuthError(401, "invalid_client", 7000218, "Malformed Basic authorization.")
        basic_id = unquote_plus(raw_id)
        if auth.client_id is not None and auth.client_id not in (basic_id, raw_id):
            raise errors.both_client_auth()
        auth.client_id = auth.client_id or basic_id
        auth.method = "client_secret_basic"
        auth.secret = unquote_plus(raw_secret)
        auth.raw_secret = raw_secret
    if "client_secret" in form:
        if has_basic or "client_assertion" in form:
            raise errors.both_client_auth()
        auth.method = "client_secret_post"
        auth.secret = form["client_secret"]
    if "client_assertion" in form:
        if has_basic:
            raise errors.both_client_auth()
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError(
                400,
                "invalid_request",
                9002313,
                f"Invalid request. 'client_assertion_type' must be '{ASSERTION_TYPE}'.",
            )
        auth.method = "private_key_jwt"
        auth.assertion = form["client_assertion"]
        if auth.client_id is None:
            # RFC 7523 §3: client_id is optional; the assertion's subject names the client.
            try:
                unverified = jwt.decode(auth.assertion, options={"verify_signature": False})
                auth.client_id = str(unverified.get("sub") or "") or None
            except jwt.PyJWTError:
                auth.client_id = None
    return auth


def resource_of(scope: str | None, default: str | None) -> str:
    """The resource of a client-credentials scope (exactly one ``{resource}/.default``).

    ``.default`` scopes of several resources (Graph's and Exchange Online's) are refused as
    Entra refuses them: a token is for one resource (``errors.several_resources``).
    """
    if scope is None:
        if default is not None:
            return default
        raise errors.missing_parameter("scope")
    parts = scope.split()
    well_formed = bool(parts) and all(p.endswith("/.default") and len(p) > 9 for p in parts)
    if well_formed and len({p[:-9].rstrip("/").lower() for p in parts}) > 1:
        raise errors.several_resources(scope)
    if len(parts) != 1 or not well_formed:
        raise errors.bad_scope(scope)
    return parts[0][: -len("/.default")]


def basic_client_id(authorization: str | None) -> str | None:
    """The client id in a Basic header, for recording requests that fail before parsing."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return unquote_plus(decoded.partition(":")[0]) or None


def openid_configuration(url: str, tid: str, *, v2: bool) -> dict[str, Any]:
    """Entra's discovery document; endpoints name the tenant by its GUID, as Entra's do."""
    version = "/v2.0" if v2 else ""
    return {
        "token_endpoint": f"{url}/{tid}/oauth2{version}/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{url}/{tid}/discovery{version}/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{url}/{tid}/v2.0" if v2 else f"https://sts.windows.net/{tid}/",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": f"{url}/{tid}/oauth2{version}/authorize",
        "device_authorization_endpoint": f"{url}/{tid}/oauth2{version}/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{url}/{tid}/oauth2{version}/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "ver", "nonce"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }
