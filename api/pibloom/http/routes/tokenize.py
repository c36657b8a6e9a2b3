"""`POST /tokenize` and `POST /detokenize`. Chat messages are counted exactly as the chat endpoint
sends them (the same template rule in `serving.prepare`)."""

from __future__ import annotations

from fastapi import APIRouter

from ...serving.errors import bad_request
from ..deps import ApiKey, ServiceDep
from ..protocol.scoring import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["scoring"], dependencies=[ApiKey])


@router.post("/tokenize", response_model=TokenizeResponse, summary="Text or chat messages to token ids")
async def tokenize(body: TokenizeRequest, service: ServiceDep) -> TokenizeResponse:
    if (body.text is None) == (body.messages is None):
        raise bad_request("give exactly one of 'text' or 'messages'", param="text")
    if body.messages is not None:
        if not body.messages:
            raise bad_request("messages must not be empty", param="messages")
        tokens = service.tokenize_chat(body.messages, add_generation_prompt=body.add_generation_prompt)
    else:
        tokens = service.tokenize_text(body.text or "", add_special_tokens=body.add_special_tokens)
    return TokenizeResponse(
        tokens=tokens.ids, count=len(tokens.ids), max_model_len=tokens.max_model_len, text=tokens.text
    )


@router.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids to text")
async def detokenize(body: DetokenizeRequest, service: ServiceDep) -> DetokenizeResponse:
    return DetokenizeResponse(text=service.detokenize(body.tokens))
