"""Vault and Key Vault follow the listener's one TLS trust rule (issue 11, point 9): without a
``ca_bundle`` the system store decides, never ``REQUESTS_CA_BUNDLE``."""

from __future__ import annotations

import pytest

from ews_listener_emulators.ca import EmulatorCA
from listener._tls import requests_verify
from listener.errors import SecretError
from tests.secrets.conftest import FakeServer
from tests.secrets.test_remote import VALUE, identity, key_vault, vault  # noqa: F401 - fixture


def test_vault_without_ca_bundle_ignores_requests_ca_bundle(
    fake: FakeServer, ca: EmulatorCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE trusting the vault's CA does not make hvac trust it."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(ca.ca_file))
    fake.state.kv["secret/ews/sales"] = {"client_secret": VALUE}
    with pytest.raises(SecretError, match="TLS verification failed"):
        vault(fake, ca, ca_bundle=None).read()


@pytest.mark.usefixtures("identity")
def test_key_vault_without_ca_bundle_ignores_requests_ca_bundle(
    fake: FakeServer, ca: EmulatorCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for azure-core's requests transport."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.ca_file))
    fake.state.secrets["sales-secret"] = VALUE
    with pytest.raises(SecretError, match="TLS verification failed"):
        key_vault(fake, ca, ca_bundle=None).read()


def test_requests_verify_is_a_path_for_the_system_store() -> None:
    """A configured bundle is passed as is; without one, the system store's file or folder."""
    assert requests_verify("/etc/listener/ca.pem") == "/etc/listener/ca.pem"
    assert isinstance(requests_verify(None), str)
