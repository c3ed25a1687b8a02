"""The emulator conformance suite's fixtures (token server, schema-validating EWS emulator,
exchangelib accounts), for the tests of the EWS source's own exchangelib services."""

from tests.emulator.conftest import (  # noqa: F401 - fixtures, found by name
    ca,
    emu,
    emulator_server,
    make_account,
    token_server,
    trusted_adapter,
)
