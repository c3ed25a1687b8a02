"""``[credentials.NAME]``: OAuth 2.0 client-credentials registrations (secret or certificate)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from listener.config._base import Model
from listener.secrets import SecretSpec
from listener.secrets._base import check_url

__all__ = ["CertificateConfig", "CredentialConfig"]

# Microsoft identity platform token endpoints: https://{host}/{tenant}/oauth2/v2.0/token. Any host
# of that shape (sovereign clouds, the emulator) gets msal when msal can send the credential.
_MS_TOKEN_PATH = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token/?$")
_AUTH_ALIASES = {"client_secret_basic": "basic", "client_secret_post": "body"}


class CertificateConfig(Model):
    """A certificate credential (``private_key_jwt``): PEM private key and certificate files."""

    private_key: Path
    certificate: Path
    password: SecretSpec | None = None


class CredentialConfig(Model):
    """One OAuth 2.0 client-credentials registration, shared by every mailbox that names it."""

    client_id: str = Field(min_length=1)
    secret: SecretSpec | None = None
    certificate: CertificateConfig | None = None
    token_endpoint: str
    scopes: tuple[str, ...]
    auth_method: Literal["basic", "body"] = "basic"
    basic_encoding: Literal["form", "raw"] = "form"
    timeout: float = Field(default=10.0, gt=0)
    ca_bundle: Path | None = None
    max_connections: int = Field(default=4, ge=1, le=27)
    provider: Literal["auto", "msal", "oauth2"] = "auto"

    @field_validator("client_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("token_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_url(value, what="token_endpoint")

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split()
        elif isinstance(value, list | tuple):
            for scope in value:
                if isinstance(scope, str) and (not scope.strip() or scope != scope.strip()):
                    raise ValueError(
                        f"each scope must be a non-empty word without spaces: {scope!r}"
                    )
        if isinstance(value, list | tuple) and not value:
            raise ValueError(
                "must name at least one scope, e.g. 'https://outlook.office365.com/.default'"
            )
        return value

    @field_validator("auth_method", mode="before")
    @classmethod
    def _method_alias(cls, value: Any) -> Any:
        return _AUTH_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_credential(self) -> CredentialConfig:
        if (self.secret is None) == (self.certificate is None):
            raise ValueError("give exactly one of 'secret' (a secret source) or 'certificate'")
        if self.provider == "msal":
            if self.microsoft_tenant is None:
                raise ValueError(
                    "provider 'msal' needs a Microsoft identity platform endpoint "
                    "'https://HOST/TENANT/oauth2/v2.0/token'"
                )
            if self.secret is not None and self.auth_method == "basic":
                raise ValueError(
                    "msal sends the client secret in the request body: use auth_method = 'body' "
                    "with provider 'msal', or provider = 'oauth2' for HTTP Basic"
                )
        if self.provider == "oauth2" and self.certificate is not None:
            raise ValueError("certificate credentials use msal: set provider = 'auto' or 'msal'")
        if self.certificate is not None and self.microsoft_tenant is None:
            raise ValueError(
                "certificate credentials need a Microsoft identity platform endpoint "
                "'https://HOST/TENANT/oauth2/v2.0/token'"
            )
        return self

    @property
    def microsoft_tenant(self) -> str | None:
        """The tenant segment when the endpoint has the Microsoft identity platform's shape."""
        match = _MS_TOKEN_PATH.match(urlsplit(self.token_endpoint).path)
        return match.group("tenant") if match else None

    @property
    def authority(self) -> str | None:
        """msal's authority ``https://host/{tenant}`` for a Microsoft-shaped endpoint."""
        tenant = self.microsoft_tenant
        if tenant is None:
            return None
        parts = urlsplit(self.token_endpoint)
        return f"{parts.scheme}://{parts.netloc}/{tenant}"

    @property
    def resolved_provider(self) -> Literal["msal", "oauth2"]:
        """Which client fetches tokens: msal when it can send this credential, else RFC 6749."""
        if self.provider != "auto":
            return self.provider
        if self.microsoft_tenant is not None and (
            self.certificate is not None or self.auth_method == "body"
        ):
            return "msal"
        return "oauth2"
