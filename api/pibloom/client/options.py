"""Every knob of a batch run, shared by the library entry point and the CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["least-outstanding", "round-robin"]


class BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Model name to request; default: each server's first model.")
    api_key: str | None = Field(default=None, description="Bearer token sent to every server.")
    per_server: int = Field(default=8, ge=1, description="Requests in flight per server at most.")
    concurrency: int | None = Field(
        default=None, ge=1, description="Requests in flight in total (default: per_server x servers)."
    )
    strategy: Strategy = "least-outstanding"
    timeout: float = Field(
        default=300.0, gt=0, description="Seconds one request may take before it is retried elsewhere."
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    max_retries: int = Field(
        default=5, ge=0, description="Retries per item after timeouts, connection errors, 429 and 5xx."
    )
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_cap: float = Field(default=30.0, ge=0)
    json_mode: bool = Field(default=False, description="Outputs must be JSON (implied by json_schema).")
    json_schema: dict[str, Any] | bool | None = Field(
        default=None, description="JSON Schema every output must satisfy."
    )
    max_schema_retries: int = Field(
        default=3, ge=0, description="Extra attempts, each with the next seed, for bad JSON."
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Request parameters items do not set.")
    health_interval: float = Field(default=5.0, gt=0, description="Seconds between health checks of every server.")
    probe_timeout: float = Field(default=10.0, gt=0)
    wait: float = Field(default=120.0, ge=0, description="Seconds with no usable server before remaining items fail.")
    max_failures: int = Field(default=3, ge=1, description="Consecutive failures that eject a server.")
    eject_cooldown: float = Field(
        default=2.0, ge=0, description="First ejection's pause; doubles per ejection in a row."
    )
    eject_cooldown_cap: float = Field(default=60.0, ge=0)
    default_pause: float = Field(default=1.0, ge=0, description="Pause after a 429/503 that has no Retry-After.")
    jitter_seed: int | None = Field(default=None, description="Seed of the backoff jitter (tests).")
    score: bool = Field(
        default=False, description="Score texts (log-likelihood, via piBLOOM's /v1/score) instead of generating."
    )
    context: str | None = Field(
        default=None, description="With `score`: text each one is conditioned on, unless the item has its own."
    )

    @model_validator(mode="after")
    def _mode_fits(self) -> BatchOptions:
        if self.score and (self.wants_json or self.defaults):
            raise ValueError("scoring takes no generation parameters, json_mode or json_schema")
        if self.context is not None and not self.score:
            raise ValueError("context is for scoring (score=True)")
        return self

    @property
    def wants_json(self) -> bool:
        return self.json_mode or self.json_schema is not None
