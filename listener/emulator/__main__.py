"""``python -m listener.emulator``: the same as ``ews-listener emulator``."""

from listener.emulator.cli import main

raise SystemExit(main())
