"""A real EWS SOAP server and OAuth 2.0 token server on loopback, for tests, benchmarks and demos.

Nothing here imports the rest of the listener: the emulator stands in for Exchange Online and the
Microsoft identity platform, and talks to the listener only over HTTP.
"""
