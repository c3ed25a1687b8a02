"""How large a delta page pays: the page size GraphMailSource asks for (DEFAULT_PAGE_LIMIT)."""

from __future__ import annotations

import time

from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from listener.sources.graph.source import DEFAULT_PAGE_LIMIT, GraphMailSource
from tests.graph_emulator.conftest import ALICE
from tests.graph_source.mail import plain


def test_page_size_pays(ews: EwsEmulator, graph: GraphEmulator, source: GraphMailSource) -> None:
    """An initial round of 600 messages at several page sizes: time per message and requests
    (printed with -s); the default reads the round in a few requests."""
    for n in range(600):
        ews.deliver(ALICE, plain(f"size {n}", body="x" * 2000))
    for size in (50, 100, 200, 500, 1000):
        source.page_limit = size
        start, requests = time.perf_counter(), len(graph.request_log)
        state, seen = None, 0
        while True:
            page = source.changes(state, size)
            seen += len(page.created)
            state = page.sync_state
            if page.last_page:
                break
        took = time.perf_counter() - start
        print(f"page {size:5}: {len(graph.request_log) - requests:3} requests, {took:.3f} s")
        assert seen == 600
    assert DEFAULT_PAGE_LIMIT >= 100
