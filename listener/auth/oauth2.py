"""A thin RFC 6749 client-credentials client on httpx (``client_secret_basic`` or ``_post``).

Why our own and not authlib: the grant is one form POST, httpx is already a dependency, and we
need exact control over two things libraries hide: the Basic encoding (RFC 6749 §2.3.1
form-urlencodes id and secret before Base64; some servers do not decode, hence ``raw``) and the
error answer, which must be kept (``error``, ``error_description``, AADSTS code) while the secret
never reaches an exception or a log line.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

from listener.abc import AccessToken
from listener.auth._tls import ssl_context
from listener.auth.hints import aadsts_code, hint_for
from listener.config.models import CredentialConfig
from listener.errors import TokenError

__all__ = ["OAuth2Client", "parse_token_response", "scrub"]


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (and its URL-encoded forms) replaced by asterisks."""
    for secret in secrets:
        if len(secret) >= 4:
            for form in {secret, quote_plus(secret), quote_plus(secret, safe="")}:
                text = text.replace(form, "**********")
    return text


def basic_authorization(client_id: str, secret: str, encoding: str) -> str:
    """``Basic …``: id and secret form-urlencoded first (RFC 6749 §2.3.1) unless ``raw``."""
    if encoding == "form":
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    pair = f"{client_id}:{secret}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def parse_token_response(
    status: int,
    content_type: str,
    body: bytes,
    *,
    where: str,
    now: datetime,
    scopes: tuple[str, ...],
    secrets: tuple[str, ...] = (),
) -> AccessToken:
    """The token in a token endpoint answer, or ``TokenError`` with what the server said."""
    transient = status >= 500 or status in (408, 429)
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        kind = (content_type or "no content type").split(";")[0]
        raise TokenError(
            f"{where}: the token endpoint answered HTTP {status} with {kind}, not a JSON object "
            "(is token_endpoint the right URL?)",
            status=status,
            transient=transient,
        )
    if status >= 400 or "error" in data:
        error = str(data.get("error") or f"http_{status}")
        description = scrub(str(data.get("error_description") or ""), secrets)
        code = aadsts_code(description, data.get("error_codes"))
        first_line = description.strip().splitlines()[0] if description.strip() else ""
        message = f"{where}: the token endpoint refused: {error}"
        if first_line:
            message += f": {first_line}"
        hint = hint_for(code, error)
        if hint:
            message += f" (hint: {hint})"
        raise TokenError(
            message,
            error=error,
            error_description=description or None,
            aadsts=code,
            status=status,
            transient=transient,
        )
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError(
            f"{where}: the token endpoint answered HTTP {status} without an access_token "
            f"(keys: {', '.join(sorted(map(str, data))) or 'none'})",
            status=status,
        )
    try:
        expires_in = float(data.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    granted = data.get("scope")
    return AccessToken(
        token=token,
        expires_at=now + timedelta(seconds=expires_in),
        token_type=str(data.get("token_type") or "Bearer"),
        scopes=tuple(granted.split()) if isinstance(granted, str) else scopes,
    )


class OAuth2Client:
    """Requests client-credentials tokens for one credential from any RFC 6749 endpoint.

    ``scopes``: what to request (default: all the credential's; one resource's, see
    ``listener.auth.resources``).
    """

    def __init__(
        self,
        name: str,
        config: CredentialConfig,
        *,
        scopes: tuple[str, ...] | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if config.secret is None:
            raise ValueError(f"credential {name!r}: the RFC 6749 client needs a client secret")
        self.name = name
        self.config = config
        self.scopes = tuple(scopes) if scopes is not None else config.scopes
        self._secret_source = config.secret
        self._sent: str | None = None  # the secret of the last request
        self._clock = clock or (lambda: datetime.now(UTC))
        self._transport = transport
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"OAuth2Client(name={self.name!r}, endpoint={self.config.token_endpoint!r})"

    def _client(self) -> httpx.Client:
        if self._http is None:
            verify: ssl.SSLContext = ssl_context(self.config.ca_bundle)
            self._http = httpx.Client(
                verify=verify, timeout=self.config.timeout, transport=self._transport
            )
        return self._http

    def refresh_secret(self) -> bool:
        # Against the secret this client sent, not the source's cached value: a sibling provider
        # of the same credential (another resource) may have re-read it already.
        before = self._sent or self._secret_source.read().get_secret_value()
        return self._secret_source.refresh().get_secret_value() != before

    def request_token(self) -> AccessToken:
        config = self.config
        where = f"credential {self.name!r}"
        secret = self._secret_source.read().get_secret_value()
        self._sent = secret
        form = {"grant_type": "client_credentials", "scope": " ".join(self.scopes)}
        headers = {"Accept": "application/json"}
        if config.auth_method == "body":
            form |= {"client_id": config.client_id, "client_secret": secret}
        else:
            headers["Authorization"] = basic_authorization(
                config.client_id, secret, config.basic_encoding
            )
        host = urlsplit(config.token_endpoint).netloc
        try:
            response = self._client().post(config.token_endpoint, data=form, headers=headers)
        except httpx.ConnectError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
                raise TokenError(
                    f"{where}: TLS verification of {host} failed ({_short(text)}): set ca_bundle "
                    "to the CA that signed the token endpoint's certificate",
                    transient=False,
                ) from None
            raise TokenError(
                f"{where}: cannot reach the token endpoint {host}: {_short(text)}",
                transient=True,
            ) from None
        except httpx.TimeoutException:
            raise TokenError(
                f"{where}: the token endpoint {host} did not answer within {config.timeout} s",
                transient=True,
            ) from None
        except httpx.HTTPError as exc:
            raise TokenError(
                f"{where}: the connection to {host} failed: {type(exc).__name__}: "
                f"{scrub(_short(str(exc)), (secret,))}",
                transient=True,
            ) from None
        return parse_token_response(
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
            where=where,
            now=self._clock(),
            scopes=self.scopes,
            secrets=(secret,),
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def _short(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no details"
