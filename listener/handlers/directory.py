"""The ``directory`` handler: ``<key>.eml`` and ``<key>.json`` in a folder another program watches.

Every file is written to a temporary name in the same directory, fsync'ed, then renamed with
``os.replace`` (atomic on POSIX within one file system), and the directory itself is fsync'ed so
the rename survives a power cut. The JSON is written last: a watcher that sees ``<key>.json``
knows the ``.eml`` (and ``<key>.attachments/``) are complete. A message whose ``.json`` already
exists was handed over before (same idempotency key) and is not written again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from listener.handlers._names import unique_filenames
from listener.handlers.config import DirectoryHandlerConfig
from listener.handlers.errors import HandlerTransientError
from listener.model import Message

__all__ = ["DirectoryHandler"]

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # no /proc (macOS): the brief swap is the only portable way
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryHandler:
    """Writes each message into ``path``; never writes outside it."""

    def __init__(self, name: str, path: Path | str, *, attachments: bool = False) -> None:
        self.name = name
        self.path = Path(path)
        self.attachments = attachments

    @classmethod
    def from_config(cls, name: str, config: DirectoryHandlerConfig) -> DirectoryHandler:
        """A directory handler as configured (the directory is created on first use)."""
        return cls(name, config.path, attachments=config.attachments)

    # --- paths --------------------------------------------------------------------------------

    def _inside(self, base: Path, candidate: Path) -> Path:
        """``candidate`` resolved, or an error when it would land outside ``base``."""
        resolved = candidate.resolve()
        if not resolved.is_relative_to(base):
            # Names are sanitised first; reaching this means a symlink or a bug, never retry.
            raise RuntimeError(f"refusing to write {candidate} outside {base}")
        return resolved

    @staticmethod
    def _stem(message: Message) -> str:
        # The key is a sha256 hex digest for every Message built by a source, but a Message read
        # from JSON may carry anything: never let it become a path.
        key = message.idempotency_key
        if _SAFE_KEY.match(key) and ".." not in key:
            return key
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    # --- writing ------------------------------------------------------------------------------

    def __call__(self, message: Message) -> None:
        """Write the message; a full disk is transient and leaves no partial files behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        base = self.path.resolve()
        stem = self._stem(message)
        final_json = self._inside(base, base / f"{stem}.json")
        if final_json.exists():
            return
        created: list[Path] = []  # final paths this call put in place, removed again on failure
        temporaries: list[Path] = []
        try:
            eml = self._inside(base, base / f"{stem}.eml")
            with message.open_mime() as mime:  # streamed: a large message is never whole in memory
                self._write_file(base, eml, mime, created, temporaries)
            if self.attachments and message.attachments:
                self._write_attachments(base, stem, message, created, temporaries)
            body = message.to_json().encode("utf-8")
            self._write_file(base, final_json, body, created, temporaries)
            _fsync_dir(base)
        except BaseException as e:
            for path in [*temporaries, *reversed(created)]:
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in _DISK_FULL:
                raise HandlerTransientError(
                    f"{self.name}: no space left in {base} ({os.strerror(e.errno)}) writing "
                    f"message {stem}; partial files were removed"
                ) from e
            raise

    def _write_file(
        self,
        base: Path,
        target: Path,
        data: bytes | IO[bytes],
        created: list[Path],
        temporaries: list[Path],
    ) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        tmp = Path(tmp_name)
        temporaries.append(tmp)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                shutil.copyfileobj(data, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp's 0600 would hide the file from the watching program; what open() would have
        # made honours the umask (UMask=0077 in the systemd unit keeps everything private).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, self._inside(base, target))
        temporaries.remove(tmp)
        created.append(target)

    def _write_attachments(
        self,
        base: Path,
        stem: str,
        message: Message,
        created: list[Path],
        temporaries: list[Path],
    ) -> None:
        # Built under a temporary name and renamed whole, so the folder is complete or absent.
        staging = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-", suffix=".attachments"))
        temporaries.append(staging)
        names = unique_filenames(a.name for a in message.attachments)
        for attachment, name in zip(message.attachments, names, strict=True):
            target = self._inside(staging.resolve(), staging / name)
            # "x": never follow or overwrite anything there; the content is copied in pieces.
            with open(target, "xb") as f, attachment.open() as content:
                shutil.copyfileobj(content, f)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(staging)
        # mkdtemp's 0700 would hide the folder from the watching program: what mkdir() would
        # have made instead, honouring the umask like the files.
        os.chmod(staging, 0o777 & ~_umask())
        final = self._inside(base, base / f"{stem}.attachments")
        if final.is_symlink() or final.is_file():
            final.unlink()
        elif final.is_dir():
            shutil.rmtree(final)  # left by an attempt that crashed before its .json
        os.replace(staging, final)
        temporaries.remove(staging)
        created.append(final)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"DirectoryHandler(name={self.name!r}, path={str(self.path)!r})"
