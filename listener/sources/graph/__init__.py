"""The Microsoft Graph mail source: delta queries, ``$batch``, immutable ids (httpx, no SDK).

Nothing outside this package imports ``_client``; nothing in it imports exchangelib.
"""

from __future__ import annotations

from listener.sources.graph.factory import GraphSources
from listener.sources.graph.source import GraphMailSource

__all__ = ["GraphMailSource", "GraphSources"]
