"""The ``ews-listener`` command: one module per command family, exit codes from ``listener.errors``.

Imports go one way: ``_main`` (the parser and :func:`main`) imports the command modules
(``check_config``, ``credentials``, ``service``, ``mailbox``, ``dead_letters``, ``schema``,
``demo``), and they import ``_common`` (output, usage, configuration loading, global options),
which imports none of them.

Adding a command: in a command module, write ``cmd_NAME(args) -> int`` and add it in that
module's ``register(commands, common)`` with ``parents=[common]`` and
``set_defaults(func=cmd_NAME)``; a new module also goes into ``_main._COMMAND_MODULES``. Print
with ``_common.echo`` only. Global options (``--config``, ``--log-level``, ``--log-format``) are
accepted before or after the command. A ``ConfigError`` anywhere becomes exit 78 with every issue
listed (systemd: ``RestartPreventExitStatus=78``).
"""

from listener.cli._main import build_parser, main, parse

__all__ = ["build_parser", "main", "parse"]
