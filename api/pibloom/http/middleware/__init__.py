"""Pure ASGI middleware (nothing buffers a response, so token streams and disconnects pass through).

Order, outermost first, as `wiring.install_middleware` wires it: request id, access log and request
metrics, CORS, body size limit, rate limit, engine watchdog, optional prompt log, then the routes.

Nothing is imported here: the gunicorn master imports the logging setup (and through it the request id
middleware) but must not import torch, which the engine side would bring (~270 MB of RSS).
"""
