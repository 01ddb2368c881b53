"""The API's OpenAPI document as a checker: every answer a test gets is validated against
the schema the document gives for its route, method and status."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from worker.api.app import openapi_document

DOC_URI = "urn:leadsync:openapi"


@cache
def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(openapi_document())
    return doc


@cache
def _registry() -> Registry:
    return Registry().with_resource(
        DOC_URI, Resource.from_contents(document(), default_specification=_spec())
    )  # type: ignore[arg-type]


def _spec() -> Any:
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def template_of(path: str) -> str | None:
    """The document's path template that ``path`` (no query) matches."""
    for template in document()["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    return None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"].removeprefix("#/")
        found: Any = document()
        for part in ref.split("/"):
            found = found[part]
        node = found
    return node


def response_spec(path: str, method: str, status: int) -> dict[str, Any]:
    """The documented response of a route (unmatched routes: the 404/405 components)."""
    template = template_of(path)
    components = document()["components"]["responses"]
    if template is None:
        assert status == 404, f"{method} {path} is in no path of the document but got {status}"
        return _resolve(components["NotFound"])
    operations = document()["paths"][template]
    if method.lower() not in operations:
        assert status == 405, f"{method} {template} is not documented but got {status}"
        return _resolve(components["MethodNotAllowed"])
    responses = operations[method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, not documented"
    return _resolve(responses[str(status)])


def check_response(
    path: str, method: str, status: int, content_type: str, body: bytes, headers: Any
) -> None:
    """Fail unless the answer matches the document (status, content type, schema, headers)."""
    spec = response_spec(path, method, status)
    content = spec.get("content", {})
    assert content_type in content, f"{method} {path} {status}: {content_type} not documented"
    for name in spec.get("headers", {}):
        assert name in headers, f"{method} {path} {status}: header {name} missing"
    if content_type != "application/json":
        return
    schema = content[content_type]["schema"]
    wrapped = {"$ref": DOC_URI + schema["$ref"]} if "$ref" in schema else schema
    validator = Draft202012Validator(wrapped, registry=_registry())
    errors = sorted(validator.iter_errors(json.loads(body)), key=str)
    assert not errors, f"{method} {path} {status}: {errors[0].message}"
