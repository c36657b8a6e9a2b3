"""`pibloom chat`: a streaming terminal chat against a running server's /v1/chat/completions."""

from __future__ import annotations

import json
from typing import Any

import click
import httpx
from httpx_sse import connect_sse


def _model(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/models")
    response.raise_for_status()
    card: dict[str, Any] = response.json()["data"][0]
    return card


def run_chat(
    url: str, system: str | None, temperature: float | None, max_tokens: int | None, api_key: str | None
) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(10.0, read=600.0)) as client:
        try:
            card = _model(client)
        except httpx.HTTPError as exc:
            click.echo(f"cannot reach {url}: {exc}", err=True)
            return 1
        model = str(card["id"])
        # The server's defaults (one home: its settings) unless given on the command line.
        defaults = card.get("defaults") or {}
        sampling = {
            "temperature": defaults.get("temperature") if temperature is None else temperature,
            "max_tokens": defaults.get("max_tokens") if max_tokens is None else max_tokens,
        }
        sampling = {key: value for key, value in sampling.items() if value is not None}
        click.echo(f"piBLOOM chat with {model} at {url} — empty line or Ctrl-D to quit, /reset to start over")
        while True:
            try:
                text = click.prompt(click.style("you", bold=True), default="", show_default=False)
            except (EOFError, click.Abort):
                click.echo()
                return 0
            if not text.strip():
                return 0
            if text.strip() == "/reset":
                history = history[:1] if system else []
                continue
            history.append({"role": "user", "content": text})
            body = {
                "model": model,
                "messages": history,
                "stream": True,
                **sampling,
            }
            click.echo(click.style("bot ", bold=True), nl=False)
            reply: list[str] = []
            try:
                with connect_sse(client, "POST", "/v1/chat/completions", json=body) as source:
                    if source.response.status_code != 200:
                        source.response.read()
                        message = source.response.json().get("error", {}).get("message", source.response.text)
                        click.echo(f"[error {source.response.status_code}: {message}]")
                        history.pop()
                        continue
                    for event in source.iter_sse():
                        if event.data == "[DONE]":
                            break
                        chunk = json.loads(event.data)
                        for choice in chunk.get("choices", []):
                            piece = choice.get("delta", {}).get("content") or ""
                            reply.append(piece)
                            click.echo(piece, nl=False)
            except KeyboardInterrupt:
                click.echo(" [stopped]")
            except httpx.HTTPError as exc:
                click.echo(f"[connection error: {exc}]")
                history.pop()
                continue
            click.echo()
            history.append({"role": "assistant", "content": "".join(reply)})
