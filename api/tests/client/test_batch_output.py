"""The results file: flushed line by line, resumable, and repaired after a torn last line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pibloom.client.models import ErrorInfo, ResultRow, Usage
from pibloom.client.output import OutputFileError, ResultWriter


def ok_row(item_id: object) -> str:
    return json.dumps({"id": item_id, "output": "x", "error": None})


def failed_row(item_id: object) -> str:
    return json.dumps({"id": item_id, "output": None, "error": {"type": "http", "message": "m", "status": 400}})


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_row_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with ResultWriter(path) as writer:
        writer.write(ResultRow(id=1, output="a", attempts=1, usage=Usage(completion_tokens=2)))
        # Read while the writer is still open: the line must already be complete.
        assert lines(path) == [
            {
                "id": 1,
                "output": "a",
                "server": None,
                "attempts": 1,
                "latency_s": None,
                "usage": {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 0},
                "error": None,
            }
        ]
        writer.write(ResultRow(id="b", error=ErrorInfo(type="timeout", message="slow"), meta={"k": 1}))
        assert lines(path)[1]["error"] == {"type": "timeout", "message": "slow", "status": None}
        assert lines(path)[1]["meta"] == {"k": 1}


def test_json_mode_rows_carry_the_parsed_value(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with ResultWriter(path, json_mode=True) as writer:
        writer.write(ResultRow(id=1, output='{"a": 1}', parsed={"a": 1}))
    assert lines(path)[0]["json"] == {"a": 1}


def test_resume_skips_done_ids_and_drops_failures_and_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(f"{ok_row(1)}\n{failed_row(2)}\n{ok_row('c')}\n" + '{"id": 4, "outp', encoding="utf-8")
    skip = ResultWriter(path).resume()
    assert skip == {"1", "c"}
    assert [row["id"] for row in lines(path)] == [1, "c"]  # the failed and torn rows are gone
    with ResultWriter(path) as writer:
        writer.write(ResultRow(id=2, output="retried"))
    assert [row["id"] for row in lines(path)] == [1, "c", 2]


def test_resume_can_keep_failures_as_final(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    content = f"{ok_row(1)}\n{failed_row(2)}\n"
    path.write_text(content, encoding="utf-8")
    assert ResultWriter(path).resume(retry_failed=False) == {"1", "2"}
    assert path.read_text(encoding="utf-8") == content


def test_complete_last_line_without_newline_is_kept_and_terminated(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(f"{ok_row(1)}\n{ok_row(2)}", encoding="utf-8")
    assert ResultWriter(path).resume() == {"1", "2"}
    assert path.read_text(encoding="utf-8").endswith("\n")
    with ResultWriter(path) as writer:
        writer.write(ResultRow(id=3, output="z"))
    assert [row["id"] for row in lines(path)] == [1, 2, 3]


def test_a_broken_line_in_the_middle_stops_the_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(f"{ok_row(1)}\nGARBAGE\n{ok_row(2)}\n", encoding="utf-8")
    with pytest.raises(OutputFileError, match=r"out.jsonl:2 is not valid JSON"):
        ResultWriter(path).resume()
    path.write_text('{"no_id": 1}\n', encoding="utf-8")
    with pytest.raises(OutputFileError, match="no 'id'"):
        ResultWriter(path).resume()


def test_missing_file_resumes_nothing(tmp_path: Path) -> None:
    assert ResultWriter(tmp_path / "new.jsonl").resume() == set()
