"""Shared fixtures: a tiny BLOOM built at test time, and real servers on loopback ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Tests never reach a model hub; set before transformers / huggingface_hub read it at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test servers share the cores with each other and pytest: threads that sleep between operations.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from pibloom.engine.loader import LoadedModel, load_model
from pibloom.serving.lifecycle import ModelHost
from pibloom.settings import Settings

from support import ServerFactory, running_server
from tiny_model import build_tiny_bloom, build_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bloom(tmp_path_factory.mktemp("models") / "tiny-bloom")


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        model=str(tiny_model_dir),
        dtype="float32",
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_batch_size=8,
        max_queue=8,
    )


@pytest.fixture(scope="session")
def tiny_loaded(tiny_settings: Settings) -> LoadedModel:
    return load_model(tiny_settings)


@pytest.fixture(scope="session")
def tiny_llama_settings(tiny_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The embedded model's architecture in miniature: served by piBLOOM's lean forward pass."""
    folder = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    return tiny_settings.model_copy(update={"model": str(folder)})


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_settings: Settings) -> LoadedModel:
    return load_model(tiny_llama_settings)


@pytest.fixture(scope="session")
def server_factory(tiny_settings: Settings, tiny_loaded: LoadedModel) -> ServerFactory:
    """`with server_factory(max_queue=1) as (url, host):` — a server with settings overridden."""

    def make(loader: Callable[[Settings], LoadedModel] | None = None, **overrides: object):
        settings = tiny_settings.model_copy(update=overrides)
        return running_server(settings, None if loader else tiny_loaded, loader)

    return make


@pytest.fixture(scope="session")
def api(server_factory: ServerFactory) -> Iterator[tuple[str, ModelHost]]:
    """One shared server on the tiny model for tests that do not change settings."""
    with server_factory() as served:
        yield served


@pytest.fixture(scope="session")
def base_url(api: tuple[str, ModelHost]) -> str:
    return api[0]
