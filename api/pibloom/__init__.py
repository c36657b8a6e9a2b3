"""piBLOOM: a self-hosted chat service for small language models.

The packages are the layers (`make lint` holds them with import-linter, see pyproject.toml):

- `http`     the HTTP surface: app, routes, middleware, protocol models, errors, SSE, gunicorn
- `serving`  between HTTP and the engine: model lifecycle, request preparation, execution
- `engine`   model loading, continuous-batching scheduler, forward passes, KV cache, sampling
- `client`   the batch client and the terminal chat: HTTP only, to any OpenAI-compatible server
- `bench`    `make bench`: piBLOOM against its peers, over HTTP

`http` imports `serving`, which imports `engine`; `client` and `bench` import none of them. Beside
them, `settings` (every knob), `metrics` (the Prometheus registry) and `observability` (multiprocess
metrics, replica process figures, the metrics port) are leaves any layer may import; `cli` wires the
commands.
"""

__version__ = "0.2.0"
