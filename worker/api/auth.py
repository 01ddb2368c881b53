"""API keys: created, listed and revoked with ``leadsync api-keys``; checked on every
``/v1`` request.

A key is shown once, when it is made. Redis keeps only its sha256 (``Keys.api_keys``:
digest -> record with name, scopes, rate and creation time) and the name's digest
(``Keys.api_key_names``), so a copy of Redis gives no working key. A request's key is
hashed, looked up by its digest and the stored digest compared with
``hmac.compare_digest``. Keys never enter a log line, a metric or an error message.

The per-key rate is a fixed one-second window counted in Redis (one INCR per request, a
key that expires), so every API process shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio

from producers.contract import Keys
from worker.api.errors import ApiError
from worker.lua import script

SCOPES: Final = ("write", "read")
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


class KeyStore:
    """The API keys in Redis."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

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

    async def authenticate(self, header: str | None, scope: str) -> ApiKey:
        """The key of an ``Authorization: Bearer`` header with ``scope``, or ApiError
        401 (no or bad key), 403 (scope missing) or 429 (past its rate)."""
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(
                401,
                "send an API key as 'Authorization: Bearer <key>'",
                field="Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
        api_key = await self.lookup(key)
        if api_key is None:
            raise ApiError(
                401,
                "the API key is unknown or revoked",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if scope not in api_key.scopes:
            raise ApiError(403, f"this API key lacks the {scope!r} scope", field="Authorization")
        if api_key.rate_per_s is not None:
            await self._check_rate(api_key)
        return api_key

    async def _check_rate(self, api_key: ApiKey) -> None:
        assert api_key.rate_per_s is not None
        now = time.time()
        second = int(now)
        count = await self._client.eval(  # type: ignore[misc]
            RATE_LUA, 1, self._keys.api_rate(api_key.digest[:16], second), 2000
        )
        if int(count) > api_key.rate_per_s:
            raise ApiError(
                429,
                f"past this API key's rate of {api_key.rate_per_s:g} requests/s",
                headers={"Retry-After": "1"},
            )
