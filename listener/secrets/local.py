"""Secrets that live on this machine: in the configuration, an environment variable or a file.

Docker and Kubernetes secrets are plain files (``/run/secrets/NAME``); systemd's
``LoadCredential=NAME:…`` puts the file under ``$CREDENTIALS_DIRECTORY``, which ``credential``
names so the unit file and the configuration do not need to agree on a path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from listener.errors import SecretError
from listener.secrets._base import CachedSecret

__all__ = ["EnvSecret", "FileSecret", "InlineSecret", "environment_reads"]

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_CREDENTIAL_NAME = r"^[A-Za-z0-9_.@:-]+$"


class InlineSecret(CachedSecret):
    """The value itself, in the file or (better) an ``EWS_LISTENER_…__VALUE`` variable."""

    source: Literal["inline"]
    value: SecretStr

    @field_validator("value")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    def describe(self) -> str:
        return "inline:**********"

    def _fetch(self) -> str:
        return self.value.get_secret_value()


class EnvSecret(CachedSecret):
    """An environment variable, read when the secret is first needed."""

    source: Literal["env"]
    name: str = Field(pattern=_ENV_NAME)

    def describe(self) -> str:
        return f"env:{self.name}"

    def _fetch(self) -> str:
        value = os.environ.get(self.name)
        if value is None:
            raise SecretError(f"{self.describe()}: the environment variable {self.name} is not set")
        if not value.strip():
            raise SecretError(f"{self.describe()}: the environment variable {self.name} is empty")
        return value


class FileSecret(CachedSecret):
    """A file holding the secret; one trailing newline is stripped (``echo`` adds one)."""

    source: Literal["file"]
    path: Path | None = None
    credential: str | None = Field(default=None, pattern=_CREDENTIAL_NAME)

    @model_validator(mode="after")
    def _exactly_one(self) -> FileSecret:
        if (self.path is None) == (self.credential is None):
            raise ValueError(
                "give exactly one of 'path' (a file) or 'credential' (a systemd credential "
                "name, read from $CREDENTIALS_DIRECTORY/NAME)"
            )
        return self

    def describe(self) -> str:
        if self.credential is not None:
            return f"credential:{self.credential}"
        return f"file:{self.path}"

    def resolved_path(self) -> Path:
        """The file to read; for ``credential`` under systemd's ``$CREDENTIALS_DIRECTORY``."""
        if self.path is not None:
            return self.path
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"{self.describe()}: $CREDENTIALS_DIRECTORY is not set; systemd sets it when the "
                f"unit has LoadCredential={self.credential}:/path/to/file (or use 'path')"
            )
        return Path(directory) / str(self.credential)

    def _fetch(self) -> str:
        path = self.resolved_path()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SecretError(f"{self.describe()}: the file {path} does not exist") from None
        except IsADirectoryError:
            raise SecretError(f"{self.describe()}: {path} is a directory, not a file") from None
        except PermissionError:
            raise SecretError(
                f"{self.describe()}: permission denied reading {path} (the service user must be "
                "able to read it)"
            ) from None
        except OSError as exc:
            raise SecretError(f"{self.describe()}: cannot read {path}: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"{self.describe()}: {path} is not UTF-8 text") from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        if not text.strip():
            raise SecretError(f"{self.describe()}: the file {path} is empty")
        return text


def environment_reads(
    value: Any, where: tuple[str, ...] = ()
) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(variable, location) for every environment variable a secret source in ``value`` reads.

    ``value`` is a configuration table, raw (as parsed from TOML) or validated: an ``env`` source
    reads its ``name``, a ``file`` source with ``credential`` reads ``CREDENTIALS_DIRECTORY``.
    Nested sources (a Key Vault identity's secret, a Vault token) are found too. The command
    handler refuses to pass any of them to a program.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        if value.get("source") == "env" and isinstance(value.get("name"), str):
            yield value["name"], where
        elif value.get("source") == "file" and isinstance(value.get("credential"), str):
            yield "CREDENTIALS_DIRECTORY", where
        for key, item in value.items():
            yield from environment_reads(item, (*where, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from environment_reads(item, (*where, str(index)))
