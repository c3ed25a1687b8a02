"""Secret sources: inline, environment, file (systemd credentials, Docker/Kubernetes secrets),
Azure Key Vault and HashiCorp Vault.

Each model implements ``listener.abc.SecretSource``: ``read()`` fetches the value when it is first
needed (never at import or load), caches it and registers it for log redaction; ``refresh()``
re-reads it (the token providers call it once after ``invalid_client``, for rotation);
``describe()`` says where it lives without the value.
"""

from __future__ import annotations

from listener.secrets.azure import (
    AzureCredentialSpec,
    AzureKeyVaultSecret,
    ClientSecretIdentity,
    ManagedIdentity,
    WorkloadIdentity,
)
from listener.secrets.local import EnvSecret, FileSecret, InlineSecret, environment_reads
from listener.secrets.spec import SecretSpec
from listener.secrets.vault import (
    HashicorpVaultSecret,
    VaultAppRoleAuth,
    VaultAuthSpec,
    VaultTokenAuth,
)

__all__ = [
    "AzureCredentialSpec",
    "AzureKeyVaultSecret",
    "ClientSecretIdentity",
    "EnvSecret",
    "FileSecret",
    "HashicorpVaultSecret",
    "InlineSecret",
    "ManagedIdentity",
    "SecretSpec",
    "VaultAppRoleAuth",
    "VaultAuthSpec",
    "VaultTokenAuth",
    "WorkloadIdentity",
    "environment_reads",
]
