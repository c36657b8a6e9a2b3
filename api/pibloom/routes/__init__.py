"""Thin routers: piBLOOM's /chat/, the OpenAI /v1 API, health probes and metrics."""
