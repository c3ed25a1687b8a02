"""The one TLS trust rule of every outgoing connection: tokens, EWS, webhooks.

A connection trusts the configured ``ca_bundle`` (a PEM file) only, or else the system store
(OpenSSL's default paths). Nothing else in the environment changes it: an explicit
``ssl.SSLContext`` is immune to ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` (only ``requests``
reads those, and its ``verify=True`` means certifi's bundle, not the system's) and to httpx's
``SSL_CERT_FILE`` handling (read only when ``verify=True``). Where a bundle is configured per
endpoint (a mailbox's ``ca_bundle``), it applies to URLs of exactly that scheme, host and port:
``https://mail.contoso.com`` says nothing about ``https://mail.contoso.com.evil.net``
(issue 11; guarded by ``tests/auth/test_trust_rule.py``).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Origin", "origin", "requests_verify", "trust_context"]

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"https": 443, "http": 80}


def origin(url: str) -> Origin:
    """``(scheme, host, port)`` of ``url``, lower case, the port filled in from the scheme."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    return scheme, (parts.hostname or "").lower().rstrip("."), port


def trust_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """A new client context trusting ``ca_bundle`` only, or the system store when None.

    New each time: HTTP clients set options (ALPN) on the context they are given. Raises
    ``OSError`` or ``ssl.SSLError`` when the bundle cannot be loaded.
    """
    if ca_bundle is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_bundle))


def requests_verify(ca_bundle: Path | str | None) -> str | bool:
    """The rule as a ``verify`` value for clients built on ``requests`` (hvac, azure-core).

    Always a path when one can be found: ``requests`` replaces ``verify=True`` with
    ``REQUESTS_CA_BUNDLE`` and otherwise means certifi's bundle, never the system store. The
    system store is OpenSSL's default file, else its default directory; ``True`` only when
    neither exists (then certifi's bundle is what ``requests`` can do).
    """
    if ca_bundle is not None:
        return str(ca_bundle)
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return True
