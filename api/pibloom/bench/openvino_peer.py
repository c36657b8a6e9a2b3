"""The OpenVINO GenAI peer in a bench run: prepare it (openvino_setup.py), run the runner once for every
level (and the next-turn chat case), and turn its JSON into the bench's figures."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .chat_cases import ChatFigures
from .conversations import LONG_HISTORY_WORDS, LONGEST_WORDS, conversation, next_turn
from .openvino_setup import (
    OpenVinoResult,
    OpenVinoUnavailable,
    RunnerOutputError,
    RunnerSpec,
    parse_runner_output,
    prepare,
    runner_command,
)
from .peers import OPENVINO, RssSampler, cpu_count
from .prompts import PROMPTS
from .report import PeerInfo
from .stats import LevelStats

Echo = Callable[[str], None]
# The runner generates no reply to send back, so the next turn carries a fixed one of similar length.
CANNED_REPLY = (
    "Those notes describe a place that changes a little every day: the same things appear again and again, "
    "each time in a slightly different state, and the numbers suggest someone counting them with care."
)


@dataclass(frozen=True)
class OpenVinoRequest:
    concurrency: list[int]
    requests: dict[int, int]
    max_tokens: int
    chat: bool
    timeout_s: float
    work_dir: Path


def runner_spec(model_dir: Path, request: OpenVinoRequest) -> RunnerSpec:
    history = conversation(LONG_HISTORY_WORDS, seed=1) if request.chat else []
    return RunnerSpec(
        model_dir=str(model_dir),
        concurrency=request.concurrency,
        requests=request.requests,
        max_tokens=request.max_tokens,
        prompts=list(PROMPTS),
        threads=cpu_count(),
        chat_history=history,
        chat_follow_up=next_turn(history, CANNED_REPLY) if history else [],
        # As on the HTTP peers, where the ~3,000-token chat runs before the cold turn.
        chat_warm=conversation(LONGEST_WORDS, seed=2) if request.chat else [],
    )


def to_levels(result: OpenVinoResult, peak_rss: int | None) -> list[LevelStats]:
    return [
        LevelStats(
            peer=OPENVINO,
            concurrency=lv.concurrency,
            requests=lv.requests,
            completed=lv.requests,
            errors=0,
            cut=0,
            tokens=lv.tokens,
            wall_s=lv.wall_s,
            tokens_per_s=lv.tokens_per_s,
            tokens_per_request=lv.tokens / lv.requests if lv.requests else None,
            ttft_p50=lv.ttft_p50,
            ttft_p95=None,
            itl_p50=None,
            rss_peak_bytes=peak_rss,
        )
        for lv in result.levels
    ]


def run_runner(command: list[str], log: Path, timeout_s: float) -> tuple[str, int | None]:
    """Run the runner, sampling its RSS; its stdout and peak RSS. Raises OpenVinoUnavailable on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        with RssSampler(process.pid) as rss:
            try:
                out, _ = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                raise OpenVinoUnavailable(f"the runner took over {timeout_s:.0f} s (log: {log})") from None
    if process.returncode != 0:
        raise OpenVinoUnavailable(f"the runner exited with {process.returncode} (log: {log})")
    return out.decode("utf-8", errors="replace"), rss.peak


def run_openvino_peer(
    cache_dir: Path,
    request: OpenVinoRequest,
    echo: Echo = print,
    setup: Callable[[Path, Echo], tuple[Path, Path]] = prepare,
) -> tuple[PeerInfo, list[LevelStats], ChatFigures | None]:
    """The peer's figures, or a PeerInfo saying `skipped: <why>` and nothing else."""
    try:
        python, model_dir = setup(cache_dir, echo)
        spec_path = request.work_dir / "openvino-spec.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(runner_spec(model_dir, request).to_json(), encoding="utf-8")
        echo(f"running OpenVINO GenAI in-process ({model_dir.name})")
        out, peak = run_runner(
            runner_command(python, spec_path), request.work_dir / "logs" / "openvino.log", request.timeout_s
        )
        result = parse_runner_output(out)
    except (OpenVinoUnavailable, RunnerOutputError) as exc:
        return PeerInfo(OPENVINO, False, f"skipped: {exc}"), [], None
    levels = to_levels(result, peak)
    for lv in levels:
        echo(f"  OpenVINO c={lv.concurrency}: {lv.tokens_per_s or 0:.1f} tok/s")
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    info = PeerInfo(OPENVINO, True, note=versions, idle_rss_bytes=result.idle_rss_bytes)
    chat = None
    if request.chat:
        chat = ChatFigures(
            OPENVINO,
            cold_ttft_s=result.cold_ttft_s,
            next_turn_ttft_s=result.next_turn_ttft_s,
            peak_rss_bytes=peak,
            errors=[] if result.cold_ttft_s is not None else ["the runner measured no chat case"],
        )
    return info, levels, chat
