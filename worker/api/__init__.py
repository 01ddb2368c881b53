"""The HTTP ingestion API (``leadsync api``): one aiohttp app over the light producers
core, so web apps in any language can enqueue upserts and read outcomes.

``app`` builds the app and its routes, ``auth`` keeps the API keys (hashed, in Redis)
and their rates, ``idempotency`` the Idempotency-Key answers, ``errors`` the one error
body, and ``openapi.json`` the contract (served at ``/v1/openapi.json``; a test checks
that the app and the document agree).
"""
