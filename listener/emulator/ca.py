"""The emulator's throw-away certificate authority (trustme), shared by the token and EWS servers.

Clients trust ``ca_file``; nothing is ever added to the system trust store.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import trustme

__all__ = ["EmulatorCA"]

_HOSTS = ("127.0.0.1", "localhost", "::1")


class EmulatorCA:
    """A CA plus one server certificate for the loopback names, written as PEM files."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self._ca = trustme.CA(organization_name="ews-listener emulator")
        self._cert = self._ca.issue_cert(*_HOSTS)
        if directory is None:
            directory = tempfile.mkdtemp(prefix="ews-emulator-ca-")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = self.directory / "server.pem"
        self._cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the loopback certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file))
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))
