"""Inline, environment and file secret sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from listener.abc import SecretSource
from listener.errors import SecretError
from listener.secrets import EnvSecret, FileSecret, InlineSecret, SecretSpec

SPEC: TypeAdapter[SecretSpec] = TypeAdapter(SecretSpec)
SPECIAL = ["a+b%2Fc:d=", "jhyun/ku[ojubbj]/jhgfdrg^7*dfg&jkiu#bjshdm,ktttdg"]


def test_every_source_is_a_secret_source() -> None:
    """Each model satisfies the SecretSource protocol."""
    spec = SPEC.validate_python({"source": "inline", "value": "x"})
    assert isinstance(spec, SecretSource)


@pytest.mark.parametrize("value", SPECIAL)
def test_inline_reads_value_and_masks_repr(value: str) -> None:
    """An inline secret returns its value and never shows it in repr or str."""
    spec = SPEC.validate_python({"source": "inline", "value": value})
    assert spec.read().get_secret_value() == value
    assert value not in repr(spec)
    assert value not in str(spec)
    assert value not in spec.describe()


def test_inline_empty_is_rejected() -> None:
    """An empty inline value is a validation error."""
    with pytest.raises(ValidationError, match="must not be empty"):
        SPEC.validate_python({"source": "inline", "value": "  "})


def test_unknown_source_is_rejected() -> None:
    """An unknown 'source' names the accepted ones."""
    with pytest.raises(ValidationError, match="hashicorp_vault"):
        SPEC.validate_python({"source": "keychain"})


def test_env_reads_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env secret is read at read() time, not at validation."""
    monkeypatch.delenv("T_SECRET_X", raising=False)
    spec = SPEC.validate_python({"source": "env", "name": "T_SECRET_X"})
    assert isinstance(spec, EnvSecret)
    monkeypatch.setenv("T_SECRET_X", SPECIAL[1])
    assert spec.read().get_secret_value() == SPECIAL[1]


def test_env_missing_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing variable raises SecretError naming it."""
    monkeypatch.delenv("T_SECRET_MISSING", raising=False)
    spec = EnvSecret(source="env", name="T_SECRET_MISSING")
    with pytest.raises(SecretError, match="T_SECRET_MISSING is not set"):
        spec.read()


def test_env_empty_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty variable raises SecretError."""
    monkeypatch.setenv("T_SECRET_EMPTY", "")
    with pytest.raises(SecretError, match="is empty"):
        EnvSecret(source="env", name="T_SECRET_EMPTY").read()


def test_env_cached_until_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The value is cached after the first read; refresh() re-reads (rotation)."""
    monkeypatch.setenv("T_SECRET_ROT", "one")
    spec = EnvSecret(source="env", name="T_SECRET_ROT")
    assert spec.read().get_secret_value() == "one"
    monkeypatch.setenv("T_SECRET_ROT", "two")
    assert spec.read().get_secret_value() == "one"
    assert spec.refresh().get_secret_value() == "two"


@pytest.mark.parametrize(
    ("content", "expected"),
    [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), ("s3cret\n\n", "s3cret\n"), ("x", "x")],
)
def test_file_strips_one_trailing_newline(tmp_path: Path, content: str, expected: str) -> None:
    """Exactly one trailing newline is stripped from a file secret."""
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert FileSecret(source="file", path=path).read().get_secret_value() == expected


def test_file_missing(tmp_path: Path) -> None:
    """A missing file names the path."""
    with pytest.raises(SecretError, match="does not exist"):
        FileSecret(source="file", path=tmp_path / "nope").read()


def test_file_empty(tmp_path: Path) -> None:
    """An empty file (or one holding only a newline) is an error."""
    path = tmp_path / "empty"
    path.write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        FileSecret(source="file", path=path).read()


def test_file_unreadable(tmp_path: Path) -> None:
    """A file the process cannot read says permission denied (as ``nobody`` when run as root)."""
    path = tmp_path / "locked"
    path.write_text("x")
    path.chmod(0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: root reads any file, so drop to nobody first; never returns
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                FileSecret(source="file", path=path).read()
                message = "read"
            except SecretError as error:
                message = str(error)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "permission denied" in message, message


def test_file_directory(tmp_path: Path) -> None:
    """A directory where a file is expected is an error."""
    with pytest.raises(SecretError, match="is a directory"):
        FileSecret(source="file", path=tmp_path).read()


def test_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credential = NAME reads $CREDENTIALS_DIRECTORY/NAME."""
    (tmp_path / "sales-secret").write_text(SPECIAL[0] + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    spec = SPEC.validate_python({"source": "file", "credential": "sales-secret"})
    assert spec.read().get_secret_value() == SPECIAL[0]
    assert spec.describe() == "credential:sales-secret"


def test_systemd_credential_without_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $CREDENTIALS_DIRECTORY the error explains LoadCredential=."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretError, match="LoadCredential=x"):
        FileSecret(source="file", credential="x").read()


def test_file_needs_exactly_one_of_path_or_credential(tmp_path: Path) -> None:
    """Both or neither of path/credential is a validation error."""
    with pytest.raises(ValidationError, match="exactly one"):
        SPEC.validate_python({"source": "file"})
    with pytest.raises(ValidationError, match="exactly one"):
        SPEC.validate_python({"source": "file", "path": str(tmp_path), "credential": "x"})


def test_inline_describe_is_masked() -> None:
    """describe() never holds an inline value."""
    spec = InlineSecret(source="inline", value="hunter2")  # type: ignore[arg-type]
    assert "hunter2" not in spec.describe()
    assert "hunter2" not in spec.model_dump_json()


def test_file_unreadable_path(tmp_path: Path) -> None:
    """A path that cannot be opened (a file used as a directory) says it cannot be read."""
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SecretError, match="cannot read"):
        FileSecret(source="file", path=tmp_path / "plain" / "child").read()
