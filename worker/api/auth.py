"""API keys: created, listed and revoked with ``leadsync api-keys``; checked on every
``/v1`` request.

A key is shown once, when it is made. Redis keeps only its sha256 (``Keys.api_keys``:
digest -> record with name, scopes, rate and creation time) and the name's digest
(``Keys.api_key_names``), so a copy of Redis gives no working key. A request's key is
hashed, looked up by its digest and the stored digest compared with
``hmac.compare_digest``. Keys never enter a log line, a metric or an error message.

The per-key rate is a fixed one-second window counted in Redis (one INCR per request, a
key that expires), so every API process shares it. A key made without a rate gets
LEADSYNC_API_DEFAULT_RATE_PER_S (keys made before that setting too).

Failed authentications (an unknown or revoked key) are counted per client address in a
window of LEADSYNC_API_AUTH_FAILURE_WINDOW_S; past LEADSYNC_API_AUTH_FAILURES every
request from that address gets 429 with Retry-After (the rest of the window), before any
lookup. The counter is named by a hash of the address; where no address is known, by a
hash of the presented key, so a client that keeps sending a revoked key is slowed too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio

from producers.contract import Keys
from worker.api.errors import ApiError
from worker.lua import script
from worker.settings import Settings

#: ``read:all`` reads every key's outcomes (any request id, tagged or plain; an operator's
#: key): ``read`` reads only the ids its own key was given (``request_ids``).
SCOPES: Final = ("write", "read", "read:all")
READ_ALL: Final = "read:all"
#: Every key starts with this, so a leaked one is easy to recognise in a scan.
KEY_PREFIX: Final = "lsk_"
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

#: Count a request in its window (``scripts/rate.lua``); the first of a window sets the expiry.
RATE_LUA: Final = script("worker.api", "rate.lua")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is stored about one key (never the key itself)."""

    name: str
    scopes: tuple[str, ...]
    rate_per_s: float | None
    created: float
    digest: str

    def record(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "scopes": list(self.scopes),
                "rate_per_s": self.rate_per_s,
                "created": self.created,
                "digest": self.digest,
            }
        )

    def allows(self, scope: str) -> bool:
        """``read:all`` includes ``read``."""
        return scope in self.scopes or (scope == "read" and READ_ALL in self.scopes)

    @classmethod
    def from_record(cls, raw: bytes | str) -> ApiKey:
        data = json.loads(raw)
        return cls(
            name=data["name"],
            scopes=tuple(data["scopes"]),
            rate_per_s=data.get("rate_per_s"),
            created=float(data["created"]),
            digest=data["digest"],
        )


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise ValueError("a key name is 1 to 64 letters, digits or _ . -")
    return name


def check_scopes(scopes: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be one or more of {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in scopes)


@dataclass(frozen=True, slots=True)
class Policy:
    """The limits every key and client get (from the settings of the same names)."""

    default_rate_per_s: float = Settings.model_fields["api_default_rate_per_s"].default
    auth_failures: int = Settings.model_fields["api_auth_failures"].default
    auth_failure_window_s: int = Settings.model_fields["api_auth_failure_window_s"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            settings.api_default_rate_per_s,
            settings.api_auth_failures,
            settings.api_auth_failure_window_s,
        )


class KeyStore:
    """The API keys in Redis."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, policy: Policy = Policy()) -> None:
        self._client = client
        self._keys = keys
        self.policy = policy

    @classmethod
    def for_settings(cls, client: redis.asyncio.Redis, settings: Settings) -> KeyStore:
        return cls(client, Keys(settings.key_prefix), Policy.from_settings(settings))

    async def create(
        self, name: str, scopes: list[str], rate_per_s: float | None = None
    ) -> tuple[str, ApiKey]:
        """A new key for ``name`` (ValueError when the name is taken or a value is bad)."""
        check_name(name)
        if rate_per_s is not None and rate_per_s < 1:
            raise ValueError("--rate-per-s must be at least 1 (requests per second)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        api_key = ApiKey(name, check_scopes(scopes), rate_per_s, time.time(), digest_of(key))
        if not await self._client.hsetnx(self._keys.api_key_names(), name, api_key.digest):
            raise ValueError(f"a key named {name!r} exists; revoke it first")
        await self._client.hset(self._keys.api_keys(), api_key.digest, api_key.record())
        return key, api_key

    async def list(self) -> list[ApiKey]:
        records = await self._client.hvals(self._keys.api_keys())
        return sorted((ApiKey.from_record(raw) for raw in records), key=lambda k: k.name)

    async def revoke(self, name: str) -> bool:
        """Remove the key of ``name``; False when there is none."""
        digest = await self._client.hget(self._keys.api_key_names(), name)
        if digest is None:
            return False
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._keys.api_keys(), digest)
        pipe.hdel(self._keys.api_key_names(), name)
        await pipe.execute()
        return True

    async def lookup(self, key: str) -> ApiKey | None:
        digest = digest_of(key)
        raw = await self._client.hget(self._keys.api_keys(), digest)
        if raw is None:
            return None
        found = ApiKey.from_record(raw)
        return found if hmac.compare_digest(found.digest, digest) else None

    async def authenticate(
        self, header: str | None, scope: str, client: str | None = None
    ) -> ApiKey:
        """The key of an ``Authorization: Bearer`` header with ``scope``, or ApiError
        401 (no or bad key), 403 (scope missing) or 429 (past its rate, or, for a bad
        key, ``client``, the caller's address, failed too often)."""
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(
                401,
                "send an API key as 'Authorization: Bearer <key>'",
                field="Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
        failures = self._failures_key(client, key)
        api_key = await self.lookup(key)
        if api_key is None:
            # Only failures are throttled: a working key behind the same address (a NAT,
            # a proxy) is never locked out by another caller's bad keys.
            if failures is not None:
                await self._check_failures(failures)
                await self._count_failure(failures)
            raise ApiError(
                401,
                "the API key is unknown or revoked",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if not api_key.allows(scope):
            raise ApiError(403, f"this API key lacks the {scope!r} scope", field="Authorization")
        rate = api_key.rate_per_s or self.policy.default_rate_per_s
        if rate:
            await self._check_rate(api_key, rate)
        return api_key

    async def _check_rate(self, api_key: ApiKey, rate_per_s: float) -> None:
        second = int(time.time())
        count = await self._client.eval(  # type: ignore[misc]
            RATE_LUA, 1, self._keys.api_rate(api_key.digest[:16], second), 2000
        )
        if int(count) > rate_per_s:
            whose = "this API key's" if api_key.rate_per_s else "the default"
            raise ApiError(
                429,
                f"past {whose} rate of {rate_per_s:g} requests/s",
                headers={"Retry-After": "1"},
            )

    # --- failed authentications ----------------------------------------------------

    def _failures_key(self, client: str | None, key: str) -> str | None:
        """The counter of ``client``'s failures (a hash: no address or key in a key name)."""
        if not self.policy.auth_failures:
            return None
        who = f"addr:{client}" if client else f"key:{digest_of(key)}"
        return self._keys.api_auth_failures(hashlib.sha256(who.encode()).hexdigest()[:24])

    async def _check_failures(self, failures: str) -> None:
        """429 while the client is past its failures, before any lookup."""
        count = await self._client.get(failures)
        if count is not None and int(count) >= self.policy.auth_failures:
            await self._refuse_failing(failures)

    async def _count_failure(self, failures: str) -> None:
        window_ms = self.policy.auth_failure_window_s * 1000
        count = await self._client.eval(RATE_LUA, 1, failures, window_ms)  # type: ignore[misc]
        if int(count) > self.policy.auth_failures:
            await self._refuse_failing(failures)

    async def _refuse_failing(self, failures: str) -> None:
        left_ms = await self._client.pttl(failures)
        retry_after = max(1, math.ceil(left_ms / 1000)) if left_ms > 0 else 1
        raise ApiError(
            429,
            f"too many failed authentications from this client "
            f"({self.policy.auth_failures} in {self.policy.auth_failure_window_s} s)",
            field="Authorization",
            headers={"Retry-After": str(retry_after)},
        )
