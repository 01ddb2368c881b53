"""The REST identity service: client credentials in, one bearer token out, reused until it
expires (Adobe ``authentication.md``: "If you call the Identity endpoint before the token
expires, the response returns the same token and its remaining lifespan").

After expiry the token's first use gets 602 "Access token expired", every later use 601
"Access token invalid" (Adobe blog, "Exception and Error Handling: Part 3"); any string the
simulator never issued gets 601.
"""

from __future__ import annotations

import hmac
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

#: 401 bodies. Marketo's exact strings are unknown (research §1, open question 5); clients
#: parse ``error`` and ``error_description``, so these follow the OAuth2 shape.
BAD_CREDENTIALS: Final = {"error": "unauthorized", "error_description": "Bad client credentials"}
NO_CREDENTIALS: Final = {
    "error": "unauthorized",
    "error_description": "Full authentication is required: client_id and client_secret",
}

TokenCheck = Literal["ok", "expired", "invalid"]


@dataclass(frozen=True, slots=True)
class IdentityAnswer:
    status: int
    body: dict[str, Any]


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # monotonic seconds


class TokenIssuer:
    """One custom service's token (the simulator has one client id). Not thread-safe."""

    def __init__(self) -> None:
        self._current: _Token | None = None
        self._expired_unused: set[str] = set()  # expired, not yet answered with 602
        self.calls = 0
        self.tokens_issued = 0
        self.refused = 0

    def reset_counters(self) -> None:
        self.calls = self.tokens_issued = self.refused = 0

    def _roll(self, now: float) -> None:
        if self._current is not None and now >= self._current.expires_at:
            self._expired_unused.add(self._current.value)
            self._current = None

    def grant(
        self,
        params: Mapping[str, Sequence[str]],
        *,
        client_id: str,
        client_secret: str,
        lifetime_s: float,
        scope: str,
        now: float,
        expires_in_zero: bool = False,
    ) -> IdentityAnswer:
        """Answer one identity call; ``params`` are the query and form values, merged."""
        self.calls += 1
        if any(len(values) > 1 for values in params.values()):
            self.refused += 1
            return IdentityAnswer(
                400, {"error": "invalid_request", "error_description": "Repeated parameter"}
            )
        one = {name: values[0] for name, values in params.items() if values}
        if "client_id" not in one or "client_secret" not in one:
            self.refused += 1
            return IdentityAnswer(401, dict(NO_CREDENTIALS))
        id_ok = hmac.compare_digest(one["client_id"].encode(), client_id.encode())
        secret_ok = hmac.compare_digest(one["client_secret"].encode(), client_secret.encode())
        if not (id_ok and secret_ok):
            self.refused += 1
            return IdentityAnswer(401, dict(BAD_CREDENTIALS))
        # grant_type is required (swagger-identity: enum client_credentials).
        if one.get("grant_type") != "client_credentials":
            self.refused += 1
            return IdentityAnswer(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant_type must be client_credentials",
                },
            )
        self._roll(now)
        if self._current is None:
            self._current = _Token(f"{uuid.uuid4()}:sim", now + lifetime_s)
            self.tokens_issued += 1
        token = self._current
        if expires_in_zero:
            # The edge case Rudder met (HTTP 200, "expires_in": 0): the token is at the
            # very end of its life, so it is expired from now on.
            token.expires_at = now
        # Whole seconds left, rounded down (never more than is left); the rounding to 1 µs keeps
        # float noise from turning a fresh 3600 into 3599.
        remaining = max(0, math.floor(round(token.expires_at - now, 6)))
        return IdentityAnswer(
            200,
            {
                "access_token": token.value,
                "token_type": "bearer",
                "expires_in": remaining,
                "scope": scope,
            },
        )

    def check(self, token: str, now: float) -> TokenCheck:
        """What a bearer token is worth now: ok, expired (602, once) or invalid (601)."""
        self._roll(now)
        if self._current is not None and hmac.compare_digest(
            token.encode(), self._current.value.encode()
        ):
            return "ok"
        if token in self._expired_unused:
            self._expired_unused.discard(token)
            return "expired"
        return "invalid"

    def expire_now(self, now: float) -> bool:
        """Forced expiry: the current token ends now (its next use gets 602)."""
        if self._current is None or now >= self._current.expires_at:
            return False
        self._current.expires_at = now
        return True

    def to_json(self) -> dict[str, int]:
        return {"calls": self.calls, "tokens_issued": self.tokens_issued, "refused": self.refused}
