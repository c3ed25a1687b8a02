"""The webhook follows the listener's one TLS trust rule (issue 11, point 9)."""

from __future__ import annotations

import ssl

import pytest

from listener._tls import trust_context
from listener.handlers import HandlerTransientError, WebhookHandler
from tests.auth.test_trust_rule import Tls, tls  # noqa: F401 - the HTTPS server fixture
from tests.handlers.conftest import MakeMessage


def test_webhook_trusts_its_ca_bundle_and_never_the_environments(
    tls: Tls,  # noqa: F811 - the fixture
    make_message: MakeMessage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The webhook trusts its ca_bundle; without one, not the environment's bundle."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    plain = WebhookHandler("hook", tls.url)
    trusting = WebhookHandler("hook", tls.url, ca_bundle=tls.ca_file)
    try:
        with pytest.raises(HandlerTransientError, match="certificate verify failed"):
            plain(make_message())
        trusting(make_message())
    finally:
        plain.close()
        trusting.close()
    assert trust_context(tls.ca_file).verify_mode == ssl.CERT_REQUIRED
