"""The one error answer of the HTTP API: ``{"errors": [{"field": ..., "message": ...}]}``,
with the status that names what the caller should do. Never a stack trace."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aiohttp import web

#: What an error names when no one field is at fault.
NO_FIELD = None


class ApiError(Exception):
    """An answer other than success: raised anywhere in a handler, turned into the JSON
    error body by the app's middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = NO_FIELD,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, str | None]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errors = list(errors) if errors else [{"field": field, "message": message}]
        self.headers = dict(headers or {})


def error_body(field: str | None, message: str) -> dict[str, list[dict[str, str | None]]]:
    return {"errors": [{"field": field, "message": message}]}


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(exc: ApiError) -> web.Response:
    return json_response({"errors": exc.errors}, exc.status, exc.headers)
