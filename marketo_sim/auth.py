"""Check a request's AuthenticationHeader: user id, HMAC-SHA1 signature, timestamp age."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from marketo_sim.config import SimConfig
from marketo_sim.soap import ParsedAuth, SimFault


def expected_signature(timestamp: str, user_id: str, encryption_key: str) -> str:
    """Lowercase hex HMAC-SHA1(key, timestamp + user id), as Marketo documents it."""
    message = (timestamp + user_id).encode("utf-8")
    return hmac.new(encryption_key.encode("utf-8"), message, hashlib.sha1).hexdigest()


def parse_timestamp(text: str) -> datetime:
    """A W3C timestamp with an explicit offset; raise SimFault(20017) otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SimFault(20017, "requestTimestamp is not a W3C date-time") from None
    if moment.utcoffset() is None:
        raise SimFault(20017, "requestTimestamp has no UTC offset")
    return moment


def check_auth(auth: ParsedAuth, config: SimConfig, now: datetime) -> None:
    """Raise 20014 for a wrong user or signature, 20016 for a timestamp outside the window."""
    user_ok = hmac.compare_digest(auth.user_id.encode("utf-8"), config.user_id.encode("utf-8"))
    wanted = expected_signature(auth.timestamp, config.user_id, config.encryption_key)
    # Marketo's signatures are lowercase hex; compare as sent, in constant time.
    signature_ok = hmac.compare_digest(
        auth.signature.strip().encode("utf-8"), wanted.encode("ascii")
    )
    if not (user_ok and signature_ok):
        raise SimFault(20014, "Authentication failed")
    moment = parse_timestamp(auth.timestamp)
    if config.timestamp_window_s is not None:
        age_s = abs((now - moment).total_seconds())
        if age_s > config.timestamp_window_s:
            raise SimFault(20016, "Request signature is too old, or its timestamp is in the future")
