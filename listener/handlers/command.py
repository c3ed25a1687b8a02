"""The ``command`` handler: run a program with the JSON event on stdin.

Exit status 0 is success, 75 (``EX_TEMPFAIL``) asks for a retry, anything else is permanent. The
program runs in its own session (process group). When it exits, and on a timeout, the whole group
gets SIGTERM, then SIGKILL after ``kill_grace``: a shell script's background children do not
outlive the run (issue 11). Output goes to temporary files rather than pipes: a grandchild that
keeps an inherited pipe open would otherwise make us wait for it after the program itself exited,
and memory stays bounded however much the program prints.

The program starts from a minimal environment: :data:`BASE_ENV` taken from ours, the names in
``inherit_env``, then ``env``. Never the whole environment: the listener's own holds client
secrets (``env`` secret sources) and configuration overrides (issue 11). ``env`` values are
registered for log redaction when the handler is built, since they often hold credentials.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from listener.errors import EXIT_TEMPFAIL
from listener.handlers.config import CommandHandlerConfig
from listener.handlers.errors import HandlerPermanentError, HandlerTransientError
from listener.model import Message
from listener.observability.redaction import register_secret

__all__ = ["BASE_ENV", "CommandHandler"]

_TAIL_BYTES = 2000
# Taken from the listener's environment when set: what a program needs to find binaries, decode
# text, find its home and tell the time. Anything else has to be named in ``inherit_env``.
BASE_ENV = ("PATH", "LANG", "HOME", "TZ")
# How often we look whether a process group is gone while waiting out ``kill_grace``.
_GROUP_POLL = 0.01


def _tail(stream: IO[bytes], limit: int = _TAIL_BYTES) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    text = stream.read().decode("utf-8", errors="replace").strip()
    return ("…" + text) if size > limit else text


def _kill_group(process: subprocess.Popen[bytes], sig: int) -> bool:
    """Signal the program's process group; False when no member of it is left."""
    # The group id is the child's pid (start_new_session=True); the child itself may be gone
    # while its grandchildren still run, so signal the group, not the process.
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans(process: subprocess.Popen[bytes]) -> None:
    # As PID 1 (the Docker image has no init) or a subreaper we inherit the group's orphans;
    # unreaped, their zombies would keep the group "alive" to killpg(…, 0) until kill_grace.
    # Only once Popen has reaped the leader: reaping it here would hide its exit status.
    if process.returncode is None:
        return
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-process.pid, os.WNOHANG)[0]:
            pass


def _group_ends_by(process: subprocess.Popen[bytes], deadline: float) -> bool:
    while True:
        _reap_orphans(process)
        if not _kill_group(process, 0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_GROUP_POLL)


class CommandHandler:
    """Runs ``argv`` once per message (no shell) and maps its exit status to the outcome."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        kill_grace: float = 5.0,
        env: Mapping[str, str] | None = None,
        inherit_env: Sequence[str] = (),
        cwd: Path | str | None = None,
        pass_mime: bool = True,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.name = name
        self.argv = tuple(argv)
        self.timeout = timeout
        self.kill_grace = kill_grace
        self._env = dict(env or {})
        for value in self._env.values():
            register_secret(value)
        self.inherit_env = tuple(inherit_env)
        self.cwd = cwd
        self.pass_mime = pass_mime

    @classmethod
    def from_config(cls, name: str, config: CommandHandlerConfig) -> CommandHandler:
        """A command handler as configured."""
        return cls(
            name,
            config.argv,
            timeout=config.timeout,
            kill_grace=config.kill_grace,
            env={k: v.get_secret_value() for k, v in config.env.items()},
            inherit_env=config.inherit_env,
            cwd=config.cwd,
            pass_mime=config.pass_mime,
        )

    def _environment(self, message: Message, mime_file: str | None) -> dict[str, str]:
        env = {k: os.environ[k] for k in (*BASE_ENV, *self.inherit_env) if k in os.environ}
        env.update(self._env)
        env.update(
            EWS_LISTENER_HANDLER=self.name,
            EWS_LISTENER_MAILBOX=message.mailbox,
            EWS_LISTENER_ITEM_ID=message.item_id,
            EWS_LISTENER_IDEMPOTENCY_KEY=message.idempotency_key,
        )
        if mime_file is not None:
            env["EWS_LISTENER_MIME_FILE"] = mime_file
        return env

    def __call__(self, message: Message) -> None:
        """Run the command; raises on a non-zero exit, a timeout or a program that cannot start."""
        mime_path: str | None = None
        try:
            if self.pass_mime:
                # Loaded before the program starts: a source failure is transient and costs no run.
                fd, mime_path = tempfile.mkstemp(prefix="ews-listener-", suffix=".eml")
                # mkstemp creates it 0600: other users cannot read. Copied in pieces from the
                # source's spooled stream, so a large message never sits whole in our memory.
                with os.fdopen(fd, "wb") as f, message.open_mime() as mime:
                    shutil.copyfileobj(mime, f)
            self._run(message, mime_path)
        finally:
            if mime_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(mime_path)

    def _run(self, message: Message, mime_path: str | None) -> None:
        event = message.to_json().encode("utf-8")
        program = self.argv[0]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=self.cwd,
                    env=self._environment(message, mime_path),
                    start_new_session=True,
                )
            except OSError as e:
                # Missing program, not executable, bad cwd: retrying the same argv cannot help.
                raise HandlerPermanentError(
                    f"command {program!r} cannot start: {type(e).__name__}: {e.strerror or e}"
                ) from e
            try:
                process.communicate(event, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._stop(process)
                raise HandlerTransientError(
                    f"command {program!r} timed out after {self.timeout:g} s; its process group "
                    f"was killed; stderr: {_tail(err) or '(empty)'}"
                ) from None
            finally:
                # Exited, or interrupted some other way (KeyboardInterrupt, a signal handler
                # raising): neither the program nor what it left in the background may keep
                # running unsupervised (guarded by test_background_children_end_with_the_run).
                self._stop(process)
            code = process.returncode
            if code == 0:
                return
            stderr = _tail(err) or "(empty)"
            if code == EXIT_TEMPFAIL:
                raise HandlerTransientError(
                    f"command {program!r} asked for a retry (exit 75); stderr: {stderr}"
                )
            if code < 0:
                # Killed by a signal we did not send (OOM killer, systemd stopping the cgroup):
                # not the program's verdict on the message, so try again.
                raise HandlerTransientError(
                    f"command {program!r} was killed by signal {-code}; stderr: {stderr}"
                )
            raise HandlerPermanentError(f"command {program!r} exited with {code}; stderr: {stderr}")

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        """End the program's whole group: SIGTERM, then SIGKILL to whatever is left after
        ``kill_grace``; a no-op costing one ``killpg`` when the group is already empty."""
        if _kill_group(process, signal.SIGTERM):
            deadline = time.monotonic() + self.kill_grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.kill_grace)  # reaped, it no longer counts as a member
            # Wait for the group, not only the leader: its children may ignore SIGTERM.
            if not _group_ends_by(process, deadline):
                _kill_group(process, signal.SIGKILL)
        process.wait()

    def close(self) -> None:
        """Nothing to release: every run cleans up after itself."""

    def __repr__(self) -> str:
        return f"CommandHandler(name={self.name!r}, argv={self.argv!r})"
