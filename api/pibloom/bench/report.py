"""What a bench run produces: the table, the chat cases, the ratios against each peer, the targets of
issue 16 (each met or not, with the measured figure), JSON and a plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .chat_cases import ChatFigures
from .peers import LABELS, LLAMA, OPENVINO, PIBLOOM
from .soak import SOAK_MINUTES, SoakFigures
from .stats import LevelStats, ratio

MIB = 1024 * 1024
MB = 1000 * 1000
IDLE_RSS_TARGET_MB = 500.0
SOAK_GROWTH_TARGET = 1.1


@dataclass
class PeerInfo:
    """One peer's fate in a run: whether it ran, why not, and what it cost at rest."""

    name: str
    available: bool
    note: str = ""
    startup_s: float | None = None
    idle_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None  # the highest of its levels and chat cases


@dataclass
class Ratio:
    """piBLOOM against one peer at one concurrency (>1 throughput: piBLOOM ahead; <1 TTFT: piBLOOM sooner)."""

    concurrency: int
    peer: str
    tokens_per_s: float | None
    ttft_p50: float | None


@dataclass
class Target:
    what: str
    measured: float | None
    required: float
    at_most: bool  # the measured figure must not exceed `required` (a latency, a memory), not reach it
    met: bool | None  # None: not measured in this run


@dataclass
class BenchReport:
    config: dict[str, Any]
    machine: dict[str, Any]
    peers: list[PeerInfo]
    levels: list[LevelStats]
    ratios: list[Ratio] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    chat: list[ChatFigures] = field(default_factory=list)
    soak: SoakFigures | None = None

    def level(self, peer: str, concurrency: int) -> LevelStats | None:
        return next((s for s in self.levels if s.peer == peer and s.concurrency == concurrency), None)

    def chat_of(self, peer: str) -> ChatFigures | None:
        return next((c for c in self.chat if c.peer == peer), None)

    def peer(self, name: str) -> PeerInfo | None:
        return next((p for p in self.peers if p.name == name), None)


def peak_rss(report: BenchReport, peer: str) -> int | None:
    """The highest RSS seen of a peer's process tree, over its levels and its chat cases."""
    seen = [s.rss_peak_bytes for s in report.levels if s.peer == peer and s.rss_peak_bytes]
    chat = report.chat_of(peer)
    if chat and chat.peak_rss_bytes:
        seen.append(chat.peak_rss_bytes)
    if report.soak and report.soak.peer == peer and report.soak.rss_peak:
        seen.append(report.soak.rss_peak)
    return max(seen) if seen else None


def compute_ratios(levels: Sequence[LevelStats], primary: str = PIBLOOM) -> list[Ratio]:
    """The primary peer against every other peer measured at the same concurrency."""
    mine = {s.concurrency: s for s in levels if s.peer == primary}
    out = []
    for other in levels:
        base = mine.get(other.concurrency)
        if other.peer == primary or base is None:
            continue
        out.append(
            Ratio(
                concurrency=other.concurrency,
                peer=other.peer,
                tokens_per_s=ratio(base.tokens_per_s, other.tokens_per_s),
                ttft_p50=ratio(base.ttft_p50, other.ttft_p50),
            )
        )
    return out


def _target(what: str, measured: float | None, required: float, at_most: bool = False) -> Target:
    met = None if measured is None else (measured <= required if at_most else measured >= required)
    return Target(what, measured, required, at_most, met)


def compute_targets(report: BenchReport) -> list[Target]:
    """The figures issue 16 asks for, piBLOOM at its serving defaults (meaningful at 128 new tokens)."""

    def vs(peer: str, c: int) -> float | None:
        return next((r.tokens_per_s for r in report.ratios if r.peer == peer and r.concurrency == c), None)

    c16 = report.level(PIBLOOM, 16)
    chat = report.chat_of(PIBLOOM)
    mine = report.peer(PIBLOOM)
    idle = mine.idle_rss_bytes / MB if mine and mine.idle_rss_bytes else None
    soak = report.soak if report.soak and report.soak.samples else None
    minutes = f"{report.soak.minutes if report.soak else SOAK_MINUTES:g}"
    return [
        _target("c=1 tok/s vs llama-server (x)", vs(LLAMA, 1), 1.0),
        _target("c=16 tok/s vs llama-server (x)", vs(LLAMA, 16), 1.5),
        _target("c=16 tok/s vs OpenVINO GenAI (x)", vs(OPENVINO, 16), 0.8),
        _target("c=32 tok/s vs llama-server (x)", vs(LLAMA, 32), 2.0),
        _target("c=32 tok/s vs OpenVINO GenAI (x)", vs(OPENVINO, 32), 0.8),
        _target("c=16 TTFT p50 (s)", c16.ttft_p50 if c16 else None, 0.5, at_most=True),
        _target("next-turn TTFT / cold TTFT (x)", chat.next_turn_ratio if chat else None, 0.25, at_most=True),
        _target("short streams with a long chat running / fresh (x)", chat.during_ratio if chat else None, 0.8),
        _target("short streams after the long chat / fresh (x)", chat.after_ratio if chat else None, 0.9),
        _target("idle RSS (MB)", idle, IDLE_RSS_TARGET_MB, at_most=True),
        _target(f"RSS after {minutes} min of mixed load / after 1 min (x)", soak.growth if soak else None,
                SOAK_GROWTH_TARGET, at_most=True),
        _target(f"requests lost in {minutes} min of mixed load", float(soak.lost) if soak else None, 0, at_most=True),
    ]  # fmt: skip


def _num(value: float | None, fmt: str, suffix: str = "", bound: bool = False) -> str:
    if value is None:
        return "-"
    return (">=" if bound else "") + format(value, fmt) + suffix


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def render_table(report: BenchReport) -> str:
    """One row per peer and concurrency; the last column is piBLOOM's throughput divided by that peer's."""
    header = ["c", "peer", "req", "tok/req", "tok/s", "TTFT p50", "TTFT p95", "ITL p50", "RSS peak", "piBLOOM ÷ peer"]
    rows = []
    for s in sorted(report.levels, key=lambda s: (s.concurrency, list(LABELS).index(s.peer))):
        vs = next((r for r in report.ratios if r.peer == s.peer and r.concurrency == s.concurrency), None)
        requests = f"{s.completed}/{s.requests}" + (f" ({s.errors} err)" if s.errors else "")
        rows.append(
            [
                str(s.concurrency),
                LABELS.get(s.peer, s.peer),
                requests,
                _num(s.tokens_per_request, ".0f"),
                _num(s.tokens_per_s, ".1f"),
                _num(s.ttft_p50, ".2f", " s", s.ttft_is_lower_bound),
                _num(s.ttft_p95, ".2f", " s", s.ttft_is_lower_bound),
                _num(s.itl_p50 * 1000 if s.itl_p50 is not None else None, ".1f", " ms"),
                _num(s.rss_peak_bytes / MIB if s.rss_peak_bytes else None, ".0f", " MiB"),
                "—" if s.peer == PIBLOOM else _num(vs.tokens_per_s if vs else None, ".2f", "x"),
            ]
        )
    return _markdown(header, rows)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _stream_tps(stats: LevelStats | None) -> str:
    per = ChatFigures.per_stream(stats)
    if stats is None or per is None or stats.tokens_per_s is None:
        return "-"
    return f"{stats.tokens_per_s:.1f} ({per:.1f}/stream)"


def render_chat(report: BenchReport) -> str:
    """The chat-shaped cases, one row per peer that ran them."""
    header = [
        "peer", "cold TTFT", "next-turn TTFT", "next/cold", "short streams fresh tok/s",
        "with a long chat", "during/fresh", "right after", "after/fresh", "peak RSS",
    ]  # fmt: skip
    rows = []
    for c in sorted(report.chat, key=lambda c: list(LABELS).index(c.peer) if c.peer in LABELS else 99):
        during = _stream_tps(c.during) + (" (long one ended early)" if c.long_outlasted is False else "")
        rows.append(
            [
                LABELS.get(c.peer, c.peer),
                _secs(c.cold_ttft_s),
                _secs(c.next_turn_ttft_s),
                _x(c.next_turn_ratio),
                _stream_tps(c.fresh),
                during,
                _x(c.during_ratio),
                _stream_tps(c.after),
                _x(c.after_ratio),
                _num(c.peak_rss_bytes / MIB if c.peak_rss_bytes else None, ".0f", " MiB"),
            ]
        )
    return _markdown(header, rows)


def render_soak(figures: SoakFigures) -> str:
    """One line: the soak's requests and piBLOOM's RSS after the first minute, at the end and at its peak."""

    def mib(value: int | None) -> str:
        return _num(value / MIB if value else None, ".0f", " MiB")

    line = (
        f"Soak ({LABELS.get(figures.peer, figures.peer)}, {figures.minutes:g} min of chats of 10 to 1,200 words): "
        f"{figures.completed}/{figures.requests} requests finished, {figures.lost} lost; RSS after "
        f"{figures.settle_s:.0f} s {mib(figures.rss_settled)}, at the end {mib(figures.rss_end)} "
        f"({_x(figures.growth)}), peak {mib(figures.rss_peak)}."
    )
    return "\n".join([line, *(f"  e.g. {e}" for e in figures.error_samples)])


def _verdict(t: Target) -> str:
    state = "not measured" if t.met is None else ("met" if t.met else "NOT met")
    shown = "-" if t.measured is None else f"{t.measured:.2f}"
    return f"  {t.what}: {shown} (want {'<=' if t.at_most else '>='} {t.required:g}) {state}"


def render_text(report: BenchReport) -> str:
    """The whole console report: table, chat cases, notes on cut levels and absent peers, targets."""
    parts = [render_table(report), ""]
    if report.chat:
        parts += [
            "Chat-shaped cases: a ~2,300-token conversation cold, then its next turn (history + reply + one "
            "question); short streams on a fresh server, with one ~3,000-token conversation among them, and "
            "right after it.",
            render_chat(report),
            "",
        ]
        for c in report.chat:
            parts += [f"{LABELS.get(c.peer, c.peer)} chat case: {error}" for error in c.errors]
    if report.soak:
        parts += [render_soak(report.soak), ""]
    if any(s.cut for s in report.levels):
        parts.append(
            "req = finished/started; '>=' marks a level cut at its time limit (unfinished requests count "
            "with the time they had waited, so the TTFT shown is a lower bound)."
        )
    for s in report.levels:
        for sample in s.error_samples:
            parts.append(f"{LABELS.get(s.peer, s.peer)} c={s.concurrency}: {s.errors} failed, e.g. {sample}")
    parts.append(
        "piBLOOM runs at its serving defaults (what `pibloom serve` does with no settings: OpenMP threads spin "
        "between operations, as llama-server's do, and the team shrinks while other processes keep the cores "
        "busy); 'piBLOOM passive' has them sleep between operations with a fixed team (PIBLOOM_OMP_SPIN=false, "
        "PIBLOOM_ADAPTIVE_THREADS=false)."
    )
    inherited = {k: v for k, v in report.config.get("pibloom_env", {}).items() if k != "PIBLOOM_CACHE_DIR"}
    if inherited:
        parts.append("piBLOOM settings from the environment: " + " ".join(f"{k}={v}" for k, v in inherited.items()))
    for peer in report.peers:
        figures = [f"ready in {peer.startup_s:.1f} s"] if peer.startup_s is not None else []
        if peer.idle_rss_bytes:
            figures.append(f"idle RSS {peer.idle_rss_bytes / MIB:.0f} MiB")
        if peer.peak_rss_bytes:
            figures.append(f"peak RSS {peer.peak_rss_bytes / MIB:.0f} MiB")
        if peer.available and peer.note:
            figures.append(peer.note)
        absent = peer.note if peer.note.startswith("skipped:") else f"NOT MEASURED: {peer.note}"
        state = ", ".join(figures) if peer.available else absent
        parts.append(f"{LABELS.get(peer.name, peer.name)}: {state}")
    if report.targets:
        parts += ["", "Targets (issue 16; piBLOOM at its serving defaults; RSS of the whole process tree):"]
        parts += [_verdict(t) for t in report.targets]
        mine = report.peer(PIBLOOM)
        if mine and mine.peak_rss_bytes:
            parts.append(f"  peak RSS (MB): {mine.peak_rss_bytes / MB:.0f} (reported)")
    return "\n".join(parts)


def to_json(report: BenchReport) -> dict[str, Any]:
    data = asdict(report)
    for level in data["levels"]:
        level["label"] = LABELS.get(level["peer"], level["peer"])
    return data


def plot(report: BenchReport, path: Path) -> None:
    """Throughput, time to first token and peak memory against concurrency, one line per peer."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a file
    import matplotlib.pyplot as plt

    peers = [p for p in LABELS if any(s.peer == p for s in report.levels)]
    levels = sorted({s.concurrency for s in report.levels})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [
        (axes[0], "aggregate output tok/s", lambda s: s.tokens_per_s),
        (axes[1], "TTFT p50 (s, log)", lambda s: s.ttft_p50),
        (axes[2], "peak RSS (MiB)", lambda s: s.rss_peak_bytes / MIB if s.rss_peak_bytes else None),
    ]
    for axis, title, value in panels:
        for peer in peers:
            points = sorted((s.concurrency, value(s)) for s in report.levels if s.peer == peer)
            points = [(c, v) for c, v in points if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=LABELS[peer])
        axis.set_title(title)
        axis.set_xlabel("concurrent streams")
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_ylim(bottom=0)
    if peers:
        axes[0].legend()
    max_tokens = report.config.get("max_tokens")
    fig.suptitle(f"piBLOOM bench: {max_tokens} new tokens, greedy, streaming ({report.machine.get('cpu', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: BenchReport, out_dir: Path) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "table": out_dir / "bench.md", "plot": out_dir / "bench.png"}
    paths["json"].write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    paths["table"].write_text(render_text(report) + "\n", encoding="utf-8")
    plot(report, paths["plot"])
    return paths
