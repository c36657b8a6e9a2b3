"""The OpenVINO GenAI peer: the runner's JSON, its closed loop (on a stand-in pipeline), skipping with a reason."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pibloom.bench import openvino_peer, openvino_runner, openvino_setup
from pibloom.bench.openvino_peer import OpenVinoRequest, run_openvino_peer, runner_spec
from pibloom.bench.openvino_setup import (
    OpenVinoUnavailable,
    RunnerOutputError,
    converted_model,
    parse_runner_output,
    supported_machine,
)

GOOD = {
    "levels": [
        {"concurrency": 1, "requests": 4, "tokens": 512, "wall_s": 8.0, "ttft_p50": 0.02},
        {"concurrency": 16, "requests": 32, "tokens": 4096, "wall_s": 10.0, "ttft_p50": None},
    ],
    "cold_ttft_s": 0.9,
    "next_turn_ttft_s": 0.1,
    "idle_rss_bytes": 300_000_000,
    "peak_rss_bytes": 600_000_000,
    "versions": {"openvino_genai": "2026.4.1.0"},
}


def test_parse_takes_the_last_json_line_after_library_noise() -> None:
    out = "[ INFO ] loading\n{not the result}\n" + json.dumps(GOOD) + "\n"
    result = parse_runner_output(out)
    assert [(lv.concurrency, lv.tokens_per_s) for lv in result.levels] == [(1, 64.0), (16, 409.6)]
    assert result.levels[0].ttft_p50 == 0.02 and result.levels[1].ttft_p50 is None
    assert (result.cold_ttft_s, result.next_turn_ttft_s) == (0.9, 0.1)
    assert (result.idle_rss_bytes, result.peak_rss_bytes) == (300_000_000, 600_000_000)
    assert result.versions == {"openvino_genai": "2026.4.1.0"}


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("Segmentation fault\n", "no JSON line"),
        ('{"levels": [\n', "does not parse"),
        ('{"error": "ModuleNotFoundError: no openvino_genai"}\n', "the runner failed: ModuleNotFoundError"),
        ('{"levels": [{"concurrency": 1}]}\n', "lacks a field"),
        ('{"cold_ttft_s": 1.0}\n', "lacks a field"),
    ],
)
def test_parse_refuses_what_is_not_a_result(out: str, message: str) -> None:
    with pytest.raises(RunnerOutputError, match=message):
        parse_runner_output(out)


def test_a_zero_wall_time_gives_no_rate() -> None:
    data = {"levels": [{"concurrency": 1, "requests": 1, "tokens": 0, "wall_s": 0.0}]}
    assert parse_runner_output(json.dumps(data)).levels[0].tokens_per_s is None


def test_only_x86_has_wheels() -> None:
    assert supported_machine("x86_64") is None
    assert supported_machine("aarch64") == "OpenVINO GenAI has no aarch64 wheels on PyPI"


def test_the_converted_model_must_exist(tmp_path: Path) -> None:
    with pytest.raises(OpenVinoUnavailable, match="run `pibloom model fetch`"):
        converted_model(tmp_path)
    folder = tmp_path / "converted" / "SmolLM2-135M-Instruct.Q4_1-abc"
    folder.mkdir(parents=True)
    with pytest.raises(OpenVinoUnavailable):  # a folder without config.json is no model
        converted_model(tmp_path)
    (folder / "config.json").write_text("{}")
    assert converted_model(tmp_path) == folder
    newer = tmp_path / "converted" / "SmolLM2-135M-Instruct.Q4_1-000"  # sorts first, converted last
    newer.mkdir()
    (newer / "config.json").write_text("{}")
    os.utime(folder, (1, 1))
    assert converted_model(tmp_path) == newer


def request(tmp_path: Path, chat: bool = True) -> OpenVinoRequest:
    return OpenVinoRequest([1, 16], {1: 4, 16: 32}, 128, chat, 60.0, tmp_path / "out")


def test_runner_spec_carries_the_levels_and_the_chat_case(tmp_path: Path) -> None:
    spec = json.loads(runner_spec(tmp_path / "model", request(tmp_path)).to_json())
    assert spec["levels"] == [{"concurrency": 1, "requests": 4}, {"concurrency": 16, "requests": 32}]
    assert spec["max_tokens"] == 128 and spec["threads"] >= 1 and len(spec["prompts"]) == 16
    history, follow = spec["chat_history"], spec["chat_follow_up"]
    assert history[-1]["role"] == "user"
    assert follow[: len(history)] == history  # the next turn extends the history: a prefix to reuse
    assert [m["role"] for m in follow[len(history) :]] == ["assistant", "user"]
    assert spec["chat_warm"][0] != history[0]  # the warm-up shares no prefix with the measured chat
    assert json.loads(runner_spec(tmp_path, request(tmp_path, chat=False)).to_json())["chat_history"] == []


def test_a_peer_that_cannot_be_prepared_is_skipped_with_why(tmp_path: Path) -> None:
    def refuse(cache: Path, echo: Any) -> tuple[Path, Path]:
        raise OpenVinoUnavailable("installing OpenVINO GenAI failed (log: x): no network")

    info, levels, chat = run_openvino_peer(tmp_path, request(tmp_path), lambda _: None, refuse)
    assert not info.available
    assert info.note == "skipped: installing OpenVINO GenAI failed (log: x): no network"
    assert levels == [] and chat is None


def test_the_real_runner_without_openvino_reports_its_error_as_json(tmp_path: Path) -> None:
    # This environment has no openvino_genai: the runner must still answer with one JSON line.
    here = (Path(sys.executable), tmp_path)
    info, _, _ = run_openvino_peer(tmp_path, request(tmp_path), lambda _: None, lambda c, e: here)
    assert not info.available
    assert info.note.startswith("skipped: the runner failed: ModuleNotFoundError")
    assert (tmp_path / "out" / "openvino-spec.json").is_file()


def test_a_runner_result_becomes_levels_and_a_chat_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake_runner.py"
    fake.write_text(f"import json, sys\nprint('noise')\nprint(json.dumps({GOOD!r}))\n")
    monkeypatch.setattr(openvino_peer, "runner_command", lambda python, spec: [str(python), str(fake), str(spec)])
    info, levels, chat = run_openvino_peer(
        tmp_path, request(tmp_path), lambda _: None, lambda c, e: (Path(sys.executable), tmp_path)
    )
    assert info.available and info.note == "openvino_genai 2026.4.1.0" and info.idle_rss_bytes == 300_000_000
    assert [(s.peer, s.concurrency, s.tokens_per_s, s.completed) for s in levels] == [
        ("openvino", 1, 64.0, 4),
        ("openvino", 16, 409.6, 32),
    ]
    assert levels[0].rss_peak_bytes is not None and levels[0].rss_peak_bytes > 0  # sampled from outside
    assert chat is not None and chat.next_turn_ratio == pytest.approx(0.1 / 0.9)


def test_a_runner_that_hangs_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "slow.py"
    fake.write_text("import time\ntime.sleep(30)\n")
    monkeypatch.setattr(openvino_peer, "runner_command", lambda python, spec: [str(python), str(fake)])
    slow = OpenVinoRequest([1], {1: 1}, 8, False, 1.0, tmp_path / "out")
    info, _, _ = run_openvino_peer(tmp_path, slow, lambda _: None, lambda c, e: (Path(sys.executable), tmp_path))
    assert info.note.startswith("skipped: the runner took over 1 s")


def test_install_skips_when_the_stamp_matches(tmp_path: Path) -> None:
    python = openvino_setup.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (python.parent.parent / "pibloom-bench-packages").write_text("\n".join(openvino_setup.PACKAGES) + "\n")
    assert openvino_setup.ensure_venv(tmp_path, lambda _: (_ for _ in ()).throw(AssertionError("installed"))) == python


# A stand-in for openvino_genai: each request yields one token per step until it has `max_new_tokens`.
@dataclass
class FakeHandle:
    want: int
    made: int = 0
    unread: int = 0

    def can_read(self) -> bool:
        return self.unread > 0

    def read(self) -> dict[int, Any]:
        out = SimpleNamespace(generated_ids=[7] * self.unread)
        self.unread = 0
        return {0: out}

    def get_status(self) -> str:
        return "running" if self.made < self.want else "finished"


@dataclass
class FakePipe:
    handles: list[FakeHandle] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def add_request(self, rid: int, prompt: str, config: Any) -> FakeHandle:
        handle = FakeHandle(config.max_new_tokens)
        self.handles.append(handle)
        return handle

    def step(self) -> None:
        live = [h for h in self.handles if h.made < h.want]
        self.batch_sizes.append(len(live))
        for handle in live:
            handle.made += 1
            handle.unread += 1


FAKE_OV = SimpleNamespace(
    GenerationConfig=lambda: SimpleNamespace(max_new_tokens=0, do_sample=True),
    GenerationStatus=SimpleNamespace(RUNNING="running"),
)


def test_the_runner_keeps_concurrency_requests_in_flight() -> None:
    pipe = FakePipe()
    level = openvino_runner._level(pipe, FAKE_OV, ["a", "b"], concurrency=3, requests=7, max_tokens=5)
    assert level["requests"] == 7 and level["tokens"] == 35 and level["concurrency"] == 3
    assert max(pipe.batch_sizes) == 3  # never more than the concurrency at once
    assert pipe.batch_sizes[:5] == [3] * 5  # full until the queue runs dry
    assert level["ttft_p50"] is not None and level["wall_s"] >= level["ttft_p50"]
