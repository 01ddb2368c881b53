"""Marketo SOAP request signing: a W3C timestamp and an HMAC-SHA1 over timestamp + user id.

The body is not signed, so a captured header can be replayed until Marketo calls it too old
(fault 20016). That is why every attempt gets a fresh timestamp and signature.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


def w3c_timestamp(now: datetime | None = None) -> str:
    """``now`` as ``2013-08-01T18:22:30-07:00``: seconds precision, numeric offset, never ``Z``.

    ``None`` means the current local time; a naive ``now`` is read as local time.
    """
    moment = datetime.now().astimezone() if now is None else now
    if moment.utcoffset() is None:
        moment = moment.astimezone()
    offset = moment.utcoffset()
    assert offset is not None  # astimezone() always attaches an offset
    if offset % timedelta(minutes=1):
        # Historical zones (LMT) have second offsets that the W3C form cannot carry.
        moment, offset = moment.astimezone(UTC), timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}{sign}{hours:02d}:{mins:02d}"


def sign(timestamp: str, user_id: str, encryption_key: str) -> str:
    """Lowercase hex HMAC-SHA1(key=encryption_key, msg=timestamp + user_id), as Marketo checks."""
    message = (timestamp + user_id).encode("utf-8")
    return hmac.new(encryption_key.encode("utf-8"), message, hashlib.sha1).hexdigest()


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """The values of ``ns1:AuthenticationHeader`` for one attempt."""

    user_id: str
    # Replayable until it expires, so it stays out of reprs (and thus logs).
    signature: str = field(repr=False)
    timestamp: str


def make_auth_header(user_id: str, encryption_key: str, now: datetime | None = None) -> AuthHeader:
    """A fresh timestamp and signature; call once per attempt, never reuse on a retry."""
    timestamp = w3c_timestamp(now)
    signature = sign(timestamp, user_id, encryption_key)
    return AuthHeader(user_id=user_id, signature=signature, timestamp=timestamp)
