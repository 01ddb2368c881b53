"""A real ``leadsync api`` server on a free port for tests, and a client whose every
answer is checked against the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio

from producers.keys import Keys
from tests.support.openapi import check_response
from tests.support.redis_server import free_port
from worker.api.app import start
from worker.api.auth import KeyStore
from worker.settings import Settings

SHARDS = 4


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any
    raw: bytes


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    redis: redis.asyncio.Redis
    settings: Settings
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    async def key(self, name: str, *scopes: str, rate_per_s: float | None = None) -> str:
        store = KeyStore(self.redis, Keys(self.settings.key_prefix))
        key, _ = await store.create(name, list(scopes or ("write", "read")), rate_per_s)
        return key

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json_body: object = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if key is not None:
            sent.setdefault("Authorization", f"Bearer {key}")
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=sent) as r:
            raw = await r.read()
            content_type = r.content_type
            check_response(path.partition("?")[0], method, r.status, content_type, raw, r.headers)
            self.seen.add((method, path.partition("?")[0], r.status))
            body = json.loads(raw) if content_type == "application/json" else raw.decode()
            return Answer(r.status, r.headers, body, raw)

    async def backlog(self) -> int:
        keys = Keys(self.settings.key_prefix)
        return sum([await self.redis.xlen(keys.stream(s)) for s in range(SHARDS)])


def api_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "shards": SHARDS,
        "api_max_body_bytes": 64 * 1024,
        "redis_socket_timeout_s": 2.0,
        "redis_connect_timeout_s": 1.0,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def running_api(redis_url: str, **overrides: Any) -> AsyncIterator[Api]:
    settings = api_settings(redis_url, **overrides)
    port = free_port()
    runner = await start(settings, "127.0.0.1", port)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", session, client, settings)
    finally:
        await client.aclose()
        await runner.cleanup()
