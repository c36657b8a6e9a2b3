"""piBLOOM's original endpoint: `{"content": "..."}` in, `{"data": "..."}` out."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...serving.prepare import SamplingRequest
from ..deps import ApiKey, ServiceDep
from ..disconnect import until_disconnect
from ..protocol.common import ChatMessage
from ..protocol.original import ChatRequest, ChatResponse

router = APIRouter(tags=["piBLOOM"], dependencies=[ApiKey])


@router.post("/chat/", response_model=ChatResponse, summary="Reply to one message (original piBLOOM API)")
async def chat(body: ChatRequest, request: Request, service: ServiceDep) -> ChatResponse:
    s = service.settings
    sampling = SamplingRequest(
        temperature=s.chat_temperature, top_p=s.chat_top_p, repetition_penalty=s.chat_repetition_penalty
    )
    generation = service.chat([ChatMessage(role="user", content=body.content)], sampling)
    result = await until_disconnect(request, generation.collect())
    return ChatResponse(data=result.text.strip())
