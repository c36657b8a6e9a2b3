"""One bench run: every peer in turn, every concurrency level, into a `BenchReport`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from ..settings import Settings
from .chat_cases import ChatCaseSpec, ChatFigures, run_chat_cases
from .llamacpp import LlamaBuildError, ensure_llama_server
from .load import Api, LoadSpec, model_id, run_level, warm_up
from .openvino_peer import OpenVinoRequest, run_openvino_peer
from .peers import (
    LABELS,
    LLAMA,
    OPENVINO,
    PIBLOOM,
    PIBLOOM_PASSIVE,
    UNBATCHED,
    UNSET_FOR_PIBLOOM,
    Launch,
    RssSampler,
    RunningServer,
    ServerStartError,
    cpu_count,
    free_port,
    llama_launch,
    llama_supports,
    pibloom_launch,
    running,
)
from .prompts import WARM_PROMPTS
from .report import BenchReport, PeerInfo, compute_ratios, compute_targets, peak_rss
from .soak import SoakFigures, SoakSpec, run_soak
from .stats import LevelStats, summarize

Echo = Callable[[str], None]
# Enough requests per level for stable medians, few enough that the default run takes ~10 minutes. One
# stream gets eight: with four (~7 s a peer) its figure moved by a fifth between runs on a shared host.
DEFAULT_REQUESTS = {1: 8, 4: 8, 16: 32, 32: 64}
WARM_TOKENS = 8


def default_requests(concurrency: int) -> int:
    return DEFAULT_REQUESTS.get(concurrency, max(4, 2 * concurrency))


@dataclass
class BenchConfig:
    concurrency: list[int]
    max_tokens: int
    peers: list[str]
    out_dir: Path
    requests: dict[int, int] = field(default_factory=dict)
    level_timeout: float = 180.0
    # The unbatched server serves one request at a time: a level is cut here rather than waiting it out.
    unbatched_timeout: float = 40.0
    build_llama: bool = True
    api: Api = "chat"
    ready_timeout: float = 600.0
    chat: ChatCaseSpec | None = field(default_factory=ChatCaseSpec)  # None: no chat-shaped cases
    soak: SoakSpec | None = field(default_factory=SoakSpec)  # None: no soak (piBLOOM's memory over time)
    # Seconds the OpenVINO runner may take for all its levels (it has no per-level cut).
    openvino_timeout: float = 1800.0

    def requests_at(self, concurrency: int) -> int:
        return self.requests.get(concurrency, default_requests(concurrency))


def inherited_settings() -> dict[str, str]:
    """The PIBLOOM_* variables the piBLOOM peers inherit (the ones the bench sets itself left out)."""
    own = set(pibloom_launch(0, True, passive=True).env) | set(UNSET_FOR_PIBLOOM)
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("PIBLOOM_") and k not in own}


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
    }


def _measure(server: RunningServer, peer: str, model: str, spec: LoadSpec, echo: Echo) -> LevelStats:
    # Warm the level's batch size first (buffers, kernels, graphs sized by it), unmeasured; the
    # unbatched server only ever runs one sequence, so one request warms it.
    requests = 1 if peer == UNBATCHED else spec.concurrency
    warm = replace(spec, requests=requests, max_tokens=WARM_TOKENS, prompts=WARM_PROMPTS)
    asyncio.run(run_level(server.base_url, model, warm))
    with RssSampler(server.pid) as rss:
        results = asyncio.run(run_level(server.base_url, model, spec))
    stats = summarize(peer, spec.concurrency, results, rss.peak)
    tps = f"{stats.tokens_per_s:.1f}" if stats.tokens_per_s else "-"
    ttft = f"{stats.ttft_p50:.2f}" if stats.ttft_p50 is not None else "-"
    cut = f", cut at {spec.deadline_s:.0f} s" if stats.cut else ""
    errors = f", {stats.errors} errors" if stats.errors else ""
    echo(
        f"  {LABELS[peer]} c={spec.concurrency}: {stats.completed}/{stats.requests} requests, "
        f"{tps} tok/s, TTFT p50 {ttft} s{cut}{errors}"
    )
    return stats


def _start(server: RunningServer, config: BenchConfig) -> tuple[str, str | None]:
    """The served model id, and an error if a short warm-up request fails."""
    model = asyncio.run(model_id(server.base_url))
    warm = asyncio.run(warm_up(server.base_url, model, config.api))
    return model, warm.error


def _chat(server: RunningServer, peer: str, config: BenchConfig, echo: Echo) -> ChatFigures:
    """The chat-shaped cases on a server started for them alone (case 1 wants a fresh one)."""
    assert config.chat is not None
    model = asyncio.run(model_id(server.base_url))
    echo(f"  {LABELS[peer]}: chat-shaped cases ({config.chat.streams} short streams, long conversations)")
    with RssSampler(server.pid) as rss:
        figures = asyncio.run(run_chat_cases(server.base_url, model, peer, config.chat))
    figures.peak_rss_bytes = rss.peak
    shown = {
        "next turn / cold TTFT": figures.next_turn_ratio,
        "during / fresh": figures.during_ratio,
        "after / fresh": figures.after_ratio,
    }
    echo("  " + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}x'}" for k, v in shown.items()))
    for error in figures.errors:
        echo(f"  chat case error: {error}")
    return figures


def _fresh_pibloom(config: BenchConfig, case: str) -> contextlib.AbstractContextManager[RunningServer]:
    """`pibloom serve` started for one case alone (its log `pibloom-<case>.log`), so that the case
    sees a fresh server: the chat cases' first, and the soak's first minute."""
    port = free_port()
    log = config.out_dir / "logs" / f"{PIBLOOM}-{case}.log"
    return running(pibloom_launch(port, batching=True), port, log, config.ready_timeout)


def _pibloom_chat(config: BenchConfig, echo: Echo) -> ChatFigures:
    try:
        with _fresh_pibloom(config, "chat") as server:
            return _chat(server, PIBLOOM, config, echo)
    except ServerStartError as exc:
        return ChatFigures(PIBLOOM, errors=[str(exc)])


def _pibloom_soak(config: BenchConfig, echo: Echo) -> SoakFigures:
    assert config.soak is not None
    spec = config.soak
    echo(f"  {LABELS[PIBLOOM]}: soak, {spec.streams} chats of 10 to 1,200 words at a time for {spec.minutes:g} min")
    try:
        with _fresh_pibloom(config, "soak") as server:
            model = asyncio.run(model_id(server.base_url))
            figures = asyncio.run(run_soak(server.base_url, model, PIBLOOM, server.pid, spec))
    except ServerStartError as exc:
        return SoakFigures(PIBLOOM, spec.minutes, spec.settle_s, error_samples=[str(exc)])
    growth = "-" if figures.growth is None else f"{figures.growth:.2f}x"
    echo(f"  {figures.completed}/{figures.requests} requests, {figures.lost} lost; RSS end / first minute {growth}")
    return figures


def _pibloom_peer(peer: str, config: BenchConfig, echo: Echo) -> tuple[PeerInfo, list[LevelStats]]:
    port = free_port()
    launch = pibloom_launch(port, batching=peer != UNBATCHED, passive=peer == PIBLOOM_PASSIVE)
    deadline = config.unbatched_timeout if peer == UNBATCHED else config.level_timeout
    echo(f"starting {LABELS[peer]} (log: {config.out_dir / 'logs' / f'{peer}.log'})")
    levels = []
    try:
        with running(launch, port, config.out_dir / "logs" / f"{peer}.log", config.ready_timeout) as server:
            model, error = _start(server, config)
            if error:
                return PeerInfo(peer, False, f"warm-up request failed: {error}"), []
            info = PeerInfo(peer, True, startup_s=server.startup_s, idle_rss_bytes=server.rss())
            for c in config.concurrency:
                spec = LoadSpec(c, config.requests_at(c), config.max_tokens, deadline, config.api)
                levels.append(_measure(server, peer, model, spec, echo))
    except ServerStartError as exc:
        return PeerInfo(peer, False, str(exc)), levels
    return info, levels


def _llama_peer(
    binary: Path | str, config: BenchConfig, settings: Settings, echo: Echo
) -> tuple[PeerInfo, list[LevelStats]]:
    if isinstance(binary, str):  # why it could not be found or built
        return PeerInfo(LLAMA, False, binary), []
    from ..engine.loader import fetch_embedded  # imports torch: only when this peer runs

    gguf = fetch_embedded(settings)
    unified = llama_supports(binary, "--kv-unified")
    echo(f"starting {LABELS[LLAMA]} per level ({binary}, {gguf.name})")
    info = PeerInfo(LLAMA, True, note=str(binary))
    levels = []
    for c in config.concurrency:
        port = free_port()
        launch: Launch = llama_launch(binary, gguf, port, c, config.max_tokens, unified_kv=unified)
        log = config.out_dir / "logs" / f"{LLAMA}-c{c}.log"
        try:
            with running(launch, port, log, config.ready_timeout) as server:
                model, error = _start(server, config)
                if error:
                    return PeerInfo(LLAMA, False, f"warm-up request failed: {error}"), levels
                if info.startup_s is None:
                    info.startup_s, info.idle_rss_bytes = server.startup_s, server.rss()
                spec = LoadSpec(c, config.requests_at(c), config.max_tokens, config.level_timeout, config.api)
                levels.append(_measure(server, LLAMA, model, spec, echo))
        except ServerStartError as exc:
            return PeerInfo(LLAMA, False, str(exc)), levels
    return info, levels


def _llama_chat(binary: Path, config: BenchConfig, settings: Settings, echo: Echo) -> ChatFigures:
    from ..engine.loader import fetch_embedded  # imports torch: only when this peer runs

    assert config.chat is not None
    port = free_port()
    unified = llama_supports(binary, "--kv-unified")
    # Room for the longest conversation and its answer besides the short streams' slots.
    long_context = 4096 + config.chat.long_max_tokens
    launch = llama_launch(
        binary, fetch_embedded(settings), port, config.chat.streams, config.chat.max_tokens, unified, long_context
    )
    try:
        with running(launch, port, config.out_dir / "logs" / f"{LLAMA}-chat.log", config.ready_timeout) as server:
            return _chat(server, LLAMA, config, echo)
    except ServerStartError as exc:
        return ChatFigures(LLAMA, errors=[str(exc)])


def run_bench(config: BenchConfig, settings: Settings, echo: Echo = print) -> BenchReport:
    """Run every configured peer at every level and compute the ratios and targets."""
    report = BenchReport(
        config={
            "concurrency": config.concurrency,
            "max_tokens": config.max_tokens,
            "peers": config.peers,
            "requests": {c: config.requests_at(c) for c in config.concurrency},
            "level_timeout_s": config.level_timeout,
            "unbatched_timeout_s": config.unbatched_timeout,
            "api": config.api,
            "pibloom_env": inherited_settings(),
            "chat": asdict(config.chat) if config.chat else None,
            "soak": asdict(config.soak) if config.soak else None,
        },
        machine=machine(),
        peers=[],
        levels=[],
    )
    load, cores = report.machine["load_average_1m"], report.machine["cores"]
    if isinstance(load, float) and isinstance(cores, int) and load > cores / 2:
        echo(f"warning: the machine is busy (load {load:.1f} on {cores} cores): the figures will be low")
    # Find or build llama-server before anything runs, so that a long compile never overlaps a measurement.
    llama: Path | str = ""
    if LLAMA in config.peers:
        try:
            llama = ensure_llama_server(settings.cache_dir, build=config.build_llama, echo=echo)
        except LlamaBuildError as exc:
            llama = str(exc)
    openvino_chat: ChatFigures | None = None  # its runner measures the chat cases with its levels
    for peer in config.peers:
        if peer == LLAMA:
            info, levels = _llama_peer(llama, config, settings, echo)
        elif peer == OPENVINO:
            info, levels, openvino_chat = run_openvino_peer(settings.cache_dir, openvino_request(config), echo)
        else:
            info, levels = _pibloom_peer(peer, config, echo)
        if not info.available:
            echo(f"{LABELS[peer]} {'' if peer == OPENVINO else 'NOT MEASURED: '}{info.note}")
        report.peers.append(info)
        report.levels.extend(levels)
    # The chat cases and the soak (a quarter of an hour together) run after every peer's levels: the
    # host's speed drifts by several percent over minutes, and a level's ratio should compare figures
    # taken close together (one stream read 0.98x with the soak between the two, 1.28x back to back).
    measured = {info.name for info in report.peers if info.available}
    if config.chat and PIBLOOM in measured:
        report.chat.append(_pibloom_chat(config, echo))
    if config.chat and LLAMA in measured and isinstance(llama, Path):
        report.chat.append(_llama_chat(llama, config, settings, echo))
    if openvino_chat is not None:
        report.chat.append(openvino_chat)
    if config.soak and PIBLOOM in measured:
        report.soak = _pibloom_soak(config, echo)
    for info in report.peers:
        info.peak_rss_bytes = peak_rss(report, info.name)
    report.ratios = compute_ratios(report.levels)
    report.targets = compute_targets(report)
    return report


def openvino_request(config: BenchConfig) -> OpenVinoRequest:
    return OpenVinoRequest(
        concurrency=config.concurrency,
        requests={c: config.requests_at(c) for c in config.concurrency},
        max_tokens=config.max_tokens,
        chat=config.chat is not None,
        timeout_s=config.openvino_timeout,
        work_dir=config.out_dir,
    )
