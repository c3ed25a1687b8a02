"""How exchangelib reaches the server: our tokens, our CA bundles, our retry decisions.

Everything here exists because of an exchangelib behaviour (5.6.0):

- ``OAuth2Credentials`` cannot take an external token: ``Protocol.close_session()`` wipes the token
  of ``BackendApplicationClient`` credentials. ``OAuth2AuthorizationCodeCredentials`` keeps it, and
  without a client secret requests-oauthlib raises ``TokenExpiredError`` when the token's lifetime
  runs out, which makes exchangelib call ``refresh(session)``: that is where we ask our
  ``TokenProvider``.
- A server-side 401 never calls ``refresh()``; the source catches ``UnauthorizedError``, invalidates
  the token and retries once (see ``source.py``).
- ``BaseProtocol.HTTP_ADAPTER_CLS`` is one class for the whole process, ``requests`` lets
  ``REQUESTS_CA_BUNDLE`` override a session's ``verify``, and ``verify=True`` means certifi's
  bundle rather than the system store. So the adapter ignores ``verify`` and hands urllib3 an
  ``ssl.SSLContext`` by the listener's one trust rule (``listener.auth._tls``): the mailbox's
  ``ca_bundle`` for URLs of exactly its endpoint's scheme, host and port, else the system store.
  (It used to fall back to the environment's bundle and to match endpoints by string prefix, so
  ``https://mail.contoso.com`` also covered ``https://mail.contoso.com.evil.net``: issue 11.)
- ``BaseProtocol.decrease_poolsize()`` (called on ``ErrorServerBusy`` and
  ``ErrorExceededConnectionCount``) takes the pool lock, then waits for a free session with
  ``get_session()``; when every session is in use and the pool is below its maximum,
  ``get_session()`` calls ``increase_poolsize()``, which takes the same non-reentrant lock: the
  thread deadlocks, and every later thread of that ``Protocol`` that resizes the pool with it
  (found by the long chaos run: three mailboxes of one credential hung for good). Its other
  habit, retrying ``ErrorExceededConnectionCount`` at once in a loop, hammers a server that is
  refusing connections. :func:`install_adapter` replaces it, for the listener's configurations,
  with one that retires an idle session if there is one and never waits, and then always says
  "no further" so the error reaches the source, which backs the credential off.
- ``requests`` reads the environment on EVERY request of a session that trusts it: proxies
  (``get_environ_proxies`` walks all of ``os.environ``, twice), ``~/.netrc`` and
  ``REQUESTS_CA_BUNDLE``: about a tenth of an idle poll's CPU (an ``IdOnly`` SyncFolderItems),
  more in a pod whose environment holds every service's variables. Sessions of our credentials
  (``TokenBridge``) read the proxies once, when exchangelib creates the session, and then trust
  the environment no further: a proxy set in ``HTTPS_PROXY`` / ``NO_PROXY`` is used as before;
  ``.netrc`` never applied (the token is the authorisation) and neither did the CA variables
  (the adapter below decides trust).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from queue import Empty
from typing import Any

import requests.adapters
import requests.utils
from exchangelib import Identity, OAuth2AuthorizationCodeCredentials
from exchangelib.errors import (
    ErrorInternalServerTransientError,
    ErrorServerBusy,
    SessionPoolMinSizeReached,
    UnauthorizedError,
)
from exchangelib.protocol import BaseProtocol, FailFast
from exchangelib.util import _get_retry_after

from listener._tls import Origin, origin, trust_context
from listener.abc import AccessToken, TokenProvider

__all__ = [
    "ListenerRetryPolicy",
    "TokenBridge",
    "install_adapter",
    "pin_environment",
    "register_ca_bundle",
]

# Reported lifetime is this much shorter than the real one, so requests-oauthlib asks for a new
# token (through ``refresh``) before Exchange would reject the old one.
_LIFETIME_MARGIN = 120.0

_ca_lock = threading.Lock()
_ca_by_origin: dict[Origin, str] = {}
# One context per bundle (None: the system store), built on first use: urllib3 keeps a pool per
# context, so sharing them keeps connections pooled.
_contexts: dict[str | None, ssl.SSLContext] = {}


def register_ca_bundle(endpoint: str, ca_bundle: str) -> None:
    """Trust ``ca_bundle`` (a PEM file), and only it, for EWS requests to ``endpoint``'s exact
    scheme, host and port (the path does not matter)."""
    with _ca_lock:
        _ca_by_origin[origin(endpoint)] = ca_bundle
    install_adapter()


def install_adapter() -> None:
    """Make exchangelib use our adapter (CA bundles by URL, whole-chunk parsing) and a session
    pool that cannot deadlock when it shrinks."""
    BaseProtocol.HTTP_ADAPTER_CLS = _CaBundleAdapter
    BaseProtocol.decrease_poolsize = _decrease_poolsize
    BaseProtocol.create_oauth2_session = _create_oauth2_session


_exchangelib_create_oauth2_session = BaseProtocol.create_oauth2_session


def _create_oauth2_session(self: BaseProtocol) -> Any:
    """exchangelib's session, which for our credentials takes its proxies from the environment
    now and does not look at the environment again on each request (see the module docstring)."""
    session = _exchangelib_create_oauth2_session(self)
    if isinstance(self.credentials, TokenBridge):
        pin_environment(session, self.service_endpoint)
    return session


def pin_environment(session: requests.Session, url: str) -> None:
    """Give ``session`` the proxies the environment says for ``url`` and stop it reading the
    environment per request (``trust_env``: proxies, ``.netrc``, ``REQUESTS_CA_BUNDLE``)."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    session.trust_env = False


_pool_log = logging.getLogger("exchangelib.protocol")
_exchangelib_decrease_poolsize = BaseProtocol.decrease_poolsize


def _decrease_poolsize(self: BaseProtocol) -> None:
    """Retire one idle session, never waiting for one, then raise ``SessionPoolMinSizeReached``.

    exchangelib calls this on ``ErrorServerBusy`` (and ignores the exception) and on
    ``ErrorExceededConnectionCount`` (where the exception ends its retry loop and re-raises the
    server's error). The listener fails fast on both and backs off itself; the requests in flight
    are capped by our ``CredentialGate``. Other configurations keep exchangelib's own method.
    """
    if not isinstance(self.retry_policy, ListenerRetryPolicy):
        _exchangelib_decrease_poolsize(self)
        return
    with self._session_pool_lock:
        if self._session_pool_size > 1:
            try:
                session = self._session_pool.get(block=False)
            except Empty:
                pass  # every session is in use: keep the size
            else:
                _pool_log.warning(
                    "Server %s: Decreasing session pool size from %s to %s",
                    self.server,
                    self._session_pool_size,
                    self._session_pool_size - 1,
                )
                self.close_session(session)
                self._session_pool_size -= 1
    raise SessionPoolMinSizeReached("the listener backs off itself instead of retrying at once")


def _ca_for(url: str) -> str | None:
    with _ca_lock:
        return _ca_by_origin.get(origin(url))


def _context_for(url: str) -> ssl.SSLContext:
    bundle = _ca_for(url)
    with _ca_lock:
        context = _contexts.get(bundle)
        if context is None:
            context = _contexts[bundle] = trust_context(bundle)
        return context


class _WholeChunks(requests.Response):
    """A response whose ``iter_content()`` reads in 64 KiB pieces where exchangelib asks for bytes.

    exchangelib parses every SOAP answer with ``to_xml(response.iter_content())``, and requests'
    default chunk size is ONE byte: for a body already read into memory that is a Python-level
    loop per byte (about half of the listener's CPU time on a 2,000-message poll), so such a body
    goes over in 64 KiB pieces. A streaming answer (``GetStreamingEvents``) is cut into envelopes
    by ``DocumentYielder``, which needs one byte per item: there every byte went through
    requests', urllib3's and http.client's chunked reading (~0.5 ms of CPU per notification, a
    few per cent of the poll it wakes, on the thread the polls share the interpreter with). A
    chunked stream is read a whole HTTP chunk at a time instead and handed over byte by byte from
    memory. urllib3 returns each chunk as soon as it has arrived, so an event is not held back
    waiting for more; a stream that is not chunked keeps the one-byte reads, which never wait.
    """

    def iter_content(self, chunk_size: int | None = 1, decode_unicode: bool = False) -> Any:
        consumed = getattr(self, "_content_consumed", False)
        if chunk_size == 1 and consumed and isinstance(self._content, bytes):
            chunk_size = 1 << 16
        elif chunk_size == 1 and not (consumed or decode_unicode) and self._chunked():
            return _bytewise(super().iter_content(chunk_size=1 << 16))
        return super().iter_content(chunk_size=chunk_size, decode_unicode=decode_unicode)

    def _chunked(self) -> bool:
        return getattr(self.raw, "chunked", False) is True


def _bytewise(pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        for i in range(len(piece)):
            yield piece[i : i + 1]


class _CaBundleAdapter(requests.adapters.HTTPAdapter):
    """Verifies TLS by the listener's trust rule for the URL, whatever ``verify`` and the
    environment say (guarded by ``tests/auth/test_trust_rule.py``)."""

    def build_response(self, req: Any, resp: Any) -> requests.Response:
        response = super().build_response(req, resp)
        response.__class__ = _WholeChunks
        return response

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> Any:
        # requests >= 2.32.3 picks the connection pool here; the context is part of its key.
        host_params: dict[str, Any]
        pool_kwargs: dict[str, Any]
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(  # type: ignore[assignment]
            request, True, cert
        )
        if host_params.get("scheme") == "https":
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = _context_for(request.url or "")
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests would point the connection at certifi's file or REQUESTS_CA_BUNDLE, which
        # urllib3 then loads into our context: clear them (verify=False) and require a
        # certificate, so the context alone decides.
        super().cert_verify(conn=conn, url=url, verify=False, cert=cert)  # type: ignore[no-untyped-call]
        if url.lower().startswith("https"):
            conn.cert_reqs = "CERT_REQUIRED"


class ListenerRetryPolicy(FailFast):  # type: ignore[misc]
    """Fail fast, so the listener decides about retries and back-off itself.

    exchangelib's ``FaultTolerance`` keeps one back-off deadline per ``Configuration`` and sleeps
    inside the request, holding the poll thread; with one configuration per credential, a
    throttled mailbox would stall its siblings in the middle of their polls. We raise instead: the
    source turns ``ErrorServerBusy`` into a ``SourceError`` carrying the server's back-off
    (``BackOffMilliseconds`` or ``Retry-After``), and the service pauses that credential.
    """

    def raise_response_errors(self, response: Any) -> None:
        try:
            super().raise_response_errors(response)
        except UnauthorizedError as e:
            # Exchange says why in x-ms-diagnostics (token_expired, invalid_signature, ...);
            # exchangelib drops it. Keep it: "expired" points at clock skew, not permissions.
            diagnostics = response.headers.get("x-ms-diagnostics")
            if diagnostics:
                raise UnauthorizedError(f"{e.args[0]}: {diagnostics}") from e
            raise
        except (ErrorInternalServerTransientError, ErrorServerBusy) as e:
            retry_after = _get_retry_after(response)
            if retry_after:
                raise ErrorServerBusy(e.args[0], back_off=retry_after) from e
            raise


class TokenBridge(OAuth2AuthorizationCodeCredentials):  # type: ignore[misc]
    """exchangelib credentials whose access tokens come from a :class:`TokenProvider`."""

    def __init__(self, provider: TokenProvider, client_id: str, identity: str | None) -> None:
        super().__init__(
            client_id=client_id,
            client_secret=None,
            identity=Identity(primary_smtp_address=identity) if identity else None,
        )
        self._provider = provider
        self._token: AccessToken | None = None

    # exchangelib hashes credentials to find its cached Protocol; one bridge per
    # (credential, endpoint) means one Protocol, whatever the token of the moment.
    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def _as_dict(self, token: AccessToken) -> dict[str, Any]:
        lifetime = (token.expires_at - datetime.now(UTC)).total_seconds() - _LIFETIME_MARGIN
        return {
            "access_token": token.token,
            "token_type": token.token_type,
            "expires_in": max(int(lifetime), 1),
            "expires_at": time.time() + max(lifetime, 1.0),
        }

    def _load(self, *, force: bool) -> None:
        token = self._provider.get_token(force_refresh=force)
        self._token = token
        self.access_token = self._as_dict(token)

    def session_params(self) -> dict[str, Any]:
        # Called by exchangelib whenever it creates a session: hand it a token that is valid now.
        with self.lock:
            self._load(force=False)
            return {"token": self.access_token}

    def refresh(self, session: Any) -> None:
        # requests-oauthlib found the token expired (TokenExpiredError): take the provider's current
        # one, which it renews ahead of expiry.
        self._load(force=False)

    def server_rejected(self) -> None:
        """The server answered 401 with our token: forget it and fetch a new one."""
        with self.lock:
            if self._token is not None:
                self._provider.invalidate(self._token.token)
            self._load(force=True)

    def __repr__(self) -> str:
        return f"TokenBridge({self.client_id!r}, provider={self._provider.name!r})"

    @property
    def provider(self) -> TokenProvider:
        """The token provider behind this bridge (``probe`` asks it for a token)."""
        return self._provider

    __str__ = __repr__
