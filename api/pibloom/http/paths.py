"""Which paths are which: the two rules every layer of the HTTP surface asks about."""

from __future__ import annotations

# Probes, metrics and docs: never rate limited, never logged as prompts, never cut by the watchdog,
# and documented without the inference routes' error answers.
OPERATIONAL_PREFIXES = ("/health", "/v2/health/", "/v2/models/", "/metrics", "/docs", "/redoc", "/openapi.json")


def is_operational(path: str) -> bool:
    return path.startswith(OPERATIONAL_PREFIXES)


def is_openai(path: str) -> bool:
    """Paths that answer errors in OpenAI's shape (`{"error": {...}}`); the rest use FastAPI's."""
    return path.startswith("/v1/")
