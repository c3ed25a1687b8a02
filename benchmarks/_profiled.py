"""``ews-listener ARGS`` with a CPU profile of every thread (``profile_once.py``, ``cluster.py
--scale --profile``).

    python benchmarks/_profiled.py OUT.pstats ARGS...

``threading.Thread.run`` is wrapped so that each thread has a ``cProfile.Profile`` of its own on
``time.thread_time`` (the thread's CPU: waiting on a socket, a lock or the GIL costs nothing),
and the main thread has one too. A daemon runs for a warm-up
first, so SIGUSR1 takes a snapshot of every profile and the file written at exit holds what was
spent after the last snapshot only (the measured window); without a SIGUSR1 it holds it all.
Profiling roughly doubles the CPU time: read the shares, not the seconds.
"""

from __future__ import annotations

import cProfile
import marshal
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["main"]

# pstats' raw form: func -> (primitive calls, calls, own time, cumulative time, callers)
Stats = dict[Any, tuple[int, int, float, float, dict[Any, Any]]]


def _stats(profile: cProfile.Profile) -> Stats:
    """What ``profile`` holds so far, without disabling it (``create_stats`` would, for the
    calling thread)."""
    profile.snapshot_stats()
    stats: Stats = profile.stats  # type: ignore[attr-defined]
    return dict(stats)


def _add(total: Stats, stats: Stats, sign: int) -> None:
    for func, (cc, nc, tt, ct, callers) in stats.items():
        before = total.get(func, (0, 0, 0.0, 0.0, {}))
        merged = dict(before[4])
        for caller, value in callers.items():
            old = merged.get(caller)
            if isinstance(value, tuple):
                old_t = old if isinstance(old, tuple) else (0, 0, 0.0, 0.0)
                merged[caller] = tuple(a + sign * b for a, b in zip(old_t, value, strict=True))
            else:
                merged[caller] = (old or 0) + sign * value
        total[func] = (
            before[0] + sign * cc,
            before[1] + sign * nc,
            before[2] + sign * tt,
            before[3] + sign * ct,
            merged,
        )


def main(argv: list[str]) -> int:
    out, args = argv[0], argv[1:]
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profile = cProfile.Profile(time.thread_time)
    baseline: Stats = {}

    def snapshot(signum: int, frame: FrameType | None) -> None:
        baseline.clear()
        with lock:
            for profile in [main_profile, *profiles]:
                _add(baseline, _stats(profile), 1)

    signal.signal(signal.SIGUSR1, snapshot)
    from listener.cli import main as cli_main

    main_profile.enable()
    try:
        code = cli_main(args)
    finally:
        main_profile.disable()
    total: Stats = {}
    with lock:
        for profile in [main_profile, *profiles]:
            _add(total, _stats(profile), 1)
    _add(total, baseline, -1)
    with open(out, "wb") as f:
        marshal.dump({k: v for k, v in total.items() if v[1] > 0}, f)
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
