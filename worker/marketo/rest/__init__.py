"""Marketo REST behind the MarketoApi seam: Sync Leads (``POST /rest/v1/leads.json``)
with one OAuth token shared by the cluster. ``codec`` builds and reads the JSON (pure),
``faults`` maps Marketo's codes onto the error tree, ``tokens`` shares the token through
Redis, ``api`` is the MarketoApi over them; ``describe`` reads the lead fields
(describe2.json)."""
