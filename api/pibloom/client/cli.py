"""`pibloom batch`: the command line over run_batch, a results file, a progress bar and a summary."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from .batch import BatchReport, run_batch
from .inputs import InputError, is_openai_batch_file, read_items
from .inventory import DEFAULT_PORT, InventoryError, normalize_url, read_servers
from .models import Row, id_key
from .options import BatchOptions
from .output import OutputFileError, ResultWriter
from .progress import Progress
from .validate import OutputError, load_schema

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class BadInput(click.ClickException):
    """Input, server list, schema or results file cannot be used: nothing was sent."""

    exit_code = 2


def _params(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _servers(servers: tuple[str, ...], servers_file: Path | None, group: str | None, port: int) -> list[str]:
    urls = [normalize_url(url, port) for url in servers]
    if servers_file is not None:
        urls += read_servers(servers_file, group=group, default_port=port)
    elif group is not None:
        raise click.UsageError("--group needs --servers-file")
    if not urls:
        raise click.UsageError("give at least one --server URL or a --servers-file")
    return list(dict.fromkeys(urls))


@click.command("batch")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Results file (JSONL). Re-running with the same file skips the ids it holds.",
)
@click.option(
    "-s",
    "--server",
    "servers",
    multiple=True,
    envvar="PIBLOOM_BATCH_SERVERS",
    help="Server base URL or host[:port]; repeat for a cluster.",
)
@click.option(
    "--servers-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Servers from a file: one per line, or an Ansible inventory (INI or YAML).",
)
@click.option("--group", help="Inventory group to use (default: all hosts).")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="API port for hosts given without one.")
@click.option(
    "--input-format",
    type=click.Choice(["auto", "jsonl", "text"]),
    default="auto",
    show_default=True,
    help="auto: .jsonl/.ndjson/.json are JSONL, anything else one prompt a line.",
)
@click.option(
    "--score",
    is_flag=True,
    help="Score each text (log-likelihood, perplexity) with piBLOOM's /v1/score instead of generating.",
)
@click.option(
    "--context",
    help="With --score: text each one is conditioned on but not scored (an item's own 'context' wins).",
)
@click.option("--model", help="Model to request (default: the first one each server lists).")
@click.option("--api-key", envvar="PIBLOOM_API_KEY", help="Bearer token for the servers.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Default max_tokens for items without one.")
@click.option("--temperature", type=click.FloatRange(min=0), help="Default temperature.")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Default request parameter (JSON value), e.g. -p top_p=0.9 -p 'stop=[\"\\n\"]'.",
)
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight in total.")
@click.option(
    "--per-server",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Requests in flight per server.",
)
@click.option(
    "--strategy",
    type=click.Choice(["least-outstanding", "round-robin"]),
    default="least-outstanding",
    show_default=True,
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds per request before it is retried elsewhere.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Retries per item on timeouts, connection errors, 429 and 5xx.",
)
@click.option("--json", "json_mode", is_flag=True, help="Outputs must be JSON (fences and prose are stripped).")
@click.option(
    "--json-schema",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Outputs must be JSON valid against this JSON Schema.",
)
@click.option(
    "--max-schema-retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries, each with the next seed, when an output is not (valid) JSON.",
)
@click.option("--health-interval", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Seconds to wait for a ready server before the remaining items fail.",
)
@click.option(
    "--retry-failed/--skip-failed",
    default=True,
    show_default=True,
    help="On resume, run again the items that failed last time, or keep their failure.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary as JSON to this file.",
)
@click.pass_context
def batch_command(
    ctx: click.Context,
    input_path: str,
    output: Path,
    servers: tuple[str, ...],
    servers_file: Path | None,
    group: str | None,
    port: int,
    input_format: str,
    score: bool,
    context: str | None,
    model: str | None,
    api_key: str | None,
    max_tokens: int | None,
    temperature: float | None,
    params: tuple[str, ...],
    concurrency: int | None,
    per_server: int,
    strategy: str,
    timeout: float,
    max_retries: int,
    json_mode: bool,
    json_schema: Path | None,
    max_schema_retries: int,
    health_interval: float,
    wait: float,
    retry_failed: bool,
    progress: bool | None,
    summary_json: Path | None,
) -> None:
    """Run every prompt (or, with --score, every text) in INPUT on a cluster of servers; results to --output.

    INPUT is JSONL (`{"id": ..., "prompt": "..."}` or `{"id": ..., "messages": [...]}` plus any request
    parameters) or a text file with one prompt a line (the id is the line number). Servers are
    piBLOOM replicas or any OpenAI-compatible server.

    INPUT may also be an OpenAI Batch file (`{"custom_id", "method", "url", "body"}` a line, as
    `vllm run-batch` reads); results are then written in OpenAI's Batch output format.

    With --json-schema, the schema is sent as `response_format` to servers that enforce it; servers
    that refuse it (400) get validate-and-retry instead. The summary reports the first-try valid rate.

    With --score, each item is a text to score instead (`{"id": ..., "text": "...", "context"?: "..."}`
    or one text a line), sent to piBLOOM's /v1/score; each result row holds its tokens, logprob,
    mean_logprob and perplexity.
    """
    if score:
        generation = {
            "--max-tokens": max_tokens is not None,
            "--temperature": temperature is not None,
            "--param": bool(params),
            "--json": json_mode,
            "--json-schema": json_schema is not None,
        }
        given = [name for name, used in generation.items() if used]
        if given:
            raise click.UsageError(f"--score does not take generation options: {', '.join(given)}")
    elif context is not None:
        raise click.UsageError("--context needs --score")
    defaults = _params(params)
    if max_tokens is not None:
        defaults.setdefault("max_tokens", max_tokens)
    if temperature is not None:
        defaults.setdefault("temperature", temperature)
    try:
        urls = _servers(servers, servers_file, group, port)
        items = read_items(input_path, input_format, score=score)  # type: ignore[arg-type]
        # Loaded (and checked) before any request, so a wrong schema fails at once.
        schema = load_schema(json_schema).schema if json_schema is not None else None
        options = BatchOptions(
            model=model,
            api_key=api_key,
            per_server=per_server,
            concurrency=concurrency,
            strategy=strategy,  # type: ignore[arg-type]
            timeout=timeout,
            max_retries=max_retries,
            json_mode=json_mode,
            json_schema=schema,
            max_schema_retries=max_schema_retries,
            defaults=defaults,
            health_interval=health_interval,
            wait=wait,
            score=score,
            context=context,
        )
        writer = ResultWriter(
            output, json_mode=options.wants_json, openai_batch=not score and is_openai_batch_file(input_path)
        )
        skip = writer.resume(retry_failed=retry_failed)
    except (InputError, InventoryError, OutputError, OutputFileError) as exc:
        raise BadInput(str(exc)) from exc
    except OSError as exc:
        raise BadInput(str(exc)) from exc

    skipped = sum(1 for item in items if id_key(item.id) in skip)
    bar = Progress(len(items), skipped=skipped, enabled=progress)

    def on_result(row: Row) -> None:
        writer.write(row)
        bar.update(row)

    report: BatchReport | None = None
    try:
        with writer:
            report = asyncio.run(run_batch(items, urls, options, skip_ids=skip, on_result=on_result))
    except KeyboardInterrupt:
        bar.close()
        click.echo(
            f"\ninterrupted: {writer.written} results written to {output}; run the same command again to resume.",
            err=True,
        )
        ctx.exit(EXIT_INTERRUPTED)
    finally:
        bar.close()
    assert report is not None
    click.echo(report.summary.format(), err=True)
    if summary_json is not None:
        summary_json.write_text(json.dumps(report.summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    ctx.exit(EXIT_FAILED if report.summary.failed else 0)
