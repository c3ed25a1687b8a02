"""Access tokens for the configured credentials.

``TokenProviders(settings.credentials).get(name)`` gives the credential's ``TokenProvider``
(``listener.abc``): a ``CachingTokenProvider`` over msal (Microsoft endpoints with a secret in the
body or a certificate) or a thin RFC 6749 client on httpx (everything else, and HTTP Basic). Nothing
outside this package imports msal.
"""

from __future__ import annotations

from listener.auth.hints import decode_claims, hint_for
from listener.auth.msal_client import MsalClient
from listener.auth.oauth2 import OAuth2Client, basic_authorization
from listener.auth.provider import CachingTokenProvider, RetryPolicy, TokenClient
from listener.auth.registry import TokenProviders, build_client, build_provider

__all__ = [
    "CachingTokenProvider",
    "MsalClient",
    "OAuth2Client",
    "RetryPolicy",
    "TokenClient",
    "TokenProviders",
    "basic_authorization",
    "build_client",
    "build_provider",
    "decode_claims",
    "hint_for",
]
