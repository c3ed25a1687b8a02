"""What a person can do about a token error, and what a token says about itself."""

from __future__ import annotations

import re
from typing import Any

import jwt

__all__ = ["aadsts_code", "decode_claims", "hint_for"]

# The AADSTS codes people meet when setting up app-only EWS access, with the fix.
_HINTS = {
    "7000215": "the client secret is wrong or expired: use the secret's VALUE (shown once when "
    "it is created), not its ID",
    "7000222": "the client secret has expired: create a new one in the app registration and "
    "update the secret source",
    "700016": "the client id is not registered in that tenant: check client_id and the tenant "
    "in token_endpoint (the app must be registered or consented there)",
    "90002": "tenant not found: check the tenant id or domain in token_endpoint",
    "900023": "the tenant in token_endpoint is not a valid tenant id or domain",
    "70011": "invalid scope: app-only tokens are for one resource, '{resource}/.default': "
    "'https://outlook.office365.com/.default' for EWS, 'https://graph.microsoft.com/.default' "
    "for Microsoft Graph (one credential may name both: each gets its own token)",
    "1002012": "invalid scope: for EWS app-only access the scope must be "
    "'https://outlook.office365.com/.default'",
    "700027": "the certificate is not registered on the app, or the assertion is malformed: "
    "upload the certificate (public part) to the app registration",
    "700024": "the client assertion is outside its valid time range: check the machine clock",
    "500011": "the resource is not registered in the tenant: check the scope",
    "7000112": "the application is disabled in the tenant",
    "50011": "the redirect URI does not match (not used by client credentials: check the flow)",
    "65001": "admin consent is missing: grant admin consent for full_access_as_app",
    "50126": "invalid credentials",
    "53003": "access blocked by Conditional Access policies for this workload identity",
}

_CODE = re.compile(r"AADSTS(\d+)")


def aadsts_code(text: str | None, codes: Any = None) -> str | None:
    """The AADSTS code from ``error_codes`` (Entra's list) or the description text."""
    if isinstance(codes, list) and codes and isinstance(codes[0], int | str):
        return str(codes[0])
    match = _CODE.search(text or "")
    return match.group(1) if match else None


def hint_for(aadsts: str | int | None, error: str | None = None) -> str | None:
    """The fix for an AADSTS code (or, without one, for an OAuth ``error``); None if unknown."""
    if aadsts is not None:
        hint = _HINTS.get(str(aadsts).removeprefix("AADSTS"))
        if hint:
            return hint
    if error == "invalid_client":
        return "the server rejected the client authentication: check client_id and the secret"
    if error == "invalid_scope":
        return "the server rejected the scope: check 'scopes'"
    if error == "unauthorized_client":
        return "the client is not allowed the client_credentials grant on this server"
    return None


def decode_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT access token, unverified (for display only); None when not a JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None
