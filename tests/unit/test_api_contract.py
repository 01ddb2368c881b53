"""worker/api/openapi.json and the app agree: the same routes and methods, the schemas
of the producers' lead and outcome, bearer auth on every /v1 route but the document's
own, and one error body everywhere. (The answers of a run through every route are
validated against the document in tests/integration/test_api_http.py.)"""

from __future__ import annotations

import dataclasses
from typing import Any

from jsonschema import Draft202012Validator

from producers import Outcome
from producers._core import LEAD_FIELDS
from tests.support.openapi import document
from worker.api.app import MAX_RECORDS, make_app
from worker.settings import Settings

PUBLIC = {"/v1/openapi.json", "/healthz", "/readyz", "/metrics"}


def app_routes() -> set[tuple[str, str]]:
    app = make_app(Settings())
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document()["paths"].items()
        for method, operation in item.items()
    ]


def test_the_app_serves_exactly_the_documented_routes() -> None:
    assert app_routes() == {(method, path) for method, path, _ in operations()}


def test_the_document_is_openapi_3_1_with_a_bearer_scheme() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert doc["security"] == [{"bearer": []}]


def test_every_v1_route_needs_the_key_and_documents_the_auth_and_redis_errors() -> None:
    for method, path, operation in operations():
        if path in PUBLIC:
            assert operation["security"] == [], path
            continue
        assert "security" not in operation, f"{path} inherits the bearer requirement"
        for status in ("401", "403", "429", "503", "500"):
            assert status in operation["responses"], (method, path, status)
        for status in ("429", "503"):
            assert "Retry-After" in operation["responses"][status]["headers"]
        if method == "POST":
            for status in ("400", "409", "413", "415", "422"):
                assert status in operation["responses"], (method, path, status)
            assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])


def test_every_error_answer_is_the_one_error_body() -> None:
    responses = document()["components"]["responses"]
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            if "$ref" in response:
                response = responses[response["$ref"].rsplit("/", 1)[1]]
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Errors"}, (method, path, status)


def test_every_schema_is_valid_json_schema_2020_12() -> None:
    for schema in document()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_the_schemas_follow_the_producers_lead_and_outcome() -> None:
    schemas = document()["components"]["schemas"]
    assert set(schemas["LeadUpsert"]["properties"]) == LEAD_FIELDS
    outcome_fields = [f.name for f in dataclasses.fields(Outcome)]
    assert list(schemas["Outcome"]["properties"]) == outcome_fields
    assert schemas["Outcome"]["required"] == outcome_fields
    assert schemas["Batch"]["properties"]["records"]["maxItems"] == MAX_RECORDS
