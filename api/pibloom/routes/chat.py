"""piBLOOM's original endpoint: `{"content": "..."}` in, `{"data": "..."}` out."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import ApiKey, RuntimeDep
from ..protocol import ChatMessage, ChatRequest, ChatResponse, SamplingFields
from .streaming import until_disconnect

router = APIRouter(tags=["piBLOOM"], dependencies=[ApiKey])


@router.post("/chat/", response_model=ChatResponse, summary="Reply to one message (original piBLOOM API)")
async def chat(body: ChatRequest, request: Request, runtime: RuntimeDep) -> ChatResponse:
    loaded, _ = runtime.require()
    prompt = runtime.chat_prompt([ChatMessage(role="user", content=body.content)])
    params = runtime.sampling(
        SamplingFields(model=loaded.name, temperature=0.7, top_p=0.9, repetition_penalty=1.1),
        len(prompt),
    )
    result = await until_disconnect(request, runtime.complete(prompt, params))
    return ChatResponse(data=result.text.strip())
