"""`pibloom bench`: piBLOOM against its peers at several concurrencies; prints a table, writes JSON and a plot."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..settings import Settings
from .chat_cases import ChatCaseSpec
from .load import PATHS
from .peers import DEFAULT_PEERS, OPTIONAL_PEERS, PEERS, PIBLOOM, stop_servers_on_sigterm
from .report import render_text, write
from .session import BenchConfig, run_bench
from .soak import SOAK_MINUTES, SoakSpec
from .structured import render as render_structured
from .structured import run_structured
from .structured import write as write_structured

QUICK_LEVELS = "1,4"
QUICK_MAX_TOKENS = 32
QUICK_CHAT_STREAMS = 4


def parse_levels(text: str) -> list[int]:
    """`"1,4,16"` -> [1, 4, 16] (sorted, distinct, each at least 1)."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from exc
    if not levels or any(level < 1 for level in levels):
        raise click.BadParameter(f"each concurrency must be at least 1, got {text!r}")
    return sorted(set(levels))


def parse_peers(text: str) -> list[str]:
    """`"pibloom,llama-server"` -> the named peers, in the canonical order; unknown names are an error."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names:
        raise click.BadParameter(f"unknown peer(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PEERS)}")
    return [peer for peer in PEERS if peer in names]


@click.command("bench")
@click.option("--concurrency", default=None, help="Comma-separated concurrent streams per level.  [default: 1,4,16,32]")
@click.option(
    "--max-tokens", type=click.IntRange(1, 4096), default=None, help="New tokens per request.  [default: 128]"
)
@click.option(
    "--peers", default=",".join(DEFAULT_PEERS), show_default=True,
    help=f"Which peers to measure, of {', '.join(PEERS)}.",
)  # fmt: skip
@click.option(
    "--requests-per-level",
    type=click.IntRange(1),
    default=None,
    help="Requests at every level (default: 8, 8, 32, 64 for 1, 4, 16, 32 streams; 2x the streams otherwise).",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
    show_default=True, help="Folder for bench.json, bench.md, bench.png and the servers' logs.",
)  # fmt: skip
@click.option("--quick", is_flag=True, help="A short smoke run: 1 and 4 streams, 32 tokens, few requests.")
@click.option("--level-timeout", type=click.FloatRange(1), default=None, help="Seconds before a level is cut.")
@click.option("--unbatched-timeout", type=click.FloatRange(1), default=None, help="Same, for the one-at-a-time server.")
@click.option(
    "--build-llama/--no-build-llama",
    default=None,
    help="Build llama-server into the cache when it is not on PATH (default: yes, except with --quick).",
)
@click.option("--api", type=click.Choice(list(PATHS)), default="chat", show_default=True, help="Endpoint to load.")
@click.option(
    "--structured",
    is_flag=True,
    help="Instead: structured output's cost, piBLOOM alone at 16 streams with none, one and all rows constrained.",
)
@click.option(
    "--chat/--no-chat",
    "chat_cases",
    default=True,
    show_default=True,
    help="Run the chat-shaped cases (long conversations, next turn) for the peers that serve chat.",
)
@click.option(
    "--chat-streams", type=click.IntRange(2), default=None,
    help="Short streams in the chat cases.  [default: 16; 4 with --quick]",
)  # fmt: skip
@click.option(
    "--soak-minutes", type=click.FloatRange(0), default=None,
    help="Minutes of mixed chat load on a fresh piBLOOM, for its memory over time; 0 skips it.  "
    "[default: 10; 0 with --quick]",
)  # fmt: skip
def bench_command(
    concurrency: str | None,
    max_tokens: int | None,
    peers: str,
    requests_per_level: int | None,
    out_dir: Path,
    quick: bool,
    level_timeout: float | None,
    unbatched_timeout: float | None,
    build_llama: bool | None,
    api: str,
    structured: bool,
    chat_cases: bool,
    chat_streams: int | None,
    soak_minutes: float | None,
) -> None:
    """Compare piBLOOM (at its serving defaults), piBLOOM without batching, llama.cpp's llama-server
    and OpenVINO GenAI (x86 only, in-process) on the embedded model.

    Every peer gets the same prompts, greedy, streaming; the table shows aggregate output tokens/s,
    time to first token, inter-token latency, resident memory and piBLOOM's ratio to each peer; the
    chat cases show prefix reuse and long conversations; the targets of issue 16 end the report.
    """
    stop_servers_on_sigterm()
    if structured:
        streams = parse_levels(concurrency or "16")[-1]
        cases = run_structured(
            out_dir, streams=streams, max_tokens=max_tokens or (16 if quick else 64),
            requests_per_stream=1 if quick else 2, echo=lambda line: click.echo(line, err=True),
        )  # fmt: skip
        click.echo(render_structured(cases))
        paths = write_structured(cases, out_dir)
        click.echo(f"\nwrote {paths['json']} and {paths['table']}")
        if any(c.errors for c in cases):
            sys.exit(1)
        return
    levels = parse_levels(concurrency or (QUICK_LEVELS if quick else "1,4,16,32"))
    config = BenchConfig(
        concurrency=levels,
        max_tokens=max_tokens or (QUICK_MAX_TOKENS if quick else 128),
        peers=parse_peers(peers),
        out_dir=out_dir,
        api="completions" if api == "completions" else "chat",
        build_llama=(not quick) if build_llama is None else build_llama,
    )
    if not chat_cases:
        config.chat = None
    else:
        streams = chat_streams or (QUICK_CHAT_STREAMS if quick else 16)
        config.chat = ChatCaseSpec(streams=streams, max_tokens=config.max_tokens)
    minutes = soak_minutes if soak_minutes is not None else (0.0 if quick else SOAK_MINUTES)
    try:
        config.soak = SoakSpec(minutes=minutes, max_tokens=config.max_tokens) if minutes else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--soak-minutes") from exc
    if requests_per_level is not None:
        config.requests = dict.fromkeys(levels, requests_per_level)
    elif quick:
        config.requests = {c: max(2, c) for c in levels}
    if quick:
        config.level_timeout, config.unbatched_timeout = 60.0, 20.0
    config.level_timeout = level_timeout or config.level_timeout
    config.unbatched_timeout = unbatched_timeout or config.unbatched_timeout

    report = run_bench(config, Settings(), echo=lambda line: click.echo(line, err=True))
    click.echo(render_text(report))
    paths = write(report, out_dir)
    click.echo(f"\nwrote {paths['json']}, {paths['table']} and {paths['plot']}")
    failed = [p for p in report.peers if p.name not in OPTIONAL_PEERS and not p.available]
    soak_failed = report.soak is not None and (report.soak.lost > 0 or not report.soak.samples)
    if failed or soak_failed or any(s.errors for s in report.levels if s.peer == PIBLOOM):
        sys.exit(1)
