"""The token server's error answers, worded and shaped like the Microsoft identity platform's.

Entra answers every token error with ``error``, ``error_description`` ("AADSTS<code>: <text>" then
trace, correlation and timestamp lines), ``error_codes``, ``timestamp``, ``trace_id``,
``correlation_id`` and ``error_uri``; clients such as msal surface ``error_description`` to users,
so the texts below are Entra's own where we know them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

__all__ = [
    "OAuthError",
    "bad_scope",
    "both_client_auth",
    "entra_body",
    "expired_secret",
    "invalid_secret",
    "missing_client_auth",
    "missing_parameter",
    "rfc6749_body",
    "several_resources",
    "unknown_client",
    "unknown_tenant",
    "unsupported_grant",
]


class OAuthError(Exception):
    """One RFC 6749 §5.2 error answer; ``code`` is the AADSTS number (None: none applies)."""

    def __init__(self, status: int, error: str, code: int | None, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.status = status
        self.error = error
        self.code = code
        self.message = message


def unknown_tenant(tenant: str) -> OAuthError:
    """AADSTS90002, the answer to a tenant that does not exist (token and discovery endpoints)."""
    return OAuthError(
        400,
        "invalid_request",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud. Check with your subscription administrator, this may "
        "happen if there are no active subscriptions for the tenant.",
    )


def unknown_client(client_id: str, tenant: str) -> OAuthError:
    """AADSTS700016: no such application in the directory."""
    return OAuthError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
        "This can happen if the application has not been installed by the administrator of the "
        "tenant or consented to by any user in the tenant. You may have sent your authentication "
        "request to the wrong tenant.",
    )


def invalid_secret(client_id: str) -> OAuthError:
    """AADSTS7000215: the secret does not match."""
    return OAuthError(
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app "
        f"'{client_id}'.",
    )


def expired_secret(client_id: str) -> OAuthError:
    """AADSTS7000222: the secret matches but has expired."""
    return OAuthError(
        401,
        "invalid_client",
        7000222,
        f"The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider "
        "using certificate credentials for added security: https://aka.ms/certCreds.",
    )


def missing_client_auth() -> OAuthError:
    """AADSTS7000218: neither a secret nor an assertion."""
    return OAuthError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    )


def both_client_auth() -> OAuthError:
    """Two client authentication methods at once (RFC 6749 §2.3 forbids it).

    Entra refuses this as a malformed request; we answer with its generic malformed-request
    code, AADSTS9002313, as the exact code for this case is not documented.
    """
    return OAuthError(
        401,
        "invalid_request",
        9002313,
        "Invalid request. Request is malformed or invalid. The client used more than one "
        "authentication method (Authorization header and client_secret in the body).",
    )


def missing_parameter(name: str) -> OAuthError:
    """AADSTS900144: a required form parameter is absent."""
    return OAuthError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


def unsupported_grant(grant_type: str) -> OAuthError:
    """AADSTS70003: a grant other than client_credentials."""
    return OAuthError(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def bad_scope(scope: str) -> OAuthError:
    """AADSTS70011: client credentials need exactly one ``{resource}/.default`` scope."""
    return OAuthError(
        400,
        "invalid_scope",
        70011,
        f"The provided request must include a 'scope' input parameter. The provided value for "
        f"the input parameter 'scope' is not valid. The scope {scope} is not valid. The "
        "scope format is invalid. Scope must be in a valid URI form <https://example/scope> or "
        "a valid Guid <guid/scope>.",
    )


def several_resources(scope: str) -> OAuthError:
    """AADSTS70011 for ``.default`` scopes of two resources: a token is for one resource.

    Entra's wording for client credentials (msal-js issue 6069, azure-sdk-for-net issue 9076):
    the malformed-scope sentence of ``bad_scope`` without its "format is invalid" tail, since
    each scope is well formed. Interactive flows answer AADSTS28000 ("contains more than one
    resource") instead; client credentials do not.
    """
    return OAuthError(
        400,
        "invalid_scope",
        70011,
        f"The provided request must include a 'scope' input parameter. The provided value for "
        f"the input parameter 'scope' is not valid. The scope {scope} is not valid.",
    )


def entra_body(err: OAuthError, *, correlation_id: str | None, now: float) -> dict[str, Any]:
    """The JSON body Entra sends for ``err``."""
    trace_id = str(uuid.uuid4())
    correlation = correlation_id or str(uuid.uuid4())
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    code = err.code if err.code is not None else 0
    return {
        "error": err.error,
        "error_description": (
            f"AADSTS{code}: {err.message} Trace ID: {trace_id} Correlation ID: {correlation} "
            f"Timestamp: {stamp}"
        ),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


def rfc6749_body(err: OAuthError) -> dict[str, Any]:
    """The plain RFC 6749 §5.2 body of the generic (non-Microsoft) endpoint."""
    return {"error": err.error, "error_description": err.message}
