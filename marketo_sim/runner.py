"""Run the simulator in a background thread (tests, the demo) and talk to its admin API."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from marketo_sim.config import SimConfig
from marketo_sim.server import create_app

_START_TIMEOUT_S: Final = 10.0


class AdminClient:
    """A tiny synchronous client for the simulator's JSON admin API (urllib, no extra deps)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, payload: object = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - the URL is our own http:// server
            f"{self.base_url}/admin/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
            return json.loads(response.read())

    def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "calls")["calls"]
        return result

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "summary")
        return result

    def leads(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "leads")["leads"]
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "config")
        return result

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Patch SimConfig fields at runtime; raises urllib.error.HTTPError (400) when invalid."""
        patch = {
            k: list(v) if isinstance(v, set | frozenset | tuple) else v for k, v in fields.items()
        }
        result: dict[str, Any] = self._request("POST", "config", patch)
        return result

    def reset(self) -> None:
        self._request("POST", "reset", {})

    def expire_token(self) -> bool:
        """End the current REST token now (its next use gets 602); False if none was live."""
        return bool(self._request("POST", "token/expire", {})["expired"])


class SimulatorThread:
    """The simulator on 127.0.0.1 (a free port by default) in a thread with its own event loop.

    >>> with SimulatorThread(SimConfig()) as sim:  # doctest: +SKIP
    ...     sim.endpoint, sim.admin.summary()
    """

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def endpoint(self) -> str:
        """The SOAP endpoint URL, version 2_2."""
        return f"{self.base_url}/soap/mktows/2_2"

    @property
    def rest_base_url(self) -> str:
        """The REST base URL: ``<base>/rest/v1/leads.json`` and ``<base>/identity/oauth/token``."""
        return self.base_url

    @property
    def identity_url(self) -> str:
        """The Identity URL as Marketo's Admin > Web Services shows it (``<base>/identity``)."""
        return f"{self.base_url}/identity"

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.base_url)

    def start(self) -> str:
        """Start serving; return the base URL (``http://127.0.0.1:<port>``)."""
        if self._thread is not None:
            return self.base_url
        self._thread = threading.Thread(target=self._run, name="marketo-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("the Marketo simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("the Marketo simulator failed to start") from self._error
        return self.base_url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        runner = web.AppRunner(create_app(self.config), shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        self.base_url = f"http://{self.host}:{port}"

    def stop(self) -> None:
        """Stop serving and join the thread (hanging calls are released)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
