"""Ratios against each peer, the issue's targets, the table and the files a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pibloom.bench.report import BenchReport, PeerInfo, compute_ratios, compute_targets, render_text, write
from pibloom.bench.stats import LevelStats


def level(peer: str, c: int, tps: float | None, ttft: float | None, cut: int = 0) -> LevelStats:
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
        rss_peak_bytes=400 * 1024 * 1024,
    )


@pytest.fixture
def report() -> BenchReport:
    levels = [
        level("pibloom", 1, 65.0, 0.1),
        level("unbatched", 1, 20.0, 0.2),
        level("llama-server", 1, 104.0, 0.05),
        level("pibloom", 16, 300.0, 0.8),
        level("unbatched", 16, 25.0, 30.0, cut=10),
        level("llama-server", 16, 180.0, 1.6),
        level("pibloom", 32, 380.0, 1.5),
    ]
    peers = [PeerInfo("pibloom", True, startup_s=3.0, idle_rss_bytes=300 * 1024 * 1024)]
    peers += [PeerInfo("unbatched", True), PeerInfo("llama-server", False, "not on PATH")]
    config = {"max_tokens": 128, "pibloom_env": {"PIBLOOM_CACHE_DIR": "/c", "PIBLOOM_DTYPE": "float32"}}
    made = BenchReport(config=config, machine={"cpu": "test"}, peers=peers, levels=levels)
    made.ratios = compute_ratios(made.levels)
    made.targets = compute_targets(made)
    return made


def test_ratios_against_each_peer_at_the_same_concurrency(report: BenchReport) -> None:
    got = {(r.peer, r.concurrency): r for r in report.ratios}
    assert set(got) == {("unbatched", 1), ("llama-server", 1), ("unbatched", 16), ("llama-server", 16)}
    assert got[("llama-server", 16)].tokens_per_s == pytest.approx(300 / 180)
    assert got[("llama-server", 16)].ttft_p50 == pytest.approx(0.5)
    assert got[("unbatched", 16)].tokens_per_s == pytest.approx(12.0)
    assert got[("llama-server", 1)].tokens_per_s == pytest.approx(65 / 104)


def test_no_ratios_without_the_primary_peer() -> None:
    assert compute_ratios([level("unbatched", 1, 20.0, 0.2), level("llama-server", 1, 100.0, 0.1)]) == []


def test_targets_of_the_issue(report: BenchReport) -> None:
    met = {t.what: t.met for t in report.targets}
    assert met == {
        "c=32 aggregate tok/s": False,  # 380 < 400
        "c=16 tok/s vs llama-server (x)": True,  # 1.67x
        "c=16 tok/s vs unbatched (x)": True,  # 12x
        "c=16 TTFT p50 (s)": True,  # 0.8 < 1
        "c=1 single stream tok/s": True,  # 65 >= 60
    }


def test_targets_not_measured_are_not_failed() -> None:
    only = BenchReport(config={}, machine={}, peers=[], levels=[level("pibloom", 1, 50.0, 0.1)])
    only.targets = compute_targets(only)
    assert {t.what: t.met for t in only.targets}["c=1 single stream tok/s"] is False
    assert [t.met for t in only.targets if not t.what.startswith("c=1 ")] == [None] * 4


def test_table_text(report: BenchReport) -> None:
    text = render_text(report)
    lines = text.splitlines()
    c16 = [line for line in lines if line.startswith("| 16 ")]
    assert [row.split("|")[2].strip() for row in c16] == ["piBLOOM", "piBLOOM unbatched", "llama.cpp llama-server"]
    assert "1.67x" in c16[2] and "12.00x" in c16[1] and "—" in c16[0]
    assert ">=30.00 s" in c16[1]  # the cut level's TTFT is a lower bound
    assert "400 MiB" in c16[0]
    assert "llama.cpp llama-server: NOT MEASURED: not on PATH" in lines
    assert "piBLOOM: ready in 3.0 s, idle RSS 300 MiB" in lines
    assert "piBLOOM settings from the environment: PIBLOOM_DTYPE=float32" in lines
    assert "  c=32 aggregate tok/s: 380.00 (want >= 400) NOT met" in lines
    assert "  c=16 TTFT p50 (s): 0.80 (want < 1) met" in lines


def test_write_json_table_and_plot(report: BenchReport, tmp_path: Path) -> None:
    paths = write(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert [(x["peer"], x["concurrency"]) for x in data["levels"]][:3] == [
        ("pibloom", 1),
        ("unbatched", 1),
        ("llama-server", 1),
    ]
    assert data["levels"][0]["label"] == "piBLOOM"
    assert data["peers"][2] == {
        "name": "llama-server",
        "available": False,
        "note": "not on PATH",
        "startup_s": None,
        "idle_rss_bytes": None,
    }
    assert {r["peer"] for r in data["ratios"]} == {"unbatched", "llama-server"}
    assert paths["table"].read_text().startswith("| c ")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
