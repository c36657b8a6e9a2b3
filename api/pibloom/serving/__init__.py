"""Between HTTP and the engine: the model's lifecycle and readiness (`lifecycle`), request preparation
(`prepare`: chat templates, tokenization, sampling validation), execution (`execute`: stream, collect,
score) and the `Service` the routes call; errors by kind (`errors`).

May import: `pibloom.engine`, `pibloom.settings`, `pibloom.metrics`. Never `pibloom.http` (no HTTP
types here: what a status code is, is the HTTP layer's business).
"""
