"""Content streams of every mail source: written to a ``SpooledTemporaryFile`` as they arrive.

Memory holds at most ``SPOOL_MAX_MEMORY`` of content whatever the message's size; past it the
file rolls over to ``$TMPDIR`` (issue 11, point 10: a 30 MiB attachment peaked at 313 MB RSS when
answers were parsed whole). Shared by the EWS source (``ews/_streaming``) and the Graph source.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["SPOOL_MAX_MEMORY", "spool"]

SPOOL_MAX_MEMORY = 1 << 20
"""Content up to this size (1 MiB) stays in memory; larger content goes to a temporary file."""


def spool(chunks: Iterator[bytes]) -> IO[bytes]:
    """Write ``chunks`` to a spooled file and return it rewound; the caller closes it."""
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_MEMORY)  # noqa: SIM115
    try:
        for chunk in chunks:
            out.write(chunk)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    finally:
        # A write that fails (a full $TMPDIR) leaves the stream unfinished: close it now, so its
        # HTTP session goes back to the pool rather than when the traceback is collected.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return out
