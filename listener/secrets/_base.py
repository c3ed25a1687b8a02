"""What every secret source shares: read on demand, cache, re-read on ``refresh``, never show it."""

from __future__ import annotations

import importlib
import ipaddress
import threading
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr

from listener.errors import SecretError

__all__ = ["CachedSecret", "check_url", "is_loopback_host", "register_secret"]


def is_loopback_host(host: str | None) -> bool:
    """True for hosts that never leave the machine (plain http is tolerated only for these).

    An address is parsed (127.0.0.0/8, ::1, an IPv4-mapped loopback); of names only
    ``localhost`` itself counts. A name is never judged by how it starts: ``127.attacker.example``
    is a DNS name anyone can point anywhere (issue 11, guarded by
    ``tests/config/test_loopback.py``).
    """
    if not host:
        return False
    host = host.lower().removeprefix("[").removesuffix("]").rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0: zone dropped
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_url(value: str, *, what: str = "URL") -> str:
    """``value`` when it is an https URL, or http to a loopback host; ValueError with the fix."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an https URL like 'https://host/path'")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(
            f"{what} must use https (plain http is accepted only for loopback hosts such as "
            f"127.0.0.1 or localhost)"
        )
    return value


def register_secret(value: str) -> None:
    """Tell the log redaction registry about ``value`` when the observability package is there.

    Imported by name at call time: ``listener.observability`` is optional for this package (and
    importing it here at import time would make every secret model pull in the logging setup).
    """
    try:
        module = importlib.import_module("listener.observability.redaction")
    except ImportError:
        return
    register = getattr(module, "register_secret", None)
    if callable(register):
        register(value)


class CachedSecret(BaseModel):
    """Base of the secret source models: ``read`` fetches once and caches; ``refresh`` re-reads.

    The value lives in a private attribute (never in ``repr``, ``model_dump`` or equality) as a
    ``SecretStr``. Reads are serialised per source so that many mailboxes asking at once cause one
    fetch from a vault.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    _cached: SecretStr | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def read(self) -> SecretStr:
        """The secret, fetched on first use; raises ``SecretError`` (without the value)."""
        with self._lock:
            if self._cached is None:
                value = self._fetch()
                if not value:
                    raise SecretError(f"{self.describe()}: the secret is empty")
                register_secret(value)
                self._cached = SecretStr(value)
            return self._cached

    def refresh(self) -> SecretStr:
        """Forget the cached value and read it again (after ``invalid_client``: it may rotate)."""
        with self._lock:
            self._cached = None
        return self.read()

    def describe(self) -> str:
        """Where the secret lives, without the secret."""
        raise NotImplementedError

    def _fetch(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.describe()
