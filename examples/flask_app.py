"""A Flask app that enqueues lead upserts and reads their outcomes.

LEADSYNC_REDIS_URL=redis://localhost:6379/0 flask --app examples/flask_app.py run
"""

from __future__ import annotations

import os

from flask import Flask, request

from producers import InvalidLead, LeadProducer

app = Flask(__name__)
producer = LeadProducer.from_url(os.environ.get("LEADSYNC_REDIS_URL", "redis://localhost:6379/0"))


@app.post("/signup")
def signup() -> tuple[dict[str, object], int]:
    form = request.get_json(force=True)
    try:
        request_id = producer.upsert(
            email=form.get("email"), attributes={"FirstName": form.get("name", "")}
        )
    except InvalidLead as exc:  # nothing was enqueued; exc.field names the problem
        return {"error": {exc.field: exc.reason}}, 422
    return {"request_id": request_id}, 202


@app.get("/leads/<request_id>")
def lead_status(request_id: str) -> tuple[dict[str, object], int]:
    outcome = producer.outcome(request_id)  # PENDING until its batch is done
    if outcome is None:
        return {"error": "unknown request"}, 404
    return {"status": outcome.status, "lead_id": outcome.lead_id, "error": outcome.error}, 200
