"""Ratios against each peer, the targets of issue 16, the chat table and the files a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pibloom.bench.chat_cases import ChatFigures
from pibloom.bench.report import (
    BenchReport,
    PeerInfo,
    compute_ratios,
    compute_targets,
    peak_rss,
    render_text,
    write,
)
from pibloom.bench.soak import SoakFigures
from pibloom.bench.stats import LevelStats

MIB = 1024 * 1024


def level(peer: str, c: int, tps: float | None, ttft: float | None, cut: int = 0, rss_mib: int = 400) -> LevelStats:
    return LevelStats(
        peer=peer,
        concurrency=c,
        requests=c * 2,
        completed=c * 2 - cut,
        errors=0,
        cut=cut,
        tokens=1000,
        wall_s=10.0,
        tokens_per_s=tps,
        tokens_per_request=128.0,
        ttft_p50=ttft,
        ttft_p95=ttft * 2 if ttft else None,
        itl_p50=0.02,
        rss_peak_bytes=rss_mib * MIB,
    )


def chat() -> ChatFigures:
    return ChatFigures(
        "pibloom",
        fresh=level("fresh", 16, 160.0, 0.3),  # 10 tok/s a stream
        during=level("during", 15, 135.0, 0.3),  # 9 a stream: 0.9x
        after=level("after", 16, 136.0, 0.3),  # 8.5 a stream: 0.85x
        long_outlasted=True,
        cold_ttft_s=2.0,
        next_turn_ttft_s=0.4,  # 0.2x
        peak_rss_bytes=900 * MIB,
    )


def soak() -> SoakFigures:
    samples = [(0.0, 800 * MIB), (30.0, 950 * MIB), (60.0, 1000 * MIB), (300.0, 1100 * MIB), (600.0, 1050 * MIB)]
    return SoakFigures("pibloom", 10.0, 60.0, samples, requests=300, completed=288, lost=1, error_samples=["HTTP 500"])


@pytest.fixture
def report() -> BenchReport:
    levels = [
        level("pibloom", 1, 65.0, 0.1),
        level("unbatched", 1, 20.0, 0.2),
        level("llama-server", 1, 104.0, 0.05),
        level("openvino", 1, 56.0, 0.02),
        level("pibloom", 16, 300.0, 0.5),
        level("unbatched", 16, 25.0, 30.0, cut=10),
        level("llama-server", 16, 180.0, 1.6),
        level("openvino", 16, 402.0, 0.2),
        level("pibloom", 32, 380.0, 1.5, rss_mib=700),
        level("llama-server", 32, 150.0, 2.0),
    ]
    peers = [PeerInfo("pibloom", True, startup_s=3.0, idle_rss_bytes=480 * 1000 * 1000)]
    peers += [PeerInfo("unbatched", True), PeerInfo("llama-server", True), PeerInfo("openvino", True)]
    config = {"max_tokens": 128, "pibloom_env": {"PIBLOOM_CACHE_DIR": "/c", "PIBLOOM_DTYPE": "float32"}}
    made = BenchReport(config=config, machine={"cpu": "test"}, peers=peers, levels=levels, chat=[chat()], soak=soak())
    for info in made.peers:
        info.peak_rss_bytes = peak_rss(made, info.name)
    made.ratios = compute_ratios(made.levels)
    made.targets = compute_targets(made)
    return made


def test_ratios_against_each_peer_at_the_same_concurrency(report: BenchReport) -> None:
    got = {(r.peer, r.concurrency): r for r in report.ratios}
    assert set(got) == {
        ("unbatched", 1), ("llama-server", 1), ("openvino", 1),
        ("unbatched", 16), ("llama-server", 16), ("openvino", 16), ("llama-server", 32),
    }  # fmt: skip
    assert got[("llama-server", 16)].tokens_per_s == pytest.approx(300 / 180)
    assert got[("llama-server", 16)].ttft_p50 == pytest.approx(0.5 / 1.6)
    assert got[("unbatched", 16)].tokens_per_s == pytest.approx(12.0)
    assert got[("openvino", 16)].tokens_per_s == pytest.approx(300 / 402)


def test_no_ratios_without_the_primary_peer() -> None:
    assert compute_ratios([level("unbatched", 1, 20.0, 0.2), level("llama-server", 1, 100.0, 0.1)]) == []


def test_targets_of_issue_16(report: BenchReport) -> None:
    got = {t.what: (t.measured, t.met) for t in report.targets}
    assert got == {
        "c=1 tok/s vs llama-server (x)": (pytest.approx(65 / 104), False),
        "c=16 tok/s vs llama-server (x)": (pytest.approx(300 / 180), True),
        "c=16 tok/s vs OpenVINO GenAI (x)": (pytest.approx(300 / 402), False),  # 0.75 < 0.8
        "c=32 tok/s vs llama-server (x)": (pytest.approx(380 / 150), True),
        "c=32 tok/s vs OpenVINO GenAI (x)": (None, None),  # OpenVINO did not run c=32
        "c=16 TTFT p50 (s)": (0.5, True),  # at most 0.5: equal is met
        "next-turn TTFT / cold TTFT (x)": (pytest.approx(0.2), True),
        "short streams with a long chat running / fresh (x)": (pytest.approx(0.9), True),
        "short streams after the long chat / fresh (x)": (pytest.approx(0.85), False),
        "idle RSS (MB)": (pytest.approx(480.0), True),
        "RSS after 10 min of mixed load / after 1 min (x)": (pytest.approx(1.05), True),  # 1050 / 1000
        "requests lost in 10 min of mixed load": (1.0, False),
    }


def test_targets_not_measured_are_not_failed() -> None:
    only = BenchReport(config={}, machine={}, peers=[], levels=[level("pibloom", 1, 50.0, 0.1)])
    only.targets = compute_targets(only)
    assert [t.met for t in only.targets] == [None] * len(only.targets)


def test_peak_rss_covers_levels_chat_cases_and_the_soak(report: BenchReport) -> None:
    assert peak_rss(report, "pibloom") == 1100 * MIB  # the soak's peak beats the chat case's 900
    report.soak = None
    assert peak_rss(report, "pibloom") == 900 * MIB  # the chat case's peak beats the levels' 700
    assert peak_rss(report, "llama-server") == 400 * MIB
    assert peak_rss(report, "nobody") is None


def test_table_text(report: BenchReport) -> None:
    text = render_text(report)
    lines = text.splitlines()
    c16 = [line for line in lines if line.startswith("| 16 ")]
    assert [row.split("|")[2].strip() for row in c16] == [
        "piBLOOM", "piBLOOM unbatched", "llama.cpp llama-server", "OpenVINO GenAI int4 (in-process)",
    ]  # fmt: skip
    assert "1.67x" in c16[2] and "12.00x" in c16[1] and "—" in c16[0] and "0.75x" in c16[3]
    assert ">=30.00 s" in c16[1]  # the cut level's TTFT is a lower bound
    assert "400 MiB" in c16[0]
    assert "piBLOOM: ready in 3.0 s, idle RSS 458 MiB, peak RSS 1100 MiB" in lines
    assert "piBLOOM settings from the environment: PIBLOOM_DTYPE=float32" in lines
    assert "  c=16 tok/s vs OpenVINO GenAI (x): 0.75 (want >= 0.8) NOT met" in lines
    assert "  c=16 TTFT p50 (s): 0.50 (want <= 0.5) met" in lines
    assert "  c=32 tok/s vs OpenVINO GenAI (x): - (want >= 0.8) not measured" in lines
    assert "  idle RSS (MB): 480.00 (want <= 500) met" in lines
    assert "  peak RSS (MB): 1153 (reported)" in lines
    assert (
        "Soak (piBLOOM, 10 min of chats of 10 to 1,200 words): 288/300 requests finished, 1 lost; RSS after 60 s "
        "1000 MiB, at the end 1050 MiB (1.05x), peak 1100 MiB." in lines
    )
    assert "  e.g. HTTP 500" in lines
    assert "  RSS after 10 min of mixed load / after 1 min (x): 1.05 (want <= 1.1) met" in lines
    assert "  requests lost in 10 min of mixed load: 1.00 (want <= 0) NOT met" in lines
    chat_row = next(line for line in lines if line.startswith("| piBLOOM ") and "2.00 s" in line)
    cells = [cell.strip() for cell in chat_row.split("|")[1:-1]]
    assert cells == [
        "piBLOOM", "2.00 s", "0.40 s", "0.20x", "160.0 (10.0/stream)", "135.0 (9.0/stream)", "0.90x",
        "136.0 (8.5/stream)", "0.85x", "900 MiB",
    ]  # fmt: skip


def test_skipped_and_failed_peers_say_why() -> None:
    peers = [PeerInfo("openvino", False, "skipped: OpenVINO GenAI has no aarch64 wheels on PyPI")]
    peers.append(PeerInfo("llama-server", False, "not on PATH"))
    lines = render_text(BenchReport(config={}, machine={}, peers=peers, levels=[])).splitlines()
    assert "OpenVINO GenAI int4 (in-process): skipped: OpenVINO GenAI has no aarch64 wheels on PyPI" in lines
    assert "llama.cpp llama-server: NOT MEASURED: not on PATH" in lines


def test_a_long_chat_that_ended_early_is_flagged(report: BenchReport) -> None:
    report.chat[0].long_outlasted = False
    assert "135.0 (9.0/stream) (long one ended early)" in render_text(report)


def test_write_json_table_and_plot(report: BenchReport, tmp_path: Path) -> None:
    paths = write(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert [(x["peer"], x["concurrency"]) for x in data["levels"]][:3] == [
        ("pibloom", 1),
        ("unbatched", 1),
        ("llama-server", 1),
    ]
    assert data["levels"][0]["label"] == "piBLOOM"
    assert data["peers"][0]["peak_rss_bytes"] == 1100 * MIB
    assert data["soak"]["samples"][2] == [60.0, 1000 * MIB] and data["soak"]["lost"] == 1
    assert data["chat"][0]["cold_ttft_s"] == 2.0
    assert data["chat"][0]["during"]["concurrency"] == 15
    assert {r["peer"] for r in data["ratios"]} == {"unbatched", "llama-server", "openvino"}
    assert paths["table"].read_text().startswith("| c ")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
