"""`GET /v1/models`: the served model, its context size and the sampling defaults clients start from."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ServiceDep
from ..protocol.models import ModelCard, ModelList, SamplingDefaults

router = APIRouter(prefix="/v1", tags=["OpenAI"])


@router.get("/models", response_model=ModelList, summary="The served model")
async def list_models(service: ServiceDep) -> ModelList:
    host, s = service.host, service.settings
    card = ModelCard(
        id=host.model_name,
        created=host.created,
        max_model_len=host.loaded.max_context if host.loaded else 0,
        max_tokens_limit=s.max_tokens_limit,
        defaults=SamplingDefaults(
            temperature=s.chat_temperature,
            top_p=s.chat_top_p,
            repetition_penalty=s.chat_repetition_penalty,
            max_tokens=s.chat_max_tokens,
        ),
    )
    return ModelList(data=[card])
