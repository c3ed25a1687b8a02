"""The recording ``python`` handler of the corpus: keeps every ``Message`` it is handed.

The corpus runs the pipeline in this process (``run_once``), so a module-level list is the
handler's receipt log; the configuration names it as ``tests.corpus.recorder:record``.
"""

from __future__ import annotations

import threading

from listener.model import Message

__all__ = ["RECEIVED", "record"]

RECEIVED: list[Message] = []
_LOCK = threading.Lock()


def record(message: Message) -> None:
    """Remember the event exactly as the handler received it."""
    with _LOCK:
        RECEIVED.append(message)
