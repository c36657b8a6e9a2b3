"""`POST /v1/completions` (OpenAI's legacy text completion)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import ApiKey, ServiceDep
from ..fields import screen
from ..protocol.completions import Completion, CompletionRequest
from ..render.completions import CompletionRenderer
from ..render.logprobs import TokenText
from ..respond import respond

router = APIRouter(prefix="/v1", tags=["OpenAI"], dependencies=[ApiKey])

# OpenAI's default for /v1/completions when max_tokens is not given.
COMPLETIONS_DEFAULT_MAX = 16


@router.post(
    "/completions",
    response_model=Completion,
    summary="Text completion (OpenAI); `stream: true` for server-sent events",
)
async def completions(body: CompletionRequest, request: Request, service: ServiceDep):
    screen(body, strict=service.settings.strict_fields)
    sampling = body.sampling()
    await service.structured_ready(sampling)
    generation = service.completion(
        body.prompt,
        sampling,
        model=body.model,
        default_max=COMPLETIONS_DEFAULT_MAX,
        logprobs=body.logprobs,
        echo=body.echo,
    )
    echo_text = service.detokenize(generation.prompt_ids, param="prompt") if body.echo else None
    renderer = CompletionRenderer(
        service.model_name, TokenText(service.tokenizer), body.logprobs, generation.prompt_ids, echo_text
    )
    return await respond(
        request,
        generation,
        renderer,
        stream=body.stream,
        include_usage=body.include_usage(),
        graceful_timeout=service.settings.graceful_timeout,
    )
