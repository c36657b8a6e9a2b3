"""piBLOOM's original `/chat/`: `{"content": ...}` in, `{"data": ...}` out."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator


class ChatRequest(BaseModel):
    content: Annotated[str, Field(min_length=1, description="The user's message.")]

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content must not be empty")
        return value


class ChatResponse(BaseModel):
    data: str
