"""The `pibloom bench` options: bad input is refused before any server starts."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pibloom.bench.cli import parse_levels, parse_peers
from pibloom.cli import main


def test_parse_levels() -> None:
    assert parse_levels("16, 1,4,16") == [1, 4, 16]
    for bad in ("", "1,x", "0,4", "-2"):
        with pytest.raises(click.BadParameter):
            parse_levels(bad)


def test_parse_peers_keeps_the_canonical_order() -> None:
    assert parse_peers("openvino,llama-server, PIBLOOM") == ["pibloom", "llama-server", "openvino"]
    assert parse_peers("pibloom-passive,pibloom") == ["pibloom", "pibloom-passive"]
    with pytest.raises(click.BadParameter, match=r"unknown peer.*piboom.*from pibloom, pibloom-passive, unbatched"):
        parse_peers("piboom")
    with pytest.raises(click.BadParameter):
        parse_peers(" , ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "1,zero"], "comma-separated integers"),
        (["--peers", "vllm"], "unknown peer(s) vllm"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--requests-per-level", "0"], "--requests-per-level"),
        (["--api", "embeddings"], "--api"),
        (["--soak-minutes", "0.5"], "--soak-minutes"),  # not past its first minute, the reference
    ],
)
def test_bad_options_exit_2(args: list[str], message: str, tmp_path) -> None:
    result = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_an_absent_llama_server_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PIBLOOM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["bench", "--peers", "llama-server", "--no-build-llama", "--concurrency", "1", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "llama.cpp llama-server: NOT MEASURED: llama-server is not on PATH nor in" in result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["peers"][0]["available"] is False
    assert data["levels"] == []
    assert data["config"]["concurrency"] == [1]
    assert data["config"]["soak"]["minutes"] == 10 and data["soak"] is None  # the soak is piBLOOM's alone
    assert (out / "bench.png").is_file() and (out / "bench.md").is_file()


def test_an_openvino_peer_that_cannot_run_is_skipped_with_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLOOM_CACHE_DIR", str(tmp_path / "cache"))  # no converted model there
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--peers", "openvino", "--concurrency", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "OpenVINO GenAI int4 (in-process): skipped: " in result.output
    assert "c=16 tok/s vs OpenVINO GenAI (x): - (want >= 0.8) not measured" in result.output
    assert json.loads((out / "bench.json").read_text())["peers"][0]["available"] is False
