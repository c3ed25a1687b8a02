"""``ews-listener run``, ``once`` and ``health``: the daemon, one pass of it, and its probe."""

from __future__ import annotations

import argparse
import json

from listener.cli._common import Commands, configured_settings, echo, startup_errors
from listener.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE

__all__ = ["cmd_health", "cmd_once", "cmd_run", "register"]


@startup_errors
def cmd_run(args: argparse.Namespace) -> int:
    from listener.daemon import run_daemon  # noqa: PLC0415 - imports exchangelib

    settings = configured_settings(args)
    return run_daemon(settings, http_port=args.metrics_port, fail_fast=args.fail_fast)


@startup_errors
def cmd_once(args: argparse.Namespace) -> int:
    from listener.daemon import run_once, summary  # noqa: PLC0415

    settings = configured_settings(args)
    try:
        results = run_once(settings, mailboxes=args.mailbox or None)
    except KeyError as e:
        echo(f"error: {e.args[0]}", err=True)
        return EXIT_USAGE
    code, report = summary(results)
    if args.json:
        echo(json.dumps(report, indent=2, default=str))
    else:
        for name, r in report["mailboxes"].items():
            if r["polled_by"]:
                echo(f"{name}: owned by {r['polled_by']!r}, asked to poll it now - ok")
                continue
            status = "ok" if r["ok"] else f"FAILED: {r['error']}"
            echo(
                f"{name}: handed over {r['handed_over']}, failed {r['failed']}, "
                f"dead-lettered {r['dead_lettered']}, already done {r['already_done']} - {status}"
            )
    return code


def cmd_health(args: argparse.Namespace) -> int:
    from listener.observability.health import check_health, health_url  # noqa: PLC0415

    url = args.url
    if url is None:
        host, port = "127.0.0.1", args.port
        if port is None:
            settings = configured_settings(args)
            host, port = settings.service.http_host, settings.service.http_port
        if port is None:
            echo("error: no health endpoint: pass --url or set service.http_port", err=True)
            return EXIT_CONFIG
        url = health_url(host, port, "/readyz")
    ok, text = check_health(url, timeout=args.timeout)
    echo(text)
    return EXIT_OK if ok else EXIT_UNEXPECTED


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``run``, ``once`` and ``health``."""
    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the daemon until SIGTERM/SIGINT",
        description="Poll every enabled mailbox on its schedule and hand new messages to their "
        "handlers until SIGTERM or SIGINT; then stop scheduling, let in-flight handlers finish "
        "(service.shutdown_grace), persist and exit 0. Exit 78 on a configuration error, 69 with "
        "--fail-fast when a credential cannot get a token at start-up.",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /healthz /readyz /metrics on this port (default: service.http_port)",
    )
    run.add_argument(
        "--fail-fast",
        action="store_true",
        help="exit 69 when a credential cannot "
        "get a token at start-up (default: keep running, that mailbox backs off)",
    )
    run.set_defaults(func=cmd_run)

    once = commands.add_parser(
        "once",
        parents=[common],
        help="poll every mailbox once and exit (cron, workflow steps)",
        description="Poll every enabled mailbox once, hand over what is new, retry what is due, "
        "and exit: 0 when every mailbox polled successfully, 75 when one failed (its error is in "
        "the summary), 78 on a configuration error.",
    )
    once.add_argument("--json", action="store_true", help="print a machine-readable summary")
    once.add_argument(
        "--mailbox", action="append", metavar="NAME", help="only this mailbox (repeatable)"
    )
    once.set_defaults(func=cmd_once)

    health = commands.add_parser(
        "health",
        parents=[common],
        help="exit 0 when /readyz says ready, 1 otherwise (Docker HEALTHCHECK)",
    )
    health.add_argument("--url", help="readiness URL (default: http://127.0.0.1:PORT/readyz)")
    health.add_argument("--port", type=int, help="port of the health server")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(func=cmd_health)
