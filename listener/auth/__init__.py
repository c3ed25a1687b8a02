"""Access tokens for the configured credentials.

``TokenProviders(settings.credentials).for_mailbox(mailbox)`` gives the ``TokenProvider``
(``listener.abc``) of the mailbox's credential and resource (``listener.auth.resources``): a
``CachingTokenProvider`` over msal (Microsoft endpoints with a secret in the body or a
certificate) or a thin RFC 6749 client on httpx (everything else, and HTTP Basic). Nothing
outside this package imports msal.

The names below are imported on first use (PEP 562): ``listener.config`` validates scopes with
``listener.auth.resources`` and must not pay for importing msal and httpx (``check-config``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "decode_claims": "hints",
    "hint_for": "hints",
    "MsalClient": "msal_client",
    "OAuth2Client": "oauth2",
    "basic_authorization": "oauth2",
    "CachingTokenProvider": "provider",
    "RetryPolicy": "provider",
    "TokenClient": "provider",
    "TokenProviders": "registry",
    "build_client": "registry",
    "build_provider": "registry",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
