"""Exchange Online's HTTP 401: the ``WWW-Authenticate`` challenge and ``x-ms-diagnostics``.

One place for the shapes the request handler (``_ews_http``) and the fault engine (``faults``)
send. exchangelib only looks at the status and quotes ``x-ms-diagnostics``; the EWS Managed API's
ports parse the challenge's parameters, ``authorization_uri`` among them.
"""

from __future__ import annotations

__all__ = ["NO_PERMISSION", "REASONS", "challenge", "diagnostics", "unauthorized_headers"]

_CHALLENGE = (
    'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
    'trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
    'authorization_uri="{authority}/common/oauth2/authorize", error="invalid_token"'
)
_AUTHORITY = "https://login.microsoftonline.com"

#: ``error_category`` → the number Exchange Online puts first in ``x-ms-diagnostics``.
_CODES = {
    "invalid_signature": 2000000,
    "invalid_token": 2000001,
    "token_expired": 2000002,
    "invalid_resource": 2000003,  # a token for another audience (e.g. Microsoft Graph's)
    "invalid_grant": 2000008,  # no full_access_as_app role: a 401, not an EWS fault
}

NO_PERMISSION = "The token contains no permissions, or permissions can not be understood."

#: The default reason per category, for injected 401s (``Fault(kind="unauthorized")``).
REASONS = {
    "token_expired": "The token has expired.",
    "invalid_token": "The token is invalid.",
    "invalid_signature": "The token has an invalid signature.",
    "invalid_resource": "The audience claim value is invalid 'aud'.",
    "invalid_grant": NO_PERMISSION,
}


def challenge(authority: str | None = None) -> str:
    """The ``WWW-Authenticate`` value; ``authority`` (the token server's URL) or Entra's."""
    return _CHALLENGE.format(authority=(authority or _AUTHORITY).rstrip("/"))


def diagnostics(category: str, reason: str | None = None) -> str:
    """``x-ms-diagnostics``: ``2000002;reason="…";error_category="token_expired"``."""
    code = _CODES.get(category, _CODES["invalid_token"])
    text = reason if reason is not None else REASONS.get(category, REASONS["invalid_token"])
    safe = text.replace('"', "'").replace("\r", " ").replace("\n", " ")
    return f'{code};reason="{safe}";error_category="{category}"'


def unauthorized_headers(
    category: str, reason: str | None = None, authority: str | None = None
) -> dict[str, str]:
    """Both headers of a 401 for ``category``."""
    return {
        "WWW-Authenticate": challenge(authority),
        "x-ms-diagnostics": diagnostics(category, reason),
    }
