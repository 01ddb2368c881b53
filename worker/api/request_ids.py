"""Request ids of the HTTP API, bound to the API key that made them.

The API hands out ``<request id>.<tag>``: the producers' request id (``<shard>-<ms>-<seq>``,
unchanged in the ledger and the outcome store) and a tag, the first
:data:`TAG_BYTES` bytes (hex) of an HMAC-SHA256 of the request id under a secret derived
from the presented API key itself (`id_secret`). Redis keeps only the key's sha256, so
neither another key nor a copy of Redis can make a tag: a ``read`` key reads only the ids
it was given, and the ids of other keys cannot be enumerated (a wrong or missing tag is
404, as for an unknown id, so existence is never revealed). A key with the ``read:all``
scope reads any id, tagged or plain, without a check.

A revoked key's ids are readable only by a ``read:all`` key from then on (a new key under
the same name has a new secret). An Idempotency-Key replay returns the stored answer, so
the same tagged ids.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

#: Bytes of HMAC in a tag (128 bits: not guessable), written as 32 hex digits.
TAG_BYTES: Final = 16
SEPARATOR: Final = "."
#: The derivation's label: a tag secret is used for nothing else.
_LABEL: Final = b"leadsync api request-id tag v1"


def id_secret(api_key: str) -> bytes:
    """The tag secret of one API key (the key as presented, never stored)."""
    return hmac.new(api_key.encode("utf-8", "surrogatepass"), _LABEL, hashlib.sha256).digest()


def tag(secret: bytes, request_id: str) -> str:
    return hmac.new(secret, request_id.encode(), hashlib.sha256).hexdigest()[: TAG_BYTES * 2]


def bind(secret: bytes, request_id: str) -> str:
    """The id handed out: ``<request id>.<tag>``."""
    return f"{request_id}{SEPARATOR}{tag(secret, request_id)}"


def split(value: str) -> tuple[str, str | None]:
    """(request id, tag or None) of an id as a caller sent it."""
    request_id, dot, given = value.rpartition(SEPARATOR)
    return (request_id, given) if dot else (value, None)


def unbind(secret: bytes | None, value: str) -> str | None:
    """The request id to look up for ``value``, or None when the caller may not read it.
    ``secret`` None: a ``read:all`` key, any id (tagged or plain) is read."""
    request_id, given = split(value)
    if secret is None:
        return request_id
    expected = tag(secret, request_id).encode()
    if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
        return None
    return request_id
