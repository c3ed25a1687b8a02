"""The parts of a poll that are not its steps: what ``listener.poller`` is built from.

``poller.py`` keeps the six steps of DESIGN.md in the order they happen and the records they
make; what would hide them lives here, one concern a module, each small enough to test alone:

- ``settings``: what a poll is told (``PollerSettings``, ``FailurePolicy``) and what it reports
  (``PollResult``), plain values free of any protocol;
- ``fate``: the pure decision of what becomes of one message (delivered, retry, dead letter);
- ``hooks``: ``PollHooks``, the named no-op events a poll reports (metrics implement them);
- ``batches``: full batches across page boundaries, read one ahead (steps 2 and 3);
- ``handover``: the concurrent, bounded hand-over of one batch and the shared pool (step 4);
- ``settler``: post-processing and commits in order, beside the next hand-over (steps 5 and 6);
- ``cursor``: where a poll starts (the stored sync state, ``start_from``, a protocol switch);
- ``lookup``: mail found again by Message-ID where its recorded id cannot serve (after a switch
  of protocol or a move to the dead-letter folder: retries and replays).
"""

from listener.pipeline.batches import Batch, BatchReader, Prefetcher
from listener.pipeline.fate import (
    Delivered,
    Fate,
    GiveUp,
    Gone,
    Outcome,
    Retry,
    decide,
    decide_fetch_failure,
)
from listener.pipeline.handover import DEFAULT_HANDLER_WORKERS, HandlerPool, Job, hand_over
from listener.pipeline.hooks import PollHooks
from listener.pipeline.settings import FailurePolicy, PollerSettings, PollResult, StartFrom
from listener.pipeline.settler import Settler

__all__ = [
    "DEFAULT_HANDLER_WORKERS",
    "Batch",
    "BatchReader",
    "Delivered",
    "FailurePolicy",
    "Fate",
    "GiveUp",
    "Gone",
    "HandlerPool",
    "Job",
    "Outcome",
    "PollHooks",
    "PollResult",
    "PollerSettings",
    "Prefetcher",
    "Retry",
    "Settler",
    "StartFrom",
    "decide",
    "decide_fetch_failure",
    "hand_over",
]
