"""What every secret source shares: read on demand, cache, re-read on ``refresh``, never show it."""

from __future__ import annotations

import importlib
import threading
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr

from listener.errors import SecretError

__all__ = ["CachedSecret", "check_url", "is_loopback_host", "register_secret"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback_host(host: str | None) -> bool:
    """True for names that never leave the machine (plain http is tolerated only for these)."""
    if not host:
        return False
    host = host.lower()
    return host in _LOOPBACK_HOSTS or host.startswith("127.") or host.endswith(".localhost")


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
