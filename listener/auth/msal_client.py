"""Microsoft identity platform tokens through msal ``ConfidentialClientApplication``.

Used for Microsoft-shaped endpoints when msal can send the credential: a client secret in the
body (msal never sends HTTP Basic) or a certificate (``private_key_jwt``). The application is
built on first use (msal fetches the OpenID configuration in its constructor: no network at load).

Two msal behaviours shape the HTTP adapter below:
- msal's ``ThrottledHttpClient`` caches 429/5xx answers for their Retry-After (5 s by default)
  and replays them, so our retries would never reach the server. The adapter raises a transient
  ``TokenError`` for those answers instead: an exception is not cached.
- msal's default ``requests.Session`` sets ``verify`` on the session, which REQUESTS_CA_BUNDLE
  silently overrides; the adapter uses httpx with an ``ssl.SSLContext`` from ``ca_bundle``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import msal

from listener.abc import AccessToken
from listener.auth._tls import ssl_context
from listener.auth.hints import aadsts_code, hint_for
from listener.auth.oauth2 import parse_token_response, scrub
from listener.config.models import CredentialConfig
from listener.errors import SecretError, TokenError

__all__ = ["MICROSOFT_AUTHORITY_HOSTS", "MsalClient"]

# Hosts msal knows: instance discovery and authority validation make sense only for these.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    }
)


class _HttpAdapter:
    """The ``http_client`` msal calls (``get``/``post`` returning a requests-like response)."""

    def __init__(self, client: httpx.Client, where: str, secrets: Callable[[], tuple[str, ...]]):
        self._client = client
        self._where = where
        self._secrets = secrets

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        host = urlsplit(url).netloc
        data = kwargs.get("data")
        if isinstance(data, dict):
            # msal passes the client assertion as bytes: requests sends bytes form values as they
            # are, httpx would send their repr ("b'eyJ…'").
            data = {k: v.decode() if isinstance(v, bytes) else v for k, v in data.items()}
        try:
            response = self._client.request(
                method, url, params=kwargs.get("params"), data=data, headers=kwargs.get("headers")
            )
        except httpx.ConnectError as exc:
            text = _short(str(exc))
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
                raise TokenError(
                    f"{self._where}: TLS verification of {host} failed ({text}): set ca_bundle "
                    "to the CA that signed the token endpoint's certificate"
                ) from None
            raise TokenError(
                f"{self._where}: cannot reach {host}: {text}", transient=True
            ) from None
        except httpx.TimeoutException:
            raise TokenError(
                f"{self._where}: {host} did not answer in time", transient=True
            ) from None
        except httpx.HTTPError as exc:
            raise TokenError(
                f"{self._where}: the connection to {host} failed: {type(exc).__name__}",
                transient=True,
            ) from None
        if (
            response.status_code >= 500
            or response.status_code == 429
            or (method == "POST" and not _json_object(response))
        ):
            # Raise instead of returning: see the module docstring (msal caches these answers).
            parse_token_response(
                response.status_code,
                response.headers.get("content-type", ""),
                response.content,
                where=self._where,
                now=datetime.now(UTC),
                scopes=(),
                secrets=self._secrets(),
            )
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._send("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._send("POST", url, **kwargs)

    def close(self) -> None:
        self._client.close()


class MsalClient:
    """Requests tokens for one credential with msal (client secret in the body, or certificate).

    ``scopes``: what to request (default: all the credential's; one resource's, see
    ``listener.auth.resources``).
    """

    def __init__(
        self,
        name: str,
        config: CredentialConfig,
        *,
        scopes: tuple[str, ...] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        authority = config.authority
        if authority is None:
            raise ValueError(f"credential {name!r}: msal needs a Microsoft-shaped token_endpoint")
        self.name = name
        self.config = config
        self.scopes = tuple(scopes) if scopes is not None else config.scopes
        self.authority = authority
        self._where = f"credential {name!r}"
        self._clock = clock or (lambda: datetime.now(UTC))
        self._app: Any = None
        self._http: _HttpAdapter | None = None
        self._lock = threading.Lock()
        self._known_secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"MsalClient(name={self.name!r}, authority={self.authority!r})"

    def _credential(self) -> str | dict[str, str]:
        config = self.config
        if config.secret is not None:
            secret = config.secret.read().get_secret_value()
            self._known_secrets = (secret,)
            return secret
        certificate = config.certificate
        assert certificate is not None  # CredentialConfig guarantees secret xor certificate
        try:
            key = certificate.private_key.read_text(encoding="utf-8")
            cert = certificate.certificate.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(
                f"{self._where}: cannot read the certificate files: {exc.strerror}: {exc.filename}"
            ) from None
        credential = {"private_key": key, "public_certificate": cert}
        if certificate.password is not None:
            password = certificate.password.read().get_secret_value()
            self._known_secrets = (password,)
            credential["passphrase"] = password
        return credential

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
        if self._http is None:
            client = httpx.Client(
                verify=ssl_context(self.config.ca_bundle), timeout=self.config.timeout
            )
            self._http = _HttpAdapter(client, self._where, lambda: self._known_secrets)
        host = (urlsplit(self.authority).hostname or "").lower()
        microsoft = host in MICROSOFT_AUTHORITY_HOSTS
        try:
            self._app = msal.ConfidentialClientApplication(
                self.config.client_id,
                client_credential=self._credential(),
                authority=self.authority,
                validate_authority=microsoft,
                instance_discovery=microsoft,
                http_client=self._http,
                token_cache=msal.TokenCache(),
                timeout=self.config.timeout,
            )
        except ValueError as exc:
            raise self._setup_error(exc) from None
        return self._app

    def _setup_error(self, exc: ValueError) -> TokenError:
        """msal's ValueError for a failed OpenID discovery, with the server's answer recovered.

        msal replaces the discovery error (whose text holds Entra's JSON, e.g. AADSTS90002 for
        an unknown tenant) with a generic "Unable to get authority configuration" and keeps the
        original only as ``__context__``.
        """
        original = str(exc.__context__ or "")
        _, _, body = original.partition("Error: ")
        error, description = "invalid_authority", ""
        try:
            answer = json.loads(body) if body else None
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            error = str(answer.get("error") or error)
            description = str(answer.get("error_description") or "")
        text = scrub(description or str(exc), self._known_secrets)
        code = aadsts_code(text, answer.get("error_codes") if isinstance(answer, dict) else None)
        hint = hint_for(code, error)
        return TokenError(
            f"{self._where}: msal could not use the authority {self.authority}: {_short(text)}"
            + (f" (hint: {hint})" if hint else ""),
            error=error,
            error_description=description or None,
            aadsts=code,
        )

    def refresh_secret(self) -> bool:
        config = self.config
        source = config.secret if config.secret is not None else None
        if source is None and config.certificate is not None:
            source = config.certificate.password
        if source is None:
            return False
        # Against the value this application was built with, not the source's cached one: a
        # sibling provider of the same credential (another resource) may have re-read it already.
        before = self._known_secrets[0] if self._known_secrets else source.read().get_secret_value()
        changed = source.refresh().get_secret_value() != before
        if changed:
            with self._lock:
                self._app = None  # rebuilt with the new secret on the next request
        return changed

    def request_token(self) -> AccessToken:
        with self._lock:
            app = self._application()
            # Our caching layer decides when to renew; msal's own cache would hand back the token
            # we are trying to replace.
            cache = app.token_cache
            for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                cache.remove_at(entry)
        try:
            result = app.acquire_token_for_client(scopes=list(self.scopes))
        except msal.exceptions.MsalServiceError as exc:
            raise TokenError(
                f"{self._where}: the token endpoint failed: {_short(str(exc))}", transient=True
            ) from None
        except jwt.InvalidKeyError:
            raise TokenError(
                f"{self._where}: the certificate's private key cannot sign the client assertion: "
                "Entra ID needs an RSA key (2048 bits or more)"
            ) from None
        except ValueError as exc:  # msal: a bad key or password, or a non-JSON answer
            raise TokenError(
                f"{self._where}: msal failed: {_short(scrub(str(exc), self._known_secrets))}"
            ) from None
        if not isinstance(result, dict):
            raise TokenError(f"{self._where}: msal returned no answer", transient=True)
        if "access_token" not in result:
            description = scrub(str(result.get("error_description") or ""), self._known_secrets)
            error = str(result.get("error") or "unknown_error")
            code = aadsts_code(description, result.get("error_codes"))
            first = description.strip().splitlines()[0] if description.strip() else ""
            hint = hint_for(code, error)
            raise TokenError(
                f"{self._where}: the token endpoint refused: {error}"
                + (f": {first}" if first else "")
                + (f" (hint: {hint})" if hint else ""),
                error=error,
                error_description=description or None,
                aadsts=code,
            )
        expires_in = float(result.get("expires_in") or 3600)
        return AccessToken(
            token=str(result["access_token"]),
            expires_at=self._clock() + timedelta(seconds=expires_in),
            token_type=str(result.get("token_type") or "Bearer"),
            scopes=self.scopes,
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        self._app = None


def _json_object(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


def _short(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no details"
