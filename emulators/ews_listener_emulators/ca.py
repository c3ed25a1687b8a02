"""The emulator's throw-away certificate authority (trustme), shared by the token and EWS servers.

Clients trust ``ca_file``; nothing is ever added to the system trust store. ``server.pem`` holds the
server's private key, so it is created 0600 whatever the umask (issue 11, point 11: trustme's
``write_to_path`` left it 0644); ``ca.pem`` is a public certificate that other users' clients read.
"""

from __future__ import annotations

import os
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
        _write_private(self.cert_file, self._cert.private_key_and_cert_chain_pem.bytes())

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the loopback certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file))
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read, replacing any older file atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    # O_EXCL: never write a key into a file someone else created (and so owns the mode of).
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
