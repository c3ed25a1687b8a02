"""The directory handler gives files and folders the modes the umask asks for (issue 11)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.handlers import DirectoryHandler
from tests.handlers.conftest import MakeMessage


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after the test changed it."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


def _modes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o077, 0o600, 0o700), (0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
)
def test_directory_handler_respects_the_umask(
    tmp_path: Path, make_message: MakeMessage, umask: None, mask: int, file_mode: int, dir_mode: int
) -> None:
    """Under systemd's UMask=0077 nothing is readable by others; 022 keeps the classic modes."""
    out = tmp_path / "out"
    out.mkdir()
    os.umask(mask)
    message = make_message(attachments=[("a.pdf", b"%PDF-1"), ("b.txt", b"hello")])
    DirectoryHandler("dir", out, attachments=True)(message)
    modes = _modes(out)
    key = message.idempotency_key
    assert modes[f"{key}.eml"] == file_mode
    assert modes[f"{key}.json"] == file_mode
    assert modes[f"{key}.attachments"] == dir_mode
    assert modes[f"{key}.attachments/a.pdf"] == file_mode
    assert modes[f"{key}.attachments/b.txt"] == file_mode
