"""HashiCorp Vault KV version 2 secrets (``hvac``), with a token or AppRole login."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from listener._tls import requests_verify
from listener.errors import SecretError
from listener.secrets._base import CachedSecret, check_url

if TYPE_CHECKING:
    from listener.secrets.spec import SecretSpec

__all__ = ["HashicorpVaultSecret", "VaultAppRoleAuth", "VaultAuthSpec", "VaultTokenAuth"]


class VaultTokenAuth(BaseModel):
    """A Vault token from another secret source (``env`` ``VAULT_TOKEN``, a file, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["token"]
    token: SecretSpec


class VaultAppRoleAuth(BaseModel):
    """AppRole login: ``role_id`` plus a ``secret_id`` from another secret source."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["approle"]
    role_id: str = Field(min_length=1)
    secret_id: SecretSpec
    mount: str = Field(default="approle", min_length=1)


VaultAuthSpec = Annotated[VaultTokenAuth | VaultAppRoleAuth, Field(discriminator="method")]


class HashicorpVaultSecret(CachedSecret):
    """One key of a KV v2 secret: ``GET /v1/{mount}/data/{path}`` → ``data.data[key]``."""

    source: Literal["hashicorp_vault"]
    address: str
    mount: str = Field(default="secret", min_length=1)
    path: str = Field(min_length=1)
    key: str = Field(min_length=1)
    auth: VaultAuthSpec
    namespace: str | None = Field(default=None, min_length=1)
    ca_bundle: Path | None = None
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("address")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, what="address").rstrip("/")

    @field_validator("mount", "path")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")

    def describe(self) -> str:
        return f"hashicorp_vault:{self.address}/v1/{self.mount}/data/{self.path}#{self.key}"

    def _client(self) -> Any:
        # Imported on use: hvac pulls in requests and most setups never need it.
        import hvac  # noqa: PLC0415 - lazy, see above
        import hvac.exceptions  # noqa: PLC0415 - ditto

        # hvac passes ``verify`` on every request; a path there wins over REQUESTS_CA_BUNDLE,
        # which would otherwise replace a session-level ``verify`` (requests' merge rules). The
        # listener's one trust rule: ca_bundle, else the system store (listener._tls).
        verify = requests_verify(self.ca_bundle)
        client = hvac.Client(
            url=self.address, verify=verify, timeout=self.timeout, namespace=self.namespace
        )
        auth = self.auth
        if isinstance(auth, VaultTokenAuth):
            client.token = auth.token.read().get_secret_value()
        else:
            try:
                client.auth.approle.login(
                    role_id=auth.role_id,
                    secret_id=auth.secret_id.read().get_secret_value(),
                    mount_point=auth.mount,
                )
            except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
                raise SecretError(
                    f"{self.describe()}: the AppRole login was refused: check role_id, secret_id "
                    f"and the auth mount {auth.mount!r}"
                ) from None
        return client

    def _fetch(self) -> str:
        import hvac.exceptions  # noqa: PLC0415 - lazy, as in _client
        import requests  # noqa: PLC0415 - lazy, ditto

        where = self.describe()
        try:
            client = self._client()
            response = client.secrets.kv.v2.read_secret_version(
                path=self.path, mount_point=self.mount, raise_on_deleted_version=True
            )
        except SecretError as exc:
            if str(exc).startswith(where):
                raise
            raise SecretError(f"{where}: the Vault login secret: {exc}") from None
        except hvac.exceptions.Forbidden:
            raise SecretError(
                f"{where}: permission denied (HTTP 403): the token or AppRole is invalid or its "
                f"policy lacks 'read' on {self.mount}/data/{self.path}"
            ) from None
        except hvac.exceptions.InvalidPath:
            raise SecretError(
                f"{where}: not found (HTTP 404): check 'mount' (KV version 2) and 'path'"
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise SecretError(f"{where}: Vault refused: {type(exc).__name__}") from None
        except requests.exceptions.SSLError:
            raise SecretError(
                f"{where}: TLS verification failed: set 'ca_bundle' to the CA that signed Vault's "
                "certificate"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise SecretError(f"{where}: cannot reach Vault: {type(exc).__name__}") from None
        data = (response or {}).get("data", {}).get("data") or {}
        if self.key not in data:
            keys = ", ".join(sorted(map(str, data))) or "none"
            raise SecretError(f"{where}: the secret has no key {self.key!r} (keys: {keys})")
        value = data[self.key]
        if not isinstance(value, str):
            raise SecretError(f"{where}: the value under {self.key!r} is not a string")
        return value
