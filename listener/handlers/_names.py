"""Safe file names from attachment names, which are chosen by whoever sent the mail.

A name such as ``../../.ssh/authorized_keys``, ``/etc/passwd``, ``a\\x00b`` or
``invoice\\u202etxt.exe`` (a right-to-left override that displays as ``invoiceexe.txt``) must
become one harmless file name inside the target directory, whatever the operating system.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["MAX_NAME_BYTES", "safe_filename", "unique_filenames"]

# Most file systems limit a name to 255 bytes; leave room for " (NNN)" and a temp-file suffix.
MAX_NAME_BYTES = 200
_MAX_SUFFIX_CHARS = 16

# Characters Windows (and SMB shares) refuse in names; the files may be read from there.
_RESERVED_CHARS = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
# Unicode categories never allowed: controls (incl. NUL), format characters (bidi overrides and
# isolates, zero-width joiners, BOM), line/paragraph separators, surrogates and unassigned.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def _truncate(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def _fit(name: str, max_bytes: int) -> str:
    """Shorten ``name`` to ``max_bytes`` UTF-8 bytes, keeping a short extension."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= _MAX_SUFFIX_CHARS:
        suffix = "." + ext
        return _truncate(stem, max_bytes - len(suffix.encode("utf-8"))).rstrip(" .") + suffix
    return _truncate(name, max_bytes).rstrip(" .")


def safe_filename(
    name: str | None, *, fallback: str = "attachment", max_bytes: int = MAX_NAME_BYTES
) -> str:
    """One harmless file name for ``name``: no separators, no ``..``, no controls, bounded length.

    Directory parts are dropped (the last component is what the sender meant as the name),
    forbidden characters are removed or replaced by ``_``, leading dots are stripped (no hidden
    files, no ``..``), and an empty result becomes ``fallback``.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = "".join(c for c in text if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    text = re.split(r"[/\\]", text)[-1]
    text = _RESERVED_CHARS.sub("_", text)
    text = text.strip().lstrip(".").rstrip(" .")
    if not text:
        text = fallback
    if text.split(".", 1)[0].strip().lower() in _WINDOWS_DEVICES:
        text = "_" + text
    return _fit(text, max_bytes)


def unique_filenames(names: Iterable[str | None], *, max_bytes: int = MAX_NAME_BYTES) -> list[str]:
    """``safe_filename`` of each name, de-duplicated case-insensitively as ``name (2).ext``.

    Case-insensitive because the directory may live on a file system that folds case (macOS,
    Windows shares), where ``A.pdf`` and ``a.pdf`` are the same file.
    """
    taken: set[str] = set()
    out: list[str] = []
    for raw in names:
        name = safe_filename(raw, max_bytes=max_bytes)
        candidate, n = name, 1
        while candidate.casefold() in taken:
            n += 1
            stem, dot, ext = name.rpartition(".")
            if not dot or not stem or len(ext) > _MAX_SUFFIX_CHARS:
                stem, ext = name, ""
            tag = f" ({n})"
            suffix = f"{tag}.{ext}" if ext else tag
            candidate = _truncate(stem, max_bytes - len(suffix.encode("utf-8"))) + suffix
        taken.add(candidate.casefold())
        out.append(candidate)
    return out
