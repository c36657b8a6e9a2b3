"""The batch client: many prompts over a cluster of piBLOOM (or any OpenAI-compatible) servers; and
`pibloom chat` (`terminal_chat`). HTTP only: imports no server code (pibloom.http, serving, engine).

Library use::

    from pibloom.client import BatchOptions, run_batch

    report = await run_batch(
        [{"id": 1, "prompt": "Once upon a time"}], ["http://pi1:8000", "http://pi2:8000"], BatchOptions()
    )

Scoring texts (log-likelihood, perplexity; piBLOOM servers only) is `BatchOptions(score=True)` with
items `{"id": ..., "text": "..."}`, whose results are ScoreRow.

The command line is `pibloom batch` (pibloom.client.command.batch_command).
"""

from .batch import BatchReport, run_batch
from .models import BatchItem, ErrorInfo, ResultRow, ScoreItem, ScoreRow, Usage
from .options import BatchOptions
from .summary import Summary

__all__ = [
    "BatchItem",
    "BatchOptions",
    "BatchReport",
    "ErrorInfo",
    "ResultRow",
    "ScoreItem",
    "ScoreRow",
    "Summary",
    "Usage",
    "run_batch",
]
