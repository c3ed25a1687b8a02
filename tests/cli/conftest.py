"""The CLI tests share the token tests' CA and app certificate fixtures."""

from tests.auth.conftest import ca, certificate

__all__ = ["ca", "certificate"]
