"""`POST /tokenize` and `POST /detokenize`. Chat messages are counted exactly as the chat endpoint
sends them (the same template rule in `serving.prepare`)."""

from __future__ import annotations

from fastapi import APIRouter

from ...serving.errors import bad_request
from ..deps import ApiKey, ServiceDep
from ..fields import screen
from ..protocol.scoring import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["scoring"], dependencies=[ApiKey])


@router.post("/tokenize", response_model=TokenizeResponse, summary="Text or chat messages to token ids")
async def tokenize(body: TokenizeRequest, service: ServiceDep) -> TokenizeResponse:
    screen(body, strict=service.settings.strict_fields)
    given = [name for name in ("text", "prompt", "messages") if getattr(body, name) is not None]
    if len(given) != 1:
        raise bad_request("give exactly one of 'text' (or vLLM's 'prompt') or 'messages'", param="text")
    if body.messages is not None:
        if not body.messages:
            raise bad_request("messages must not be empty", param="messages")
        tokens = service.tokenize_chat(
            body.messages, add_generation_prompt=body.add_generation_prompt, model=body.model
        )
    else:
        text = body.text if body.text is not None else body.prompt
        tokens = service.tokenize_text(text or "", add_special_tokens=body.add_special_tokens, model=body.model)
    return TokenizeResponse(
        tokens=tokens.ids, count=len(tokens.ids), max_model_len=tokens.max_model_len, text=tokens.text
    )


@router.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids to text")
async def detokenize(body: DetokenizeRequest, service: ServiceDep) -> DetokenizeResponse:
    screen(body, strict=service.settings.strict_fields)
    return DetokenizeResponse(text=service.detokenize(body.tokens, model=body.model))
