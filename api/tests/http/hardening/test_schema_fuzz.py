"""schemathesis against the api's own OpenAPI schema, on a tiny-model server: no 5xx, and every
response (errors included) matches what the schema declares."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from pibloom.http.app import create_app
from pibloom.settings import Settings

from support import ServerFactory

# Bounded: each operation gets this many generated requests, schema-valid and schema-invalid mixed.
MAX_EXAMPLES = 30
# Not `positive_data_acceptance`: a schema cannot say "the served model's name" or "a token id below
# the vocabulary size", so some schema-valid requests are rightly refused with 400. Not (yet)
# `negative_data_rejection`: pydantic's lax mode accepts `1` for a boolean and `true` for an integer,
# which the schema does not allow; strict request models in protocol.py would settle it.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _operations() -> list[tuple[str, str]]:
    # Building the app loads no model; the schema does not depend on the settings.
    paths = create_app(Settings(model="unused")).openapi()["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


@pytest.fixture(scope="module")
def fuzzed(server_factory: ServerFactory) -> Iterator[tuple[OpenApiSchema, str]]:
    # Small generations keep each request fast; the limits themselves are part of what is fuzzed.
    with server_factory(max_tokens_limit=8, max_tokens_default=4, max_queue=64) as (url, _):
        yield schemathesis.openapi.from_url(f"{url}/openapi.json"), url


@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda v: str(v))
def test_operation_conforms_to_the_schema(fuzzed: tuple[OpenApiSchema, str], method: str, path: str) -> None:
    schema, url = fuzzed
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=timedelta(seconds=10),
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, checks=CHECKS, timeout=30)

    check()
