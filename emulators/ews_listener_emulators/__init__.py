"""A real EWS SOAP server and OAuth 2.0 token server on loopback, for tests, benchmarks and demos.

Nothing here imports the listener (``listener``): the emulators stand in for Exchange Online and
the Microsoft identity platform, and talk to the listener only over HTTP. They are a
distribution of their own, ``ews-listener-emulators``, so that a production install of
ews-listener carries none of it (issue 12; ``tests/deploy/test_packaging.py`` guards both).
"""
