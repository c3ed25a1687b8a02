"""TLS contexts for token requests: the listener's one trust rule (``listener._tls``)."""

from __future__ import annotations

import ssl
from pathlib import Path

from listener._tls import trust_context
from listener.errors import TokenError

__all__ = ["ssl_context"]


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """:func:`trust_context` for a token endpoint: a bundle that cannot load is a ``TokenError``."""
    try:
        return trust_context(ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise TokenError(f"cannot load ca_bundle {ca_bundle}: {exc}") from None
