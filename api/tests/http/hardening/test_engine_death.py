"""The inference thread dying (a fatal error, simulated through a wrapped model) fails liveness and ends
the requests that were waiting on it, instead of leaving them hanging."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import httpx
import pytest
from streams import MODEL, metric, run_stream, stream_body

from pibloom.engine.forward import TransformersForward
from pibloom.engine.loader import LoadedModel
from pibloom.settings import Settings

from support import ServerFactory, wait_for

# Only a hang would come near it.
TIMEOUT = 60


class EngineKilled(BaseException):
    """Not an `Exception`: the engine survives a failed step, but not this (like a KeyboardInterrupt)."""


class DyingModel:
    """The real model until `kill` is set; then its next forward pass raises `EngineKilled`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kill = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.kill.is_set():
            raise EngineKilled("simulated fatal error in the inference thread")
        return self.inner(*args, **kwargs)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_engine_thread_death_fails_liveness_and_ends_waiting_requests(
    server_factory: ServerFactory, tiny_loaded: LoadedModel
) -> None:
    model = DyingModel(tiny_loaded.model)

    def loader(_: Settings) -> LoadedModel:
        return dataclasses.replace(tiny_loaded, model=model, forward=TransformersForward(model))

    with server_factory(loader=loader) as (url, host):
        wait_for(lambda: host.ready, what="the model to load")
        engine = host.engine
        assert engine is not None
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            assert (await client.get(f"{url}/health/live")).status_code == 200
            stream = asyncio.ensure_future(run_stream(client, url, stream_body("Hello", 900)))
            plain = asyncio.ensure_future(
                client.post(
                    f"{url}/v1/completions",
                    json={"model": MODEL, "prompt": "Once", "max_tokens": 900, "temperature": 0},
                )
            )
            await asyncio.to_thread(wait_for, lambda: engine.load()["running"] == 2, 30.0, "both to run")
            model.kill.set()
            outcome, response = await asyncio.wait_for(asyncio.gather(stream, plain), TIMEOUT)

            # The stream had started: it ends cleanly with an error event, as a failed generation does.
            assert outcome.status == 200 and outcome.events[-1] == "[DONE]"
            assert outcome.error is not None and outcome.error["code"] == "engine_failed"
            assert outcome.finish_reason is None  # never claimed to be complete
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "engine_failed"
            assert "retry-after" in response.headers

            live = await client.get(f"{url}/health/live")
            assert live.status_code == 503 and live.json()["status"] == "failed"
            assert (await client.get(f"{url}/v2/health/live")).status_code == 503
            assert (await client.get(f"{url}/health/ready")).status_code == 503
            later = await client.post(f"{url}/v1/chat/completions", json=stream_body("Hi", 5))
            assert later.status_code == 503
        assert metric(url, "pibloom_engine_up") == 0
