"""Structured output: find the JSON in a model's answer and check it against a JSON Schema.

Small models wrap JSON in ``` fences or in prose ("Sure! Here it is: {...} Hope this helps"), so the
answer is searched: the whole text, then each fenced block, then each `{` or `[` from which a
complete JSON value decodes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jsonschema import exceptions as schema_exceptions
from jsonschema import validators
from jsonschema.protocols import Validator

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\r?\n?(.*?)```", re.DOTALL)
_MAX_STARTS = 50  # bound the scan on long prose with many stray brackets


class OutputError(ValueError):
    """The output is not (valid) JSON; the message says why, for the result row."""


def _candidates(text: str) -> list[str]:
    found = [text.strip()]
    found += [block.strip() for block in _FENCE.findall(text)]
    # An unterminated fence (the model ran out of tokens after the JSON) still holds the value.
    opening = re.search(r"```[ \t]*[\w+-]*[ \t]*\r?\n", text)
    if opening and text.count("```") % 2 == 1:
        found.append(text[opening.end() :].strip())
    return [candidate for candidate in found if candidate]


def extract_json(text: str) -> Any:
    """The first JSON value in `text`; raises OutputError when there is none."""
    decoder = json.JSONDecoder()
    for candidate in _candidates(text):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
    starts = [match.start() for match in re.finditer(r"[\[{]", text)][:_MAX_STARTS]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        return value
    preview = text.strip()[:80]
    raise OutputError(f"no JSON value found in the output: {preview!r}")


def load_schema(path: str | Path) -> Validator:
    """A validator for the JSON Schema in `path` (its `$schema` picks the draft; default: latest)."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot read schema {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise OutputError(f"schema {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    return make_validator(schema)


def make_validator(schema: Any) -> Validator:
    if not isinstance(schema, (dict, bool)):
        raise OutputError("a JSON Schema must be an object or a boolean")
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except schema_exceptions.SchemaError as exc:
        raise OutputError(f"invalid JSON Schema: {exc.message}") from exc
    return cls(schema)


def parse_output(text: str, validator: Validator | None) -> Any:
    """The JSON in `text`, validated when a validator is given; raises OutputError otherwise."""
    value = extract_json(text)
    if validator is not None:
        error = schema_exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(root)"
            raise OutputError(f"schema violation at {where}: {error.message}")
    return value
