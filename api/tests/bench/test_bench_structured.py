"""`pibloom bench --structured`: the table, its verdict against the 0.8x target, and the files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pibloom.bench.cli import bench_command
from pibloom.bench.structured import CaseStats, render, write


def cases(all_ratio: float) -> list[CaseStats]:
    return [
        CaseStats("none", 0, 32, 0, 2048, 150.0, 1.0),
        CaseStats("one", 1, 32, 0, 2048, 148.0, 0.987),
        CaseStats("all", 16, 32, 0, 2048, 150.0 * all_ratio, all_ratio),
    ]


def test_render_states_whether_the_target_is_met() -> None:
    assert "target: all rows constrained >= 0.8x unconstrained: met" in render(cases(0.85))
    table = render(cases(0.5))
    assert "NOT met" in table and "| all (16) | 32 | 2048 | 75.0 | 0.50 |" in table


def test_write_gives_json_and_markdown(tmp_path: Path) -> None:
    paths = write(cases(0.9), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["target"] == 0.8 and [c["case"] for c in data["cases"]] == ["none", "one", "all"]
    assert "| none (0) |" in paths["table"].read_text()


def test_structured_flag_is_offered() -> None:
    result = CliRunner().invoke(bench_command, ["--help"])
    assert "--structured" in result.output
