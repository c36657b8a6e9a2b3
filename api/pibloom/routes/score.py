"""Scoring (log-likelihood of a text) and tokenization."""

from __future__ import annotations

import math

from fastapi import APIRouter

from ..deps import ApiKey, RuntimeDep
from ..errors import bad_request
from ..protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    Score,
    ScoredToken,
    ScoreRequest,
    ScoreResponse,
    TokenizeRequest,
    TokenizeResponse,
    TopLogprob,
    Usage,
)
from .logprobs import TokenText

router = APIRouter(tags=["scoring"], dependencies=[ApiKey])


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    summary="How likely the model finds each text: log-probability, mean, perplexity",
)
async def score(body: ScoreRequest, runtime: RuntimeDep) -> ScoreResponse:
    if body.model is not None:
        runtime.check_model(body.model)
    texts = [body.text] if isinstance(body.text, str) else body.text
    results, processed = await runtime.score(texts, body.context, body.top_logprobs if body.logprobs else 0)
    names = TokenText(runtime.tokenizer)
    data = []
    for index, items in enumerate(results):
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
    usage = Usage(prompt_tokens=processed, completion_tokens=0, total_tokens=processed)
    return ScoreResponse(model=runtime.model_name, data=data, usage=usage)


@router.post("/tokenize", response_model=TokenizeResponse, summary="Text or chat messages to token ids")
async def tokenize(body: TokenizeRequest, runtime: RuntimeDep) -> TokenizeResponse:
    loaded, _ = runtime.require()
    if (body.text is None) == (body.messages is None):
        raise bad_request("give exactly one of 'text' or 'messages'", param="text")
    if body.messages is not None:
        if not body.messages:
            raise bad_request("messages must not be empty", param="messages")
        conversation = [{"role": m.role, "content": m.text()} for m in body.messages]
        text = loaded.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=body.add_generation_prompt, tokenize=False
        )
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = body.text or ""
        ids = loaded.tokenizer(text, add_special_tokens=body.add_special_tokens)["input_ids"]
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=loaded.max_context, text=text)


@router.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids to text")
async def detokenize(body: DetokenizeRequest, runtime: RuntimeDep) -> DetokenizeResponse:
    loaded, _ = runtime.require()
    vocab = len(loaded.tokenizer)
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token ids must be in [0, {vocab}); got {bad[:5]}", param="tokens")
    return DetokenizeResponse(text=loaded.tokenizer.decode(body.tokens))
