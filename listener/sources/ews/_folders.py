"""Folder resolution by distinguished name or path, once per folder, cached.

``account.inbox / "Orders"`` makes exchangelib load the whole folder tree; on a large mailbox that
is hundreds of requests. We walk the path one level at a time with a shallow ``FindFolder`` and
cache what we found (DESIGN.md, "exchangelib facts").
"""

from __future__ import annotations

import threading
from typing import Any

from exchangelib import errors as ews_errors
from exchangelib.folders import Folder, FolderCollection, known_folders
from exchangelib.folders.base import BaseFolder

__all__ = ["DISTINGUISHED", "FolderResolver"]

# Distinguished folder names (lower case) → exchangelib folder class.
DISTINGUISHED: dict[str, type[Any]] = {
    cls.DISTINGUISHED_FOLDER_ID: cls  # type: ignore[attr-defined]
    for cls in vars(known_folders).values()
    if isinstance(cls, type)
    and issubclass(cls, BaseFolder)
    and isinstance(getattr(cls, "DISTINGUISHED_FOLDER_ID", None), str)
}
# What people type for the well-known ones.
_ALIASES = {
    "deleted items": "deleteditems",
    "sent items": "sentitems",
    "junk email": "junkemail",
    "junk e-mail": "junkemail",
    "top of information store": "msgfolderroot",
    "root": "msgfolderroot",
}


def _split(path: str) -> list[str]:
    return [p.strip() for p in path.strip().strip("/").split("/") if p.strip()]


class FolderResolver:
    """Finds (and, when asked, creates) folders of one account by path."""

    def __init__(self, account: Any) -> None:
        self._account = account
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _distinguished(self, name: str) -> Any | None:
        key = _ALIASES.get(name.lower(), name.lower())
        cls = DISTINGUISHED.get(key)
        if cls is None:
            return None
        return cls.get_distinguished(root=self._account.root)

    def _child(self, parent: Any, name: str) -> Any | None:
        children = FolderCollection(account=self._account, folders=[parent]).find_folders(
            depth="Shallow"
        )
        for child in children:
            if isinstance(child, Exception):
                raise child
            if (child.name or "").casefold() == name.casefold():
                return child
        return None

    def resolve(self, path: str, *, create: bool = False) -> Any:
        """The folder at ``path``: ``inbox``, ``Inbox/Orders``, ``Archive/2026`` (under the root).

        Raises ``ErrorFolderNotFound`` naming the missing part unless ``create`` is true.
        """
        key = "/".join(p.casefold() for p in _split(path))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        parts = _split(path) or ["inbox"]
        folder = self._distinguished(parts[0])
        rest = parts[1:]
        if folder is None:
            folder = self._distinguished("msgfolderroot")
            rest = parts
        walked = [parts[0]] if len(rest) < len(parts) else []
        for name in rest:
            walked.append(name)
            child = self._child(folder, name)
            if child is None:
                if not create:
                    raise ews_errors.ErrorFolderNotFound(
                        f"folder {'/'.join(walked)!r} does not exist in {self._account}"
                    )
                child = Folder(parent=folder, name=name)
                child.save()
            folder = child
        with self._lock:
            self._cache[key] = folder
        return folder
