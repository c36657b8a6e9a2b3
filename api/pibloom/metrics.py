"""Prometheus metrics, in a registry per app so that several apps (tests) never share counters.

Names follow vLLM's (`vllm:x` is `pibloom_x` here; the README has the table) so that dashboards and
autoscaling rules written for vLLM carry over. Engine metrics carry a `model_name` label, set when the
model is known (`bind`). Under `pibloom serve` values live in prometheus-client's multiprocess files
(observability/multiproc.py); each gauge says how its per-worker values combine.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
_REQUEST_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_MODEL = ("model_name",)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, model_name: str = "unknown") -> None:
        self.registry = registry or CollectorRegistry()
        self.model_name = model_name
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, _MODEL, buckets=buckets, registry=r)

        self._ttft = histogram(
            "pibloom_time_to_first_token_seconds", "Time from arrival to the first generated token.", _LATENCY_BUCKETS
        )
        self._itl = histogram(
            "pibloom_inter_token_latency_seconds", "Time between consecutive tokens of one request.", _TOKEN_BUCKETS
        )
        self._e2e = histogram(
            "pibloom_e2e_request_latency_seconds", "Time from arrival to the last token.", _PHASE_BUCKETS
        )
        self._queue_time = histogram(
            "pibloom_request_queue_time_seconds", "Time a request waited for a batch slot.", _PHASE_BUCKETS
        )
        self._prefill_time = histogram(
            "pibloom_request_prefill_time_seconds",
            "Time from admission to the first token (reading the prompt).",
            _PHASE_BUCKETS,
        )
        self._decode_time = histogram(
            "pibloom_request_decode_time_seconds", "Time from the first token to the last.", _PHASE_BUCKETS
        )
        self._request_prompt_tokens = histogram(
            "pibloom_request_prompt_tokens", "Prompt tokens per finished request.", _REQUEST_TOKEN_BUCKETS
        )
        self._request_generation_tokens = histogram(
            "pibloom_request_generation_tokens", "Generated tokens per finished request.", _REQUEST_TOKEN_BUCKETS
        )
        self._batch_size = histogram("pibloom_batch_size", "Sequences per decode step.", _BATCH_BUCKETS)
        # Per replica, workers add up (livesum: a dead worker's last value does not linger).
        self._waiting = Gauge(
            "pibloom_num_requests_waiting",
            "Requests waiting for a batch slot.",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._running = Gauge(
            "pibloom_num_requests_running",
            "Sequences in the running batch.",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        # The fullest worker's cache is the one that runs out first.
        self._kv_usage = Gauge(
            "pibloom_kv_cache_usage_perc",
            "KV cache memory held by the running batch over its budget (PIBLOOM_KV_CACHE_MB), 0 to 1.",
            _MODEL,
            registry=r,
            multiprocess_mode="livemax",
        )
        self._kv_bytes = Gauge(
            "pibloom_kv_cache_bytes",
            "Memory held by the running batch's KV cache.",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._kv_budget = Gauge(
            "pibloom_kv_cache_budget_bytes",
            "KV cache memory admission keeps to (PIBLOOM_KV_CACHE_MB).",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        # Prefix caching, counted in tokens as vLLM's prefix_cache_queries / prefix_cache_hits are.
        self._prefix_queries = Counter(
            "pibloom_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", _MODEL, registry=r
        )
        self._prefix_hits = Counter(
            "pibloom_prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not prefilled again).",
            _MODEL,
            registry=r,
        )
        self._prefix_bytes = Gauge(
            "pibloom_prefix_cache_bytes",
            "Memory held by cached prefixes (bounded by PIBLOOM_PREFIX_CACHE_MB).",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._generation_tokens = Counter(
            "pibloom_generation_tokens", "Tokens generated (completion tokens).", _MODEL, registry=r
        )
        self._prompt_tokens = Counter("pibloom_prompt_tokens", "Prompt tokens processed.", _MODEL, registry=r)
        self._success = Counter(
            "pibloom_request_success",
            "Requests finished, by reason: stop, length, cancelled (vLLM's abort), error, scored.",
            [*_MODEL, "finished_reason"],
            registry=r,
        )
        self._engine_up = Gauge(
            "pibloom_engine_up",
            "Inference threads alive (one per worker).",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._engine_threads = Gauge(
            "pibloom_engine_threads",
            "Threads torch computes with (fewer while other processes keep the cores busy).",
            _MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "pibloom_requests_rejected", "Requests refused at once, by reason.", ["reason"], registry=r
        )
        for reason in ("queue_full", "rate_limited"):  # zero until it happens, rather than absent
            self.rejected.labels(reason)
        self.rate_limit_store_errors = Counter(
            "pibloom_rate_limit_store_errors",
            "Rate-limit checks that could not reach the shared store (the request was let through).",
            registry=r,
        )
        self.request_latency = Histogram(
            "pibloom_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "pibloom_ready",
            "1 while the model is loaded and not draining (every worker).",
            registry=r,
            multiprocess_mode="livemin",
        )

    def bind(self, model_name: str) -> None:
        """Label what follows with the model's name (before its engine starts)."""
        self.model_name = model_name

    # The engine's figures, labelled with the served model: a label lookup per use is cheap next to a
    # decode step, and no series exists for a name that never served.
    @property
    def time_to_first_token(self) -> Histogram:
        return self._ttft.labels(self.model_name)

    @property
    def inter_token_latency(self) -> Histogram:
        return self._itl.labels(self.model_name)

    @property
    def batch_size(self) -> Histogram:
        return self._batch_size.labels(self.model_name)

    @property
    def queue_depth(self) -> Gauge:
        return self._waiting.labels(self.model_name)

    @property
    def running(self) -> Gauge:
        return self._running.labels(self.model_name)

    @property
    def kv_cache_usage(self) -> Gauge:
        return self._kv_usage.labels(self.model_name)

    @property
    def kv_cache_bytes(self) -> Gauge:
        return self._kv_bytes.labels(self.model_name)

    @property
    def kv_cache_budget(self) -> Gauge:
        return self._kv_budget.labels(self.model_name)

    @property
    def prefix_cache_queries(self) -> Counter:
        return self._prefix_queries.labels(self.model_name)

    @property
    def prefix_cache_hits(self) -> Counter:
        return self._prefix_hits.labels(self.model_name)

    @property
    def prefix_cache_bytes(self) -> Gauge:
        return self._prefix_bytes.labels(self.model_name)

    @property
    def generated_tokens(self) -> Counter:
        return self._generation_tokens.labels(self.model_name)

    @property
    def prompt_tokens(self) -> Counter:
        return self._prompt_tokens.labels(self.model_name)

    @property
    def engine_up(self) -> Gauge:
        return self._engine_up.labels(self.model_name)

    @property
    def engine_threads(self) -> Gauge:
        return self._engine_threads.labels(self.model_name)

    def finished(
        self,
        reason: str,
        *,
        arrived: float,
        now: float,
        prompt_tokens: int,
        generated_tokens: int,
        admitted: float | None = None,
        first_token: float | None = None,
    ) -> None:
        """One request is done: count it by reason and record its phases and sizes."""
        name = self.model_name
        self._success.labels(name, reason).inc()
        self._e2e.labels(name).observe(now - arrived)
        self._request_prompt_tokens.labels(name).observe(prompt_tokens)
        self._request_generation_tokens.labels(name).observe(generated_tokens)
        # A request cancelled while waiting never had the later phases: it is not counted in them.
        if admitted is None:
            return
        self._queue_time.labels(name).observe(admitted - arrived)
        if first_token is None:
            return
        self._prefill_time.labels(name).observe(first_token - admitted)
        self._decode_time.labels(name).observe(now - first_token)
