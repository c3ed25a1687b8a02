"""Azure Key Vault secrets, read with an explicit Entra ID credential.

No ``DefaultAzureCredential``: its chain guesses (environment, CLI, IDE, managed identity) and a
service that picks up a developer's CLI login by accident is hard to debug. The configuration says
which identity to use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from listener._tls import requests_verify
from listener.errors import SecretError
from listener.secrets._base import CachedSecret, check_url

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from listener.secrets.spec import SecretSpec

__all__ = [
    "AzureCredentialSpec",
    "AzureKeyVaultSecret",
    "ClientSecretIdentity",
    "ManagedIdentity",
    "WorkloadIdentity",
]

# Hosts where msal's instance discovery is meaningful; anything else (a sovereign cloud's private
# authority, a test server) must skip it or msal asks login.microsoftonline.com about it.
_MICROSOFT_AUTHORITIES = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
)


class _Identity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManagedIdentity(_Identity):
    """The Azure resource's managed identity: system-assigned, or user-assigned by ``client_id``."""

    type: Literal["managed_identity"]
    client_id: str | None = Field(default=None, min_length=1)


class WorkloadIdentity(_Identity):
    """Kubernetes workload identity: a federated token file exchanged at Entra ID."""

    type: Literal["workload_identity"]
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    token_file: Path


class ClientSecretIdentity(_Identity):
    """An app registration whose client secret comes from another secret source."""

    type: Literal["client_secret"]
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    secret: SecretSpec


AzureCredentialSpec = Annotated[
    ManagedIdentity | WorkloadIdentity | ClientSecretIdentity, Field(discriminator="type")
]


class AzureKeyVaultSecret(CachedSecret):
    """A secret in Azure Key Vault (``azure-keyvault-secrets``), latest or a pinned version."""

    source: Literal["azure_key_vault"]
    vault_url: str
    name: str = Field(pattern=r"^[0-9A-Za-z-]{1,127}$")
    version: str | None = Field(default=None, min_length=1)
    credential: AzureCredentialSpec
    # Entra ID host for the workload and client-secret identities (sovereign clouds, tests).
    authority_host: str | None = None
    ca_bundle: Path | None = None
    timeout: float = Field(default=10.0, gt=0)
    # azure-core retries connection errors and 5xx with exponential back-off (0.8 s factor).
    retries: int = Field(default=3, ge=0)
    # The vault checks that its 401 challenge names a resource in the vault's own domain; a local
    # stand-in vault (tests, the emulator) answers for vault.azure.net from 127.0.0.1.
    verify_challenge_resource: bool = True

    @field_validator("vault_url")
    @classmethod
    def _https(cls, value: str) -> str:
        check_url(value, what="vault_url")
        if urlsplit(value).scheme != "https":
            raise ValueError("vault_url must be an https URL (Key Vault requires TLS)")
        return value.rstrip("/")

    @field_validator("authority_host")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, what="authority_host").rstrip("/")

    def describe(self) -> str:
        version = f"/{self.version}" if self.version else ""
        return f"azure_key_vault:{self.vault_url}/secrets/{self.name}{version}"

    def _transport_options(self) -> dict[str, Any]:
        # A CA path passed per request survives REQUESTS_CA_BUNDLE (requests only lets the
        # environment win when verify is True or None): ca_bundle, else the system store's
        # path, the listener's one trust rule (listener._tls).
        return {
            "connection_timeout": self.timeout,
            "read_timeout": self.timeout,
            "retry_total": self.retries,
            "connection_verify": requests_verify(self.ca_bundle),
        }

    def _azure_credential(self) -> TokenCredential:
        # Imported on use: the Azure SDK takes a while to import and most setups never need it.
        from azure.identity import (  # noqa: PLC0415 - lazy, see above
            ClientSecretCredential,
            ManagedIdentityCredential,
            WorkloadIdentityCredential,
        )

        options = self._transport_options()
        identity = self.credential
        if isinstance(identity, ManagedIdentity):
            return ManagedIdentityCredential(client_id=identity.client_id, **options)
        if self.authority_host is not None:
            options["authority"] = self.authority_host
            host = urlsplit(self.authority_host).hostname or ""
            options["disable_instance_discovery"] = host not in _MICROSOFT_AUTHORITIES
        if isinstance(identity, WorkloadIdentity):
            return WorkloadIdentityCredential(
                tenant_id=identity.tenant_id,
                client_id=identity.client_id,
                token_file_path=str(identity.token_file),
                **options,
            )
        return ClientSecretCredential(
            identity.tenant_id,
            identity.client_id,
            identity.secret.read().get_secret_value(),
            **options,
        )

    def _fetch(self) -> str:
        from azure.core.exceptions import (  # noqa: PLC0415 - lazy, as in _azure_credential
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.keyvault.secrets import SecretClient  # noqa: PLC0415 - lazy, ditto

        where = self.describe()
        try:
            credential = self._azure_credential()
        except SecretError as exc:
            raise SecretError(f"{where}: the Key Vault identity's own secret: {exc}") from None
        client = SecretClient(
            self.vault_url,
            credential,
            verify_challenge_resource=self.verify_challenge_resource,
            **self._transport_options(),
        )
        try:
            secret = client.get_secret(self.name, self.version)
        except ResourceNotFoundError:
            raise SecretError(
                f"{where}: not found (HTTP 404): check the secret name"
                + (" and version" if self.version else "")
                + " and that the vault URL is right"
            ) from None
        except ClientAuthenticationError as exc:
            status = getattr(exc, "status_code", None)
            if status == 403:
                raise SecretError(
                    f"{where}: access denied (HTTP 403): give the identity the 'Key Vault Secrets "
                    "User' role (RBAC) or a 'get' secret access policy on this vault"
                ) from None
            raise SecretError(
                f"{where}: could not authenticate to Key Vault: {_first_line(exc)}"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise SecretError(
                    f"{where}: access denied (HTTP 403): give the identity the 'Key Vault Secrets "
                    "User' role (RBAC) or a 'get' secret access policy on this vault"
                ) from None
            raise SecretError(
                f"{where}: Key Vault answered HTTP {exc.status_code}: {_first_line(exc)}"
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise SecretError(
                    f"{where}: TLS verification failed: set 'ca_bundle' to the CA that signed the "
                    "vault's certificate"
                ) from None
            raise SecretError(f"{where}: cannot reach Key Vault: {_first_line(exc)}") from None
        finally:
            client.close()
            close = getattr(credential, "close", None)
            if callable(close):
                close()
        if secret.value is None:
            raise SecretError(f"{where}: the secret has no value")
        return secret.value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
