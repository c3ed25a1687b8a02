"""``SecretSpec``: the configuration value of any secret, a union discriminated on ``source``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from listener.secrets.azure import AzureKeyVaultSecret, ClientSecretIdentity
from listener.secrets.local import EnvSecret, FileSecret, InlineSecret
from listener.secrets.vault import HashicorpVaultSecret, VaultAppRoleAuth, VaultTokenAuth

__all__ = ["SecretSpec"]

SecretSpec = Annotated[
    InlineSecret | EnvSecret | FileSecret | AzureKeyVaultSecret | HashicorpVaultSecret,
    Field(discriminator="source"),
]
"""One secret's source; every member implements ``listener.abc.SecretSource`` and ``refresh()``."""

# The identities of Key Vault and Vault hold secrets themselves: resolve the forward references.
for _model in (
    ClientSecretIdentity,
    AzureKeyVaultSecret,
    VaultTokenAuth,
    VaultAppRoleAuth,
    HashicorpVaultSecret,
):
    _model.model_rebuild(_types_namespace={"SecretSpec": SecretSpec})
