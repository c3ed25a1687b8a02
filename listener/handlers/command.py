"""The ``command`` handler: run a program with the JSON event on stdin.

Exit status 0 is success, 75 (``EX_TEMPFAIL``) asks for a retry, anything else is permanent. The
program runs in its own session (process group): on a timeout the whole group gets SIGTERM, then
SIGKILL after ``kill_grace``, so a shell script's children do not outlive it. Output goes to
temporary files rather than pipes: a grandchild that keeps an inherited pipe open would otherwise
make us wait for it after the program itself exited, and memory stays bounded however much the
program prints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from listener.errors import EXIT_TEMPFAIL
from listener.handlers.config import CommandHandlerConfig
from listener.handlers.errors import HandlerPermanentError, HandlerTransientError
from listener.model import Message

__all__ = ["CommandHandler"]

_TAIL_BYTES = 2000


def _tail(stream: IO[bytes], limit: int = _TAIL_BYTES) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    text = stream.read().decode("utf-8", errors="replace").strip()
    return ("…" + text) if size > limit else text


def _kill_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # The group id is the child's pid (start_new_session=True); the child itself may be gone
    # while its grandchildren still run, so signal the group, not the process.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


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
        inherit_env: bool = True,
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
        self.inherit_env = inherit_env
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
        env = dict(os.environ) if self.inherit_env else {}
        env.update(self._env)
        env.update(
            EWS_LISTENER_HANDLER=self.name,
            EWS_LISTENER_MAILBOX=message.mailbox,
            EWS_LISTENER_ITEM_ID=message.item_id,
            EWS_LISTENER_IDEMPOTENCY_KEY=message.idempotency_key,
        )
        if mime_file is not None:
            env["EWS_LISTENER_MIME_FILE"] = mime_file
        else:
            env.pop("EWS_LISTENER_MIME_FILE", None)
        return env

    def __call__(self, message: Message) -> None:
        """Run the command; raises on a non-zero exit, a timeout or a program that cannot start."""
        mime_path: str | None = None
        try:
            if self.pass_mime:
                # Loaded before the program starts: a source failure is transient and costs no run.
                fd, mime_path = tempfile.mkstemp(prefix="ews-listener-", suffix=".eml")
                with os.fdopen(fd, "wb") as f:  # mkstemp creates it 0600: other users cannot read
                    f.write(message.mime())
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
                # Interrupted some other way (KeyboardInterrupt, a signal handler raising):
                # the program must not keep running unsupervised.
                if process.returncode is None:
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
        _kill_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.kill_grace)
        # SIGKILL the group even when the leader exited: its children may ignore SIGTERM.
        _kill_group(process, signal.SIGKILL)
        process.wait()

    def close(self) -> None:
        """Nothing to release: every run cleans up after itself."""

    def __repr__(self) -> str:
        return f"CommandHandler(name={self.name!r}, argv={self.argv!r})"
