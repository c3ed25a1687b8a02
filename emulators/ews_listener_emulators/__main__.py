"""``python -m ews_listener_emulators``: the same as ``ews-listener emulator``."""

from ews_listener_emulators.cli import main

raise SystemExit(main())
