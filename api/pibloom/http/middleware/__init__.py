"""Pure ASGI middleware (nothing buffers a response, so token streams and disconnects pass through).

Order, outermost first, as `install_middleware` wires it: request id, access log and request metrics, CORS,
body size limit, rate limit, engine watchdog, optional prompt log, then the routes.
"""

from __future__ import annotations

from .wiring import install_middleware

__all__ = ["install_middleware"]
