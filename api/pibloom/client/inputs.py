"""Reading the items: JSONL or a plain text file with one prompt (or, with `--score`, one text) a line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from . import openai_batch
from .models import BatchItem, Item, ScoreItem, id_key

InputFormat = Literal["auto", "jsonl", "text"]
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


class InputError(ValueError):
    """The input file is malformed; the message names the file and line."""


def detect_format(path: str | Path) -> Literal["jsonl", "text"]:
    return "jsonl" if Path(path).suffix.lower() in JSONL_SUFFIXES else "text"


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    if str(path) == "-":
        yield from enumerate(sys.stdin, start=1)
        return
    with Path(path).open(encoding="utf-8") as handle:
        yield from enumerate(handle, start=1)


def _validation_message(error: ValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key (a score item takes id, text, context and meta)"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_item(data: Any, kind: type[BatchItem] | type[ScoreItem] = BatchItem) -> Item:
    """A BatchItem (default) or a ScoreItem from a dict; InputError says what is wrong."""
    if isinstance(data, kind):
        return data
    if not isinstance(data, dict):
        raise InputError(f"an item must be a JSON object, got {type(data).__name__}")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise InputError(_validation_message(exc)) from exc


def unique(items: Iterable[Item], *, source: str = "input") -> list[Item]:
    """The items as a list; a repeated id is an error, since results are keyed by id."""
    seen: set[str] = set()
    result = []
    for item in items:
        key = id_key(item.id)
        if key in seen:
            raise InputError(f"{source}: duplicate id {item.id!r}")
        seen.add(key)
        result.append(item)
    return result


def _batch_request(data: dict[str, Any]) -> Item:
    try:
        return openai_batch.to_item(data)
    except ValidationError as exc:
        raise InputError(_validation_message(exc)) from exc
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def is_openai_batch_file(path: str | Path) -> bool:
    """Whether the file's first item is an OpenAI Batch request line (results are then written in
    OpenAI's Batch output format)."""
    if str(path) == "-" or detect_format(path) != "jsonl":
        return False
    for _, raw in _lines(path):
        if raw.strip():
            try:
                return openai_batch.is_batch_request(json.loads(raw))
            except json.JSONDecodeError:
                return False
    return False


def read_items(path: str | Path, fmt: InputFormat = "auto", *, score: bool = False) -> list[Item]:
    """All items of a JSONL or text file, in file order.

    JSONL: one object a line with `id` and `prompt` or `messages` (with `score`: `id`, `text` and an
    optional `context`). Text: every non-blank line is a prompt (or a text to score) whose id is its
    line number, so a re-run over the same file resumes correctly.
    """
    fmt = detect_format(path) if fmt == "auto" else fmt
    kind = ScoreItem if score else BatchItem
    field = "text" if score else "prompt"
    items: list[Item] = []
    for number, raw in _lines(path):
        line = raw.strip()
        if not line:
            continue
        if fmt == "text":
            items.append(kind.model_validate({"id": number, field: raw.rstrip("\r\n")}))
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        try:
            if not score and openai_batch.is_batch_request(data):
                items.append(_batch_request(data))
            else:
                items.append(parse_item(data, kind))
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc}") from exc
    return unique(items, source=str(path))
