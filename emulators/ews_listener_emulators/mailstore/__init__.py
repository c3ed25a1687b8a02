"""Parts of the emulator's mail store: the item model (``model``) and MIME parsing (``mime``).

``ews_listener_emulators.store.MailStore`` ties them together; import from there.
"""
