"""Mail sources side by side: ``ews/`` (exchangelib) and ``graph/`` (httpx + msal tokens).

Nothing outside a source imports its protocol library; the pipeline sees ``MailSource`` and
``SourceFactory`` (``listener.abc``) and the typed errors of ``listener.errors``. A factory is
imported only when a mailbox of its kind is configured, so a Graph-only deployment never loads
exchangelib.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from listener.abc import SourceFactory

__all__ = ["KINDS", "build_factory"]

# kind → "module:class" of its factory; the class is built as Factory(providers, settings, stop=)
KINDS: dict[str, str] = {
    "ews": "listener.sources.ews.connections:EwsSources",
    "graph": "listener.sources.graph.factory:GraphSources",
}


def build_factory(
    kind: str, providers: Any, settings: Any, *, stop: threading.Event | None = None
) -> SourceFactory:
    """The factory of mail sources of ``kind`` (imports that source's protocol library)."""
    module, _, name = KINDS[kind].partition(":")
    factory: Callable[..., SourceFactory] = getattr(importlib.import_module(module), name)
    return factory(providers, settings, stop=stop)
