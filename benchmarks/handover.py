"""Hand-over rate of one mailbox with a slow handler: the poller alone, no mail server.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/handover.py [--messages 1000] [--handler-ms 50]
        [--request-ms 20] [--batch-size 100] [--concurrency N] [--ordered]

The source is the test suite's in-memory ``FakeSource`` with ``--request-ms`` of latency on every
request (SyncFolderItems, GetItem, UpdateItem: what a round trip to Exchange Online costs), the
store a real SQLite file, the handler a ``time.sleep(--handler-ms)``. One ``poll()`` drains the
folder (``start_from = "all"``); the figure is messages handed over per second of that poll.
Issue 14 measured 14 msg/s on main with a 50 ms handler; the goal was 100 or more at defaults.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from listener.abc import ChangePage, FetchFailure, ItemRef
from listener.model import Message
from listener.poller import Poller, PollerSettings
from listener.store import open_store
from tests.poller.fakes import FakeSource


class SlowSource(FakeSource):
    """``FakeSource`` whose every request takes ``latency`` seconds."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency

    def changes(self, sync_state: str | None, max_changes: int) -> ChangePage:
        time.sleep(self.latency)
        return super().changes(sync_state, max_changes)

    def fetch(self, refs: Sequence[ItemRef]) -> list[Message | FetchFailure]:
        time.sleep(self.latency)
        return super().fetch(refs)

    def mark_read(self, refs: Sequence[ItemRef]) -> list[str | None]:
        time.sleep(self.latency)
        return super().mark_read(refs)


class SleepingHandler:
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def __call__(self, message: Message) -> None:
        time.sleep(self.seconds)
        self.calls += 1

    def close(self) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--handler-ms", type=float, default=50)
    parser.add_argument("--request-ms", type=float, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=None, help="handler_concurrency")
    parser.add_argument("--ordered", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    source = SlowSource(args.request_ms / 1000)
    for i in range(args.messages):
        source.deliver(f"m{i}")
    handler = SleepingHandler(args.handler_ms / 1000)
    extra: dict[str, object] = {}
    fields = inspect.signature(PollerSettings).parameters
    if args.concurrency is not None and "handler_concurrency" in fields:
        extra["handler_concurrency"] = args.concurrency
    if args.ordered and "ordered" in fields:
        extra["ordered"] = True
    settings = PollerSettings(
        name="box", credential="c", start_from="all", batch_size=args.batch_size, **extra
    )  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/state.db")
        poller = Poller(settings, source, store, lambda m: ["slow"], {"slow": handler})
        started = time.perf_counter()
        result = poller.poll()
        seconds = time.perf_counter() - started
        store.close()
    assert result.handed_over == args.messages == handler.calls, result
    print(
        f"{result.handed_over} messages in {seconds:.2f} s: "
        f"{result.handed_over / seconds:.1f} msg/s "
        f"(handler {args.handler_ms:g} ms, request {args.request_ms:g} ms, "
        f"batch {args.batch_size}, {' '.join(f'{k}={v}' for k, v in extra.items()) or 'defaults'}; "
        f"{sum(c.startswith('fetch') for c in source.calls)} GetItem, "
        f"{source.calls.count('changes')} SyncFolderItems)"
    )


if __name__ == "__main__":
    main()
