"""The HTTP surface: the app factory (`app`), thin routers (`routes`), pure ASGI middleware
(`middleware`), request and response bodies (`protocol`), error mapping (`errors`), chunk rendering
(`render`), server-sent events (`sse`), OpenAPI error docs (`openapi`), gunicorn (`server`) and logging.

May import: `pibloom.serving` (the `Service` and its plain types), `pibloom.settings`,
`pibloom.metrics`. Never `pibloom.engine`: what the engine is, is the serving layer's business.
"""
