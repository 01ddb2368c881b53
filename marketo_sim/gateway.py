"""A gateway that times out while Marketo still works: the ``gateway_504`` fault.

The client gets HTTP 504 and an HTML page at once; the call itself was admitted like any
other (counted against the window and the quota, holding a concurrency slot) and Marketo
applies it ``gateway_apply_delay_s`` later, in a background task :class:`Gateway` owns. Until
then the call stays in flight: its slot stays taken and the call log keeps it (with its lead
keys) among the calls in flight, so an overlapping call on one of its leads is seen. It ends
with the outcome ``gateway_504``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from marketo_sim.calllog import CallLog, CallRecord
from marketo_sim.limits import Limits

logger = logging.getLogger(__name__)

OUTCOME: Final = "gateway_504"
HTML_504: Final = (
    b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def gateway_reply() -> web.Response:
    """The gateway's answer: HTTP 504, a small HTML page."""
    return web.Response(status=504, body=HTML_504, content_type="text/html")


class Gateway:
    """The calls answered 504 that Marketo is still working on, one task each."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        self._sleep = sleep
        # id(call) -> (call, its task); the record is kept so its id is not reused meanwhile.
        self._held: dict[int, tuple[CallRecord, asyncio.Task[None]]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, call: CallRecord) -> bool:
        """Whether ``call`` was handed over (its handler must not finish it)."""
        held = self._held.get(id(call))
        return held is not None and held[0] is call

    def hold(
        self,
        call: CallRecord,
        *,
        log: CallLog,
        limits: Limits,
        delay_s: float,
        apply: Callable[[], object],
    ) -> web.Response:
        """Take over an admitted call (its slot in ``limits``, its record in ``log``): run
        ``apply`` ``delay_s`` from now, then release the slot and finish the call. Return the
        gateway's 504 reply for the client."""
        task = asyncio.get_running_loop().create_task(
            self._apply_later(call, log, limits, delay_s, apply),
            name=f"marketo-sim-gateway-{call.call_id}",
        )
        self._held[id(call)] = (call, task)
        task.add_done_callback(self._done)
        return gateway_reply()

    async def _apply_later(
        self,
        call: CallRecord,
        log: CallLog,
        limits: Limits,
        delay_s: float,
        apply: Callable[[], object],
    ) -> None:
        try:
            await self._sleep(delay_s)
            apply()
        finally:
            limits.release()
            call.outcome = OUTCOME
            log.finish(call, time.time())
            held = self._held.get(id(call))
            if held is not None and held[1] is asyncio.current_task():
                del self._held[id(call)]

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("applying a gateway-504 call failed", exc_info=task.exception())

    def cancel_all(self) -> Awaitable[object]:
        """Cancel every pending apply and forget it at once (reset, shutdown); await the
        result to wait until they are all gone."""
        tasks = [task for _, task in self._held.values()]
        self._held.clear()
        for task in tasks:
            task.cancel()
        return asyncio.gather(*tasks, return_exceptions=True)
