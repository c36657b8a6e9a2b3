"""The soak (issue 16, point 4) against a streaming stand-in server: what it sends, the RSS samples it
keeps, and how lost requests are counted (no timing assertions beyond the samples' order)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pibloom.bench.peers import Launch, RunningServer, free_port, running
from pibloom.bench.soak import MAX_ERROR_SAMPLES, SOAK_WORDS, SoakFigures, SoakSpec, run_soak, soak_prompts

SERVER = Path(__file__).with_name("stream_server.py")
SPEC = SoakSpec(minutes=0.06, streams=3, max_tokens=3, settle_s=1.0, sample_s=0.1)  # 3.6 s


def serve(tmp_path: Path, *flags: str) -> Iterator[RunningServer]:
    port = free_port()
    launch = Launch([sys.executable, str(SERVER), str(port), "--token-delay", "0.01", *flags], {}, "/health/ready")
    with running(launch, port, tmp_path / "server.log", ready_timeout=30) as server:
        yield server


def test_prompts_span_10_to_1200_words_and_differ() -> None:
    prompts = soak_prompts()
    assert len(set(prompts)) == len(prompts) == len(SOAK_WORDS)
    # n words of notes, then a five-word request
    assert [len(p.split()) for p in prompts] == [n + 5 for n in SOAK_WORDS]
    assert (min(SOAK_WORDS), max(SOAK_WORDS)) == (10, 1200)


def test_the_soak_cycles_the_prompts_and_samples_rss_throughout(tmp_path: Path) -> None:
    for server in serve(tmp_path):
        figures = asyncio.run(run_soak(server.base_url, "fake", "pibloom", server.pid, SPEC))
        log = httpx.get(f"{server.base_url}/_log", timeout=10).json()
    assert figures.lost == 0 and figures.error_samples == []
    # a request issued as the deadline struck may be cancelled before it reaches the server
    assert figures.requests - SPEC.streams <= len(log) <= figures.requests and len(log) > len(SOAK_WORDS)
    sent = [entry["messages"][-1]["content"] for entry in log]
    assert set(sent) == set(soak_prompts())  # every length went out
    assert all(entry["max_tokens"] == SPEC.max_tokens for entry in log)
    # only the requests in flight at the deadline are unfinished, and they are cut, not lost
    assert figures.requests - SPEC.streams <= figures.completed <= figures.requests
    times = [t for t, _ in figures.samples]
    assert times == sorted(times) and times[0] < SPEC.settle_s < times[-1]
    assert figures.rss_settled is not None and figures.rss_end == figures.samples[-1][1]
    assert figures.growth == pytest.approx(figures.rss_end / figures.rss_settled)
    assert figures.rss_peak == max(rss for _, rss in figures.samples)


def test_failed_requests_count_as_lost_with_samples(tmp_path: Path) -> None:
    for server in serve(tmp_path, "--fail-words", "500"):
        figures = asyncio.run(run_soak(server.base_url, "fake", "pibloom", server.pid, SPEC))
    # the 800- and 1,200-word prompts fail, a quarter of the cycle
    assert figures.lost >= 2
    assert len(figures.error_samples) == min(figures.lost, MAX_ERROR_SAMPLES)
    assert all(e == "HTTP 500: too long" for e in figures.error_samples)
    assert figures.completed + figures.lost <= figures.requests


def test_rss_at_takes_the_last_sample_before_and_nothing_without_samples() -> None:
    figures = SoakFigures("pibloom", 10.0, 60.0, [(0.0, 100), (59.9, 300), (60.5, 400), (600.0, 330)])
    assert (figures.rss_at(60.0), figures.rss_settled, figures.rss_end, figures.rss_peak) == (300, 300, 330, 400)
    assert figures.growth == pytest.approx(1.1)
    empty = SoakFigures("pibloom", 10.0, 60.0)
    assert (empty.rss_settled, empty.rss_end, empty.rss_peak, empty.growth) == (None, None, None, None)


@pytest.mark.parametrize("bad", [{"minutes": 1.0}, {"streams": 0}, {"max_tokens": 0}, {"sample_s": 0.0}])
def test_a_soak_must_run_past_its_first_minute_with_streams_and_tokens(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="soak"):
        SoakSpec(**bad)  # type: ignore[arg-type]
