"""ews-listener: watch Exchange mailboxes over EWS and hand new messages to workflow handlers."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
