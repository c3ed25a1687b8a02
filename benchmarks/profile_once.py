"""Where ``ews-listener once`` spends its CPU: the real daemon, profiled in every thread.

Usage::

    .venv/bin/python benchmarks/profile_once.py [--messages 5000] [--batch-size 100]
        [--top 25] [--sort tottime|cumulative] [--runs 3] [--no-profile] [--dump FILE]

The emulator (token server + EWS) runs in its own ``spawn``-ed process (``_harness``), N plain
messages (``_harness.make_messages``) are delivered to a fresh mailbox, and one ``ews-listener
once`` (start_from ``all``, mark read, the counting handler, log level ``warning``) hands them
over in a child process: the real CLI under ``_profiled.py``.

Why cProfile in every thread and not the daemon under ``python -m cProfile`` (or pyinstrument):
both see only the main thread, and the poll's costly half runs elsewhere: GetItem parsing and the
conversion to ``Message`` on the prefetch thread (``listener.pipeline.batches``), the mark-read
and the commit on the settler's (``listener.pipeline.settler``), handlers on the pool's.
``_profiled.py`` (also ``cluster.py --scale --profile``'s) wraps ``threading.Thread.run`` so
that each thread has a ``cProfile.Profile`` of its own, and merges them at exit. Each profile's
clock is ``time.thread_time``, the thread's own CPU time: a thread waiting on a socket, a lock or
the GIL costs nothing, so the figures add up to CPU, not to wall time summed over threads. No
dependency beyond the standard library. Profiling roughly doubles the CPU time: read the shares,
not the seconds.

``--no-profile`` runs ``python -m listener once`` unprofiled ``--runs`` times (fresh messages each
time) and prints wall time, msg/s, the daemon's CPU seconds per 1,000 messages and its peak RSS
(``ru_maxrss`` from ``wait4``), with the emulator's CPU over the same run. ``--code DIR`` runs the
daemon from another tree's ``listener/`` (first on ``PYTHONPATH``), for before/after figures::

    mkdir /tmp/before && git archive COMMIT listener | tar -x -C /tmp/before
    .venv/bin/python benchmarks/profile_once.py --no-profile --code /tmp/before
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    EmulatorProcess,
    daemon_argv,
    daemon_env,
    make_messages,
    print_table,
    workdir,
    write_config,
)

__all__ = ["main"]


# --- the parent -------------------------------------------------------------------------------


def _prepare(emu: EmulatorProcess, root: Path, tag: str, messages: int, batch_size: int) -> Path:
    assert emu.endpoints is not None
    address = f"{tag}@contoso.com"
    emu.add_mailboxes([address])
    emu.deliver(address, make_messages(messages, address, tag=tag))
    run_dir = root / tag
    run_dir.mkdir()
    return write_config(
        run_dir / "config.toml",
        emu.endpoints,
        [address],
        state_url=f"sqlite:///{run_dir / 'state.db'}",
        batch_size=batch_size,
        start_from="all",
    )


def _run(
    argv: list[str], count_file: Path, code: Path | None = None
) -> tuple[float, float, float, int, str]:
    """(wall s, CPU s, peak RSS MB, exit code, output) of one child."""
    env = daemon_env(count_file)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env["PYTHONPATH"]])
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=count_file.parent,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, process.returncode, output


def _handled(count_file: Path) -> int:
    return int(count_file.read_text()) if count_file.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    parser.add_argument("--runs", type=int, default=3, help="with --no-profile")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--dump", type=Path, help="keep the merged pstats file here")
    parser.add_argument("--code", type=Path, help="run the listener/ of this tree instead")
    args = parser.parse_args(argv)

    with workdir() as root, EmulatorProcess(root) as emu:
        if args.no_profile:
            rows: list[list[Any]] = []
            for n in range(args.runs):
                config = _prepare(emu, root, f"plain{n}", args.messages, args.batch_size)
                count_file = config.parent / "handled"
                before = emu.stats().cpu_seconds
                wall, cpu, rss, code, output = _run(
                    daemon_argv("once", config), count_file, args.code
                )
                emulator_cpu = emu.stats().cpu_seconds - before
                handled = _handled(count_file)
                if code != 0 or handled != args.messages:
                    print(f"!! exit {code}, handled {handled}/{args.messages}:\n{output[-3000:]}")
                rows.append(
                    [
                        n + 1,
                        handled,
                        f"{wall:.2f}",
                        f"{handled / wall:.0f}",
                        f"{cpu:.2f}",
                        f"{cpu / handled * 1000:.3f}" if handled else "-",
                        f"{rss:.0f}",
                        f"{emulator_cpu:.2f}",
                    ]
                )
            print_table(
                [
                    "run",
                    "messages",
                    "wall s",
                    "msg/s",
                    "daemon CPU s",
                    "CPU s / 1,000",
                    "peak RSS MB",
                    "emulator CPU s",
                ],
                rows,
            )
            return 0
        config = _prepare(emu, root, "profiled", args.messages, args.batch_size)
        count_file = config.parent / "handled"
        out = args.dump or root / "once.pstats"
        wall, cpu, rss, code, output = _run(
            daemon_argv("once", config, profile=out), count_file, args.code
        )
        handled = _handled(count_file)
        print(
            f"profiled once: {handled}/{args.messages} messages, exit {code}, {wall:.2f} s wall, "
            f"{cpu:.2f} s CPU, peak RSS {rss:.0f} MB (profiling inflates time and memory)"
        )
        if code != 0:
            print(output[-3000:])
        stats = pstats.Stats(str(out))
        stats.sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
