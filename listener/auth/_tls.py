"""TLS contexts for token requests that honour ``ca_bundle`` whatever the environment says."""

from __future__ import annotations

import ssl
from pathlib import Path

from listener.errors import TokenError

__all__ = ["ssl_context"]


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """A client context trusting ``ca_bundle`` only (or the system store when None).

    An explicit ``SSLContext`` is immune to REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (only ``requests``
    reads those) and to httpx's SSL_CERT_FILE (read only when ``verify=True``).
    """
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise TokenError(f"cannot load ca_bundle {ca_bundle}: {exc}") from None
