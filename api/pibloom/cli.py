"""The `pibloom` command: serve | chat | batch | bench | model fetch | settings."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import click

from . import __version__
from .engine import openmp
from .settings import Settings


class _LazyGroup(click.Group):
    """Commands that live in their own packages are imported when they run, not at every start: the
    batch client's and the bench's imports (httpx, rich, jsonschema, psutil...) would otherwise sit in
    the gunicorn master of `pibloom serve` and in every worker forked from it (~20 MB each)."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "batch": ("pibloom.client.cli", "batch_command"),
        "bench": ("pibloom.bench.cli", "bench_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> Any:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, attribute = self.lazy[cmd_name]
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as exc:  # the bench needs the dev extras (psutil, matplotlib)
            needs = f"`pibloom {cmd_name}` needs {exc.name}, one of the dev extras (`make setup`)"
            raise click.ClickException(needs) from exc


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="pibloom")
def main() -> None:
    """piBLOOM: a self-hosted chat service for small language models."""


@main.command()
def serve() -> None:
    """Run the api under gunicorn with uvicorn workers (settings from PIBLOOM_* variables)."""
    settings = Settings()
    openmp.configure(settings, os.environ)  # before the server's imports load torch
    # Before the server's imports load prometheus_client, which reads the variable at import.
    from .observability import multiproc

    metrics_dir = multiproc.prepare(os.environ)
    from .http.server import serve as run

    run(settings, metrics_dir)


@main.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Server base URL.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--temperature", type=float, default=None, help="Default: the server's (see /v1/models).")
@click.option("--max-tokens", type=int, default=None, help="Default: the server's (see /v1/models).")
@click.option("--api-key", envvar="PIBLOOM_API_KEY", default=None, help="Bearer key, if the server needs one.")
def chat(url: str, system: str | None, temperature: float | None, max_tokens: int | None, api_key: str | None) -> None:
    """Chat in the terminal with a running server, streaming the replies."""
    from .client.terminal_chat import run_chat

    sys.exit(run_chat(url, system, temperature, max_tokens, api_key))


@main.group()
def model() -> None:
    """Model cache management."""


@model.command("fetch")
def model_fetch() -> None:
    """Fill the model cache (the embedded default or PIBLOOM_MODEL) so a server starts without network."""
    from .engine.loader import ModelLoadError, prepare

    try:
        where = prepare(Settings())
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model ready in {where}")


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the configuration table for the README.")
def show_settings(markdown: bool) -> None:
    """Show every setting, its environment variable and its current value."""
    settings = Settings()
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(default) or None
        elif isinstance(default, Path):
            default = str(default).replace(str(Path.home()), "~", 1)
        rows.append((f"PIBLOOM_{name.upper()}", default, field.description or "", getattr(settings, name)))
    if markdown:
        click.echo("| variable | default | what |\n|---|---|---|")
        for env, default, desc, _ in rows:
            shown = "" if default is None else f"`{default}`"
            click.echo(f"| `{env}` | {shown} | {desc} |")
    else:
        for env, _, _, value in rows:
            click.echo(f"{env}={value}")


if __name__ == "__main__":
    main()
