"""Request and response bodies of every route, as pydantic models (the OpenAPI schema comes from them).

Request models forbid unknown fields, so an OpenAI option this server does not implement is rejected
by name (400) instead of being silently ignored.
"""
