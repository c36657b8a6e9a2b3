"""Fixtures of the engine tests: each runs on transformers' forward (BLOOM) and the lean pass (Llama)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pibloom.engine.loader import LoadedModel
from pibloom.engine.scheduler import Engine


@pytest.fixture(params=["bloom", "llama"])
def model(request: pytest.FixtureRequest) -> LoadedModel:
    """Every engine test runs on transformers' forward (BLOOM) and on piBLOOM's lean pass (Llama)."""
    loaded: LoadedModel = request.getfixturevalue("tiny_loaded" if request.param == "bloom" else "tiny_llama")
    assert loaded.lean == (request.param == "llama")
    return loaded


@pytest.fixture
def engine(model: LoadedModel) -> Iterator[Engine]:
    eng = Engine(model, max_batch_size=8, max_queue=8, prefill_chunk=16)
    eng.start()
    yield eng
    eng.shutdown(10)
