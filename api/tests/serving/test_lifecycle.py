"""The model host's start: start-up code is handed back once the model is loaded and the engine's
KV budget is set (it must count the code that requests read back), and only when the setting allows."""

from __future__ import annotations

import pytest

from pibloom.engine.loader import LoadedModel
from pibloom.metrics import Metrics
from pibloom.serving import lifecycle
from pibloom.settings import Settings


@pytest.mark.parametrize("release", [True, False])
async def test_code_pages_go_back_after_the_load_when_allowed(
    tiny_settings: Settings, tiny_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, release: bool
) -> None:
    events: list[str] = []

    def load(_settings: Settings) -> LoadedModel:
        events.append("load")
        return tiny_loaded

    def budget(*args: object) -> int:
        events.append("budget")
        return 1 << 30

    def hand_back() -> int:
        events.append("release")
        return 1 << 20

    monkeypatch.setattr(lifecycle, "kv_budget", budget)
    monkeypatch.setattr(lifecycle, "release_code_pages", hand_back)
    host = lifecycle.ModelHost(tiny_settings.model_copy(update={"release_code_pages": release}), Metrics(), load)
    await host.start()
    try:
        assert host.ready
        assert events == (["load", "budget", "release"] if release else ["load", "budget"])
    finally:
        assert host.engine is not None
        host.engine.shutdown(5)
