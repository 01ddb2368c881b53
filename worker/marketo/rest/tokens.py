"""One OAuth token for the whole cluster, shared through Redis.

A token is fetched (client credentials, at ``<identity>/oauth/token``) by one process at a
time under a Redis lock, stored with a TTL that ends :data:`EXPIRY_SAFETY_S` before
Marketo's expiry, and reused by every worker. Marketo answers an identity call made before
its token expires with the same token and its remaining life, so an early refresh would
only chain ever shorter lives (60 s, 30, 15, ... one call each): leadsync refreshes at the
end instead, and when the answer is a token about to expire (or ``expires_in: 0``) it
waits that token out and fetches once more, for a new one. On 601/602 the caller drops the token it
used (compare-and-delete: a newer one fetched meanwhile stays) and the next call fetches
once. The client secret travels in the POST body, never in a URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlencode

import redis.asyncio
from pydantic import SecretStr

from producers.contract import Keys, text
from worker.errors import AuthError, OutcomeUnknown, ProtocolError, TransientError
from worker.lua import COMPARE_AND_DELETE_LUA
from worker.marketo.rest.codec import load_json
from worker.transport import Transport

#: A shared token is dropped this long before Marketo says it expires (a call that takes
#: it just before then still reaches Marketo in time, or gets 602 and fetches anew).
EXPIRY_SAFETY_S: Final = 5.0
#: A fetch holds the lock at most this long; others wait for its token meanwhile.
LOCK_TTL_S: Final = 15.0
#: How often a waiting process looks for the token another one is fetching.
POLL_S: Final = 0.05


class TokenSource:
    """The cluster's REST access token."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        transport: Transport,
        *,
        identity_url: str,
        client_id: str,
        client_secret: SecretStr,
        key_prefix: str,
        on_fetch: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._redis = redis_client
        self._transport = transport
        self._url = identity_url.rstrip("/") + "/oauth/token"
        self._client_id = client_id
        self._secret = client_secret
        # Tokens belong to a LaunchPoint service: keyed by client id (hashed: no secrets
        # or ids in key names).
        digest = hashlib.blake2b(client_id.encode(), digest_size=8).hexdigest()
        self.key = Keys(key_prefix).rest_token(digest)
        self._lock_key = self.key + ":lock"
        self._on_fetch = on_fetch
        self._clock = clock
        self._sleep = sleep
        self._drop = redis_client.register_script(COMPARE_AND_DELETE_LUA)

    async def token(self) -> str:
        """The shared token: from Redis, or fetched by this process under the lock, or
        waited for while another process fetches it."""
        deadline = self._clock() + LOCK_TTL_S + 1
        while True:
            stored = await self._redis.get(self.key)
            if stored is not None:
                return text(stored)
            owner = secrets.token_hex(8)
            if await self._redis.set(self._lock_key, owner, nx=True, px=int(LOCK_TTL_S * 1000)):
                try:
                    # Another process may have stored a token between our look and the
                    # lock: look again under the lock, so the cluster fetches once.
                    stored = await self._redis.get(self.key)
                    return text(stored) if stored is not None else await self._fetch()
                finally:
                    await self._drop(keys=[self._lock_key], args=[owner])
            if self._clock() > deadline:
                raise TransientError("no REST token: another worker's identity call is stuck")
            await asyncio.sleep(POLL_S)

    async def invalidate(self, token: str) -> None:
        """Drop ``token`` (Marketo said 601 or 602), unless a newer one replaced it."""
        await self._drop(keys=[self.key], args=[token])

    async def _fetch(self) -> str:
        token, expires_in = await self._identity()
        if expires_in <= EXPIRY_SAFETY_S:
            # The old token at its end (or one already expired): wait it out, ask again.
            # expires_in is whole seconds, cut down: wait one more.
            await self._sleep(max(expires_in, 0.0) + 1.0)
            token, expires_in = await self._identity()
            if expires_in <= EXPIRY_SAFETY_S:
                raise TransientError(
                    f"identity answered a token that expires in {expires_in:g} s twice"
                )
        await self._redis.set(self.key, token, px=int((expires_in - EXPIRY_SAFETY_S) * 1000))
        return token

    async def _identity(self) -> tuple[str, float]:
        self._on_fetch()
        return await fetch_token(
            self._transport, self._url, client_id=self._client_id, client_secret=self._secret
        )


async def fetch_token(
    transport: Transport, token_url: str, *, client_id: str, client_secret: SecretStr
) -> tuple[str, float]:
    """One client-credentials call to the identity endpoint, not shared: the token and
    its remaining life in seconds (``leadsync doctor`` checks the credentials with it)."""
    form = urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret.get_secret_value(),
        }
    ).encode()
    try:
        reply = await transport.post(
            token_url,
            form,
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
    except OutcomeUnknown as exc:
        # An identity call changes nothing in Marketo: asking again is safe at once.
        raise TransientError(f"identity call failed: {exc.detail}") from exc
    if reply.status in (400, 401, 403):
        raise AuthError(
            f"identity refused the client credentials (HTTP {reply.status}): check "
            "LEADSYNC_MARKETO_CLIENT_ID and LEADSYNC_MARKETO_CLIENT_SECRET"
        )
    if reply.status != 200:
        raise TransientError(f"identity answered HTTP {reply.status}")
    try:
        document = load_json(reply.body, "identity")
    except ProtocolError as exc:
        raise TransientError(exc.detail) from None
    token = document.get("access_token") if isinstance(document, dict) else None
    expires_in = document.get("expires_in") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
        raise TransientError("identity answered without access_token and expires_in")
    return token, float(expires_in)
