"""`GET /v1/models`: the served model, its context size and the sampling defaults clients start from."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ServiceDep
from ..protocol.models import ModelCard, ModelList, SamplingDefaults

router = APIRouter(prefix="/v1", tags=["OpenAI"])


# What the OpenAI routes honour beyond plain generation (the web page shows a "JSON reply" switch
# when `response_format` is listed).
CAPABILITIES = ["response_format", "tools", "n", "logprobs", "logit_bias", "penalties", "seed", "stop", "min_p"]


@router.get("/models", response_model=ModelList, summary="The served model and its aliases")
async def list_models(service: ServiceDep) -> ModelList:
    host, s = service.host, service.settings
    cards = [
        ModelCard(
            id=name,
            created=host.created,
            max_model_len=host.loaded.max_context if host.loaded else 0,
            max_tokens_limit=s.max_tokens_limit,
            defaults=SamplingDefaults(
                temperature=s.chat_temperature,
                top_p=s.chat_top_p,
                repetition_penalty=s.chat_repetition_penalty,
                max_tokens=s.chat_max_tokens,
            ),
            capabilities=list(CAPABILITIES),
            root=host.model_name,
        )
        for name in host.model_names
    ]
    return ModelList(data=cards)
