"""Structured output: a `response_format` (or a tool call's shape) checked and turned into the grammar
the engine enforces at every decode step, before anything is generated.

Every problem is a 400 naming it: a schema that is not valid JSON Schema, one larger than the bound
below, or one that uses a keyword the grammar library cannot enforce (never silently ignored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..engine.constraints import grammar_error
from .errors import bad_request

if TYPE_CHECKING:
    import llguidance

# The largest schema accepted (its JSON text): larger ones are refused before any work is done.
MAX_SCHEMA_BYTES = 32_768

# Compact JSON (no free whitespace): fewer tokens, and a weak model cannot wander into endless blanks.
_JSON_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False}


@dataclass(frozen=True)
class OutputFormat:
    """What the reply must be: any JSON object, or JSON valid against `schema`."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


def check_schema(schema: Any, *, param: str) -> dict[str, Any]:
    """A JSON Schema within the size bound and valid against its metaschema, or a 400 naming why."""
    if not isinstance(schema, dict):
        raise bad_request("the schema must be a JSON object", param=param, code="invalid_schema")
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise bad_request(
            f"the schema is {size} bytes of JSON; at most {MAX_SCHEMA_BYTES} are accepted",
            param=param,
            code="schema_too_large",
        )
    import jsonschema  # at the first schema: a server that never gets one never loads it (4 MB, measured)

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise bad_request(
            f"the schema is not valid JSON Schema: {exc.message}" + (f" (at '{where}')" if where else ""),
            param=param,
            code="invalid_schema",
        ) from exc
    return schema


def schema_grammar(schema: dict[str, Any], tokenizer: Any, vocab_size: int, *, param: str) -> str:
    """The llguidance grammar for `schema`; a keyword it cannot enforce is a 400 naming it."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    except ValueError as exc:
        raise bad_request(f"the schema cannot be used: {exc}", param=param, code="invalid_schema") from exc
    error = grammar_error(grammar, tokenizer, vocab_size)
    if error:
        raise bad_request(
            f"the schema uses a feature structured output cannot enforce: {_readable(error)}",
            param=param,
            code="unsupported_schema",
        )
    return grammar


def format_grammar(output: OutputFormat, tokenizer: Any, vocab_size: int) -> str:
    if output.kind == "json_object":
        return schema_grammar({"type": "object"}, tokenizer, vocab_size, param="response_format")
    param = "response_format.json_schema.schema"
    schema = check_schema(output.schema, param=param)
    return schema_grammar(schema, tokenizer, vocab_size, param=param)


def _readable(error: str) -> str:
    # Multi-line messages (a regex parse error) carry a caret diagram between the cause and the detail.
    lines = [line.strip() for line in error.strip().splitlines() if line.strip() and set(line.strip()) != {"^"}]
    return " ".join(lines) if lines else error
