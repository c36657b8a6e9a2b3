"""Reading prompts: JSONL items with parameters, plain text files, and bad input named by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pibloom.client.inputs import InputError, read_items


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_items_keep_their_parameters_and_meta(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "prompt": "Synopsis of Alien", "max_tokens": 64, "temperature": 0.2, "stop": ["\n"]},
            {"id": 7, "messages": [{"role": "user", "content": "hi"}], "seed": 3, "meta": {"row": 1}},
        ],
    )
    first, second = read_items(path)
    assert (first.id, first.prompt, first.is_chat) == ("a", "Synopsis of Alien", False)
    assert first.params == {"max_tokens": 64, "temperature": 0.2, "stop": ["\n"]}
    assert (second.id, second.is_chat, second.params, second.meta) == (7, True, {"seed": 3}, {"row": 1})
    assert "meta" not in second.params


def test_text_file_ids_are_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt\n\n  \nsecond {not json}\n", encoding="utf-8")
    items = read_items(path)
    assert [(item.id, item.prompt) for item in items] == [(1, "first prompt"), (4, "second {not json}")]


def test_format_can_be_forced(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text('{"id": 1, "prompt": "x"}\n', encoding="utf-8")
    assert read_items(path)[0].prompt == '{"id": 1, "prompt": "x"}'
    assert read_items(path, "jsonl")[0].prompt == "x"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "in.jsonl:2: not valid JSON"),
        ('{"prompt": "no id"}', "in.jsonl:2: id"),
        ('{"id": 2}', "exactly one of 'prompt' or 'messages'"),
        ('{"id": 2, "prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "exactly one of"),
        ('{"id": 2, "messages": []}', "messages must not be empty"),
        ('{"id": 2, "messages": [{"content": "no role"}]}', "needs a string 'role'"),
        ('{"id": 2, "prompt": "x", "stream": true}', "'stream' is not supported"),
        ('["a", "list"]', "must be a JSON object"),
        ('{"id": 1, "prompt": "again"}', "duplicate id 1"),
    ],
)
def test_bad_items_are_named_by_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "prompt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_items(path)


def test_ids_compare_as_text_so_1_and_quoted_1_collide(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "a"}, {"id": "1", "prompt": "b"}])
    with pytest.raises(InputError, match="duplicate id"):
        read_items(path)
