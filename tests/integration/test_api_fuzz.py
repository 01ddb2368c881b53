"""Schemathesis fuzzes a real ``leadsync api`` server (in a thread, on a free port, over a
real Redis) from worker/api/openapi.json: no answer is a 5xx, and every answer's status,
content type, headers and body match the document."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api_kit import api_settings
from tests.support.openapi import document
from tests.support.redis_server import free_port
from worker.api.app import start

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_dict(document())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class ServerThread:
    """The API on its own event loop in a daemon thread, with one key of both scopes."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.key = ""
        self.redis_url = redis_url
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    async def _start(self) -> None:
        from worker.api.app import KEY_STORE

        self.runner = await start(api_settings(self.redis_url), "127.0.0.1", self.port)
        store = self.runner.app[KEY_STORE]
        self.key, _ = await store.create("fuzz", ["write", "read"])

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(30), "the API did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(redis_server_url: str) -> Iterator[ServerThread]:
    with ServerThread(redis_server_url) as running:
        yield running


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzzed_requests_never_get_a_5xx_and_match_the_document(
    case: schemathesis.Case, server: ServerThread
) -> None:
    headers = {"Authorization": f"Bearer {server.key}"}
    response = case.call(base_url=f"http://127.0.0.1:{server.port}", headers=headers)
    case.validate_response(response, checks=CHECKS)
