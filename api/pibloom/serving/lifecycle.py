"""The model's life in the process: loading it on the engine thread, readiness, draining, and the
`require()` gate that turns "not ready" into one 503 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..engine.loader import LoadedModel, load_model
from ..engine.memory import container_memory_limit, kv_budget, release_code_pages, resident_bytes
from ..engine.scheduler import Engine
from ..engine.threads import ThreadGovernor, governed
from ..metrics import Metrics
from ..settings import Settings
from .errors import ErrorKind, ServingError, unavailable

log = logging.getLogger(__name__)

_NOT_READY = {"loading": "the model is still loading", "draining": "the server is shutting down"}


class Serving(NamedTuple):
    """A loaded model and the engine that runs it, handed out only while the host is ready."""

    loaded: LoadedModel
    engine: Engine


def _release_code_pages() -> None:
    """After the load, whose imports ran code that serving never runs again (`memory.release_code_pages`).
    Not before the KV budget is set: it must count the code that requests will read back."""
    before = resident_bytes()
    if release_code_pages():
        log.info("start-up code handed back to the kernel: resident %d -> %d MiB", before >> 20, resident_bytes() >> 20)


class ModelHost:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        loader: Callable[[Settings], LoadedModel] = load_model,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = metrics or Metrics()
        self.loaded: LoadedModel | None = None
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.draining = False
        self.created = int(time.time())

    async def start(self) -> None:
        """Load the model off the event loop (health probes answer meanwhile), on the thread that will
        then run the engine: torch's OpenMP keeps a team of worker threads per calling thread, and a
        second team (a loader thread's, left idle) makes libgomp stop spinning between operations
        in every team, which cost ~30% of a decode step (measured)."""
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[Engine] = loop.create_future()

        def load_and_serve() -> None:
            try:
                engine = self._engine(self.loader(self.settings))
            except Exception as exc:
                loop.call_soon_threadsafe(handed.set_exception, exc)
                return
            if self.settings.release_code_pages:
                _release_code_pages()
            engine.run(started=lambda: loop.call_soon_threadsafe(handed.set_result, engine))

        threading.Thread(target=load_and_serve, name="pibloom-engine", daemon=True).start()
        try:
            engine = await handed
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return
        self._attached(engine)

    def attach(self, loaded: LoadedModel) -> None:
        """Serve an already loaded model (tests share one across servers) on a new engine thread."""
        engine = self._engine(loaded)
        engine.start()
        self._attached(engine)

    def _engine(self, loaded: LoadedModel) -> Engine:
        s = self.settings
        self.metrics.bind(loaded.name)
        return Engine(
            loaded,
            max_batch_size=s.max_batch_size,
            max_queue=s.max_queue,
            prefill_chunk=s.prefill_chunk,
            batching=s.batching,
            metrics=self.metrics,
            prefix_cache_bytes=s.prefix_cache_mb * 2**20,
            kv_budget_bytes=kv_budget(s.kv_cache_mb, s.prefix_cache_mb, container_memory_limit(), resident_bytes()),
            threads=self._governor(),
        )

    def _governor(self) -> ThreadGovernor | None:
        """Sizes torch's thread team from the inference thread's share of a core, unless the operator
        fixed the count (`PIBLOOM_THREADS`). Called on the inference thread, whose team it sizes."""
        most = torch.get_num_threads()
        if not governed(self.settings, most):
            return None
        gauge = self.metrics.engine_threads

        def resize(threads: int) -> None:  # the gauge moves with the team, not at every step
            torch.set_num_threads(threads)
            gauge.set(threads)

        gauge.set(most)
        return ThreadGovernor(most, resize)

    def _attached(self, engine: Engine) -> None:
        loaded = engine.loaded
        self.loaded, self.engine = loaded, engine
        self.metrics.ready.set(1)
        log.info(
            "model %s ready on %s (%s%s%s, %s forward pass)",
            loaded.name,
            loaded.device,
            loaded.dtype,
            ", int4 weights"
            if loaded.int4
            else f", int4 weights for steps of up to {loaded.int4_rows} tokens"
            if loaded.int4_rows
            else "",
            f", output layer ranked in int8 for steps of up to {loaded.head_int8_rows} tokens"
            if loaded.head_int8_rows
            else "",
            loaded.forward_name,
        )

    async def drain(self, timeout: float) -> None:
        """Stop admitting work, let running requests finish (up to `timeout`), stop the engine."""
        self.draining = True
        self.metrics.ready.set(0)
        engine = self.engine
        if engine is None:
            return
        engine.stop_accepting()
        await asyncio.to_thread(engine.wait_idle, timeout)
        await asyncio.to_thread(engine.shutdown, 5.0)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive and not self.draining

    @property
    def live(self) -> bool:
        # Loading is alive; a dead inference thread is not (restart the worker rather than hang requests).
        return self.load_error is None and (self.engine is None or self.engine.alive)

    @property
    def engine_dead(self) -> bool:
        return self.engine is not None and not self.engine.alive

    def status(self) -> str:
        if self.load_error or self.engine_dead:
            return "failed"
        if self.draining:
            return "draining"
        return "ok" if self.engine is not None else "loading"

    @property
    def model_name(self) -> str:
        if self.loaded is not None:
            return self.loaded.name
        return self.settings.model_name or self.settings.model

    @property
    def retry_after(self) -> int:
        return self.settings.retry_after_seconds

    @property
    def model_names(self) -> list[str]:
        """The served model's id, then its aliases (`PIBLOOM_SERVED_MODEL_NAMES`)."""
        names = [self.model_name]
        names.extend(n for n in self.settings.served_model_names if n not in names)
        return names

    def serves(self, name: str) -> bool:
        """Whether `name` names the served model (its id, the last part of a hub id, or an alias)."""
        return name in {*self.model_names, self.model_name.split("/")[-1]}

    def check_model(self, requested: str | None) -> None:
        if requested is not None and not self.serves(requested):
            raise ServingError(
                ErrorKind.NOT_FOUND,
                f"The model '{requested}' does not exist; this server serves '{self.model_name}'",
                code="model_not_found",
                param="model",
            )

    def require(self) -> Serving:
        if self.loaded is None or self.engine is None or not self.ready:
            state = self.status()
            message = _NOT_READY.get(state, "the model is not available")
            raise unavailable(message, self.retry_after, code=f"model_{state}")
        return Serving(self.loaded, self.engine)
