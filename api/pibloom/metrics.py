"""Prometheus metrics, in a registry per app so that several apps (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "pibloom_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "pibloom_inter_token_latency_seconds",
            "Time between consecutive tokens of one request.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("pibloom_queue_depth", "Requests waiting for a batch slot.", registry=r)
        self.running = Gauge("pibloom_running_sequences", "Sequences in the running batch.", registry=r)
        self.batch_size = Histogram(
            "pibloom_batch_size", "Sequences per decode step.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.generated_tokens = Counter("pibloom_generated_tokens", "Tokens generated (completion tokens).", registry=r)
        self.prompt_tokens = Counter("pibloom_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.finished = Counter("pibloom_sequences_finished", "Sequences finished, by reason.", ["reason"], registry=r)
        self.rejected = Counter(
            "pibloom_requests_rejected", "Requests refused at once, by reason.", ["reason"], registry=r
        )
        self.request_latency = Histogram(
            "pibloom_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_up = Gauge("pibloom_engine_up", "1 while the inference thread is alive.", registry=r)
        self.ready = Gauge("pibloom_ready", "1 while the model is loaded and not draining.", registry=r)
        self.kv_cache_bytes = Gauge("pibloom_kv_cache_bytes", "Memory held by the batch's KV cache.", registry=r)
        self.kv_cache_budget = Gauge(
            "pibloom_kv_cache_budget_bytes", "KV cache memory admission keeps to (PIBLOOM_KV_CACHE_MB).", registry=r
        )
        # Prefix caching, counted in tokens as vLLM's prefix_cache_queries / prefix_cache_hits are.
        self.prefix_cache_queries = Counter(
            "pibloom_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", registry=r
        )
        self.prefix_cache_hits = Counter(
            "pibloom_prefix_cache_hits", "Prompt tokens found in the prefix cache (not prefilled again).", registry=r
        )
        self.prefix_cache_bytes = Gauge(
            "pibloom_prefix_cache_bytes",
            "Memory held by cached prefixes (bounded by PIBLOOM_PREFIX_CACHE_MB).",
            registry=r,
        )
