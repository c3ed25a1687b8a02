"""The directory handler against a real file system, with hostile attachment names."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from listener.handlers import DirectoryHandler
from listener.model import Message
from tests.handlers.conftest import FakeLoader, MakeMessage

HOSTILE = [
    ("../x", b"1"),
    ("/etc/passwd", b"2"),
    ("a\x00b", b"3"),
    ("invoice\u202etxt.exe", b"4"),
    ("L" * 600 + ".pdf", b"5"),
    ("dup.txt", b"6"),
    ("DUP.txt", b"7"),
    ("dup.txt", b"8"),
    ("..", b"9"),
    ("sub/../../../../tmp/evil", b"10"),
]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_writes_eml_and_json(tmp_path: Path, make_message: MakeMessage, loader: FakeLoader) -> None:
    """One .eml with the MIME and one .json with the event, readable, no temp files left."""
    out = tmp_path / "out"
    message = make_message()
    DirectoryHandler("dir", out)(message)
    key = message.idempotency_key
    assert tree(out) == {f"{key}.eml", f"{key}.json"}
    assert (out / f"{key}.eml").read_bytes() == loader.mime
    assert Message.model_validate_json((out / f"{key}.json").read_text()) == message
    assert (out / f"{key}.json").stat().st_mode & 0o777 == 0o644


def test_same_message_twice_is_written_once(
    tmp_path: Path, make_message: MakeMessage, loader: FakeLoader
) -> None:
    """A message whose .json exists is skipped: the MIME is not even fetched again."""
    handler = DirectoryHandler("dir", tmp_path)
    handler(make_message())
    handler(make_message())
    assert loader.mime_calls == 1


def test_hostile_attachment_names_stay_inside(tmp_path: Path, make_message: MakeMessage) -> None:
    """Traversal, absolute, NUL, RTL-override, long and duplicate names land safely inside."""
    out = tmp_path / "out"
    out.mkdir()
    message = make_message(attachments=HOSTILE)
    DirectoryHandler("dir", out, attachments=True)(message)
    key = message.idempotency_key
    folder = out / f"{key}.attachments"
    names = sorted(os.listdir(folder))
    assert len(names) == len(HOSTILE)
    for name in names:
        assert "/" not in name
        assert "\x00" not in name
        assert "\u202e" not in name
        assert not name.startswith(".")
        assert len(name.encode()) <= 255
    assert {"x", "passwd", "ab", "invoicetxt.exe", "dup.txt", "DUP (2).txt", "dup (3).txt"} <= set(
        names
    )
    contents = sorted((folder / n).read_bytes() for n in names)
    assert contents == sorted(c for _, c in HOSTILE)
    # Nothing was written anywhere but the output directory.
    assert tree(tmp_path) == {"out", *(f"out/{p}" for p in tree(out))}
    assert not Path("/tmp/evil").exists()


def test_attachments_off_writes_no_folder(tmp_path: Path, make_message: MakeMessage) -> None:
    """With ``attachments = false`` only the .eml and .json are written."""
    message = make_message(attachments=[("a.txt", b"a")])
    DirectoryHandler("dir", tmp_path)(message)
    assert not (tmp_path / f"{message.idempotency_key}.attachments").exists()


def test_failure_midway_leaves_nothing(
    tmp_path: Path, make_message: MakeMessage, loader: FakeLoader
) -> None:
    """When an attachment cannot be loaded, the .eml already written is removed again."""
    message = make_message(attachments=[("a.txt", b"a"), ("b.txt", b"b")])
    del loader.contents["A1"]
    with pytest.raises(KeyError):
        DirectoryHandler("dir", tmp_path, attachments=True)(message)
    assert tree(tmp_path) == set()


def test_leftover_attachments_folder_is_replaced(tmp_path: Path, make_message: MakeMessage) -> None:
    """A folder left by an attempt that crashed before its .json is replaced, not merged."""
    message = make_message(attachments=[("new.txt", b"n")])
    stale = tmp_path / f"{message.idempotency_key}.attachments"
    stale.mkdir()
    (stale / "old.txt").write_text("old")
    DirectoryHandler("dir", tmp_path, attachments=True)(message)
    assert os.listdir(stale) == ["new.txt"]


def test_hostile_idempotency_key_is_not_a_path(tmp_path: Path, make_message: MakeMessage) -> None:
    """A key that is not a plain token (read from JSON) is replaced by its sha256 digest."""
    out = tmp_path / "out"
    message = make_message(idempotency_key="../../evil")
    DirectoryHandler("dir", out)(message)
    expected = hashlib.sha256(b"../../evil").hexdigest()
    assert tree(out) == {f"{expected}.eml", f"{expected}.json"}
    assert tree(tmp_path) == {"out", f"out/{expected}.eml", f"out/{expected}.json"}


def test_symlink_pointing_outside_is_refused(tmp_path: Path, make_message: MakeMessage) -> None:
    """A symlink planted at the target name is never followed out of the directory."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    message = make_message()
    (out / f"{message.idempotency_key}.eml").symlink_to(outside / "stolen.eml")
    with pytest.raises(RuntimeError, match="outside"):
        DirectoryHandler("dir", out)(message)
    assert tree(outside) == set()


_FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    root = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], check=True)
    sys.path.insert(0, sys.argv[2])
    from listener.handlers import DirectoryHandler, HandlerTransientError
    from listener.model import Attachment, Message

    class Loader:
        def load_mime(self, message):
            return b"Subject: x\\r\\n\\r\\nsmall\\r\\n"
        def load_attachment(self, message, attachment):
            return b"z" * 400_000

    message = Message(
        mailbox="m@example.com", folder="inbox", item_id="I1",
        attachments=(Attachment(attachment_id="A", name="big.bin", size=400_000),),
    ).bind(Loader())
    try:
        DirectoryHandler("dir", root, attachments=True)(message)
        outcome = "no error"
    except HandlerTransientError as e:
        outcome = str(e)
    print(json.dumps({"outcome": outcome, "left": sorted(os.listdir(root))}))
    """
)


def test_full_disk_is_transient_and_leaves_no_partial_files(tmp_path: Path) -> None:
    """On a real 64 KiB tmpfs, ENOSPC is a transient error and removes every partial file."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed: cannot mount a private tmpfs")
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no user+mount namespaces here: {probe.stderr.decode().strip()}")
    root = tmp_path / "full"
    root.mkdir()
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            "-c",
            _FULL_DISK_SCRIPT,
            str(root),
            repo,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "no space left" in result["outcome"]
    assert "partial files were removed" in result["outcome"]
    assert result["left"] == []
