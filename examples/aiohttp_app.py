"""An asyncio web app (aiohttp) that enqueues lead upserts and reads their outcomes.

LEADSYNC_REDIS_URL=redis://localhost:6379/0 python examples/aiohttp_app.py
"""

from __future__ import annotations

import os

from aiohttp import web

from producers import AsyncLeadProducer, InvalidLead

PRODUCER = web.AppKey("producer", AsyncLeadProducer)


async def signup(request: web.Request) -> web.Response:
    form = await request.json()
    try:
        request_id = await request.app[PRODUCER].upsert(
            email=form.get("email"), attributes={"FirstName": form.get("name", "")}
        )
    except InvalidLead as exc:  # nothing was enqueued; exc.field names the problem
        return web.json_response({"error": {exc.field: exc.reason}}, status=422)
    return web.json_response({"request_id": request_id}, status=202)


async def lead_status(request: web.Request) -> web.Response:
    outcome = await request.app[PRODUCER].outcome(request.match_info["request_id"])
    if outcome is None:
        return web.json_response({"error": "unknown request"}, status=404)
    return web.json_response(
        {"status": outcome.status.value, "lead_id": outcome.lead_id, "error": outcome.error}
    )


def create_app(redis_url: str) -> web.Application:
    app = web.Application()
    app[PRODUCER] = AsyncLeadProducer.from_url(redis_url)

    async def close(app: web.Application) -> None:
        await app[PRODUCER].close()

    app.on_cleanup.append(close)
    app.add_routes([web.post("/signup", signup), web.get("/leads/{request_id}", lead_status)])
    return app


if __name__ == "__main__":
    web.run_app(create_app(os.environ.get("LEADSYNC_REDIS_URL", "redis://localhost:6379/0")))
