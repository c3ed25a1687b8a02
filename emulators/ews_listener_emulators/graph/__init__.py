"""A Microsoft Graph v1.0 mail endpoint over the EWS emulator's mail store (issue 12).

``_contract`` is what the HTTP layer (``server``) and the resources (``folders``, ``messages``, …)
agree on; ``_ids`` maps Graph ids to the store's records.
"""
