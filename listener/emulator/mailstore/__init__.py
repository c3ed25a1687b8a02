"""Parts of the emulator's mail store: the item model (``model``) and MIME parsing (``mime``).

``listener.emulator.store.MailStore`` ties them together; import from there.
"""
