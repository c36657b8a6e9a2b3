"""`POST /v1/score`: how likely the model finds each text."""

from __future__ import annotations

import math

from fastapi import APIRouter

from ..deps import ApiKey, ServiceDep
from ..fields import screen
from ..protocol.common import TopLogprob, Usage
from ..protocol.scoring import Score, ScoredToken, ScoreRequest, ScoreResponse
from ..render.logprobs import TokenText

router = APIRouter(tags=["scoring"], dependencies=[ApiKey])


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    summary="How likely the model finds each text: log-probability, mean, perplexity",
)
async def score(body: ScoreRequest, service: ServiceDep) -> ScoreResponse:
    screen(body, strict=service.settings.strict_fields)
    texts = [body.text] if isinstance(body.text, str) else body.text
    top = body.top_logprobs if body.logprobs else 0
    scores = await service.score(texts, body.context, top, model=body.model)
    names = TokenText(service.tokenizer)
    data = []
    for index, items in enumerate(scores.per_text):
        total = sum(item.logprob for item in items)
        mean = total / len(items)
        entry = Score(index=index, tokens=len(items), logprob=total, mean_logprob=mean, perplexity=math.exp(-mean))
        if body.logprobs:
            entry.token_logprobs = [
                ScoredToken(
                    id=item.token_id,
                    token=names(item.token_id),
                    logprob=item.logprob,
                    top_logprobs=[TopLogprob(token=names(i), logprob=v) for i, v in item.top] or None,
                )
                for item in items
            ]
        data.append(entry)
    return ScoreResponse(model=service.model_name, data=data, usage=Usage.of(scores.processed, 0))
