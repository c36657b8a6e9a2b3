"""Request preparation: one templating rule for the chat endpoint and /tokenize, sampling validation."""

from __future__ import annotations

import httpx
import pytest

from pibloom.engine.loader import LoadedModel
from pibloom.serving.errors import ErrorKind, ServingError
from pibloom.serving.prepare import SamplingRequest, chat_text, sampling_params, text_prompt
from pibloom.settings import Settings

from support import ServerFactory

MESSAGES = [
    {"role": "developer", "content": "Answer in one word."},
    {"role": "user", "content": "What colour is the sky?"},
]


def test_tokenize_counts_what_the_chat_endpoint_sends(base_url: str) -> None:
    """The same messages, developer role included: /tokenize's count is the chat usage's prompt_tokens."""
    counted = httpx.post(f"{base_url}/tokenize", json={"messages": MESSAGES}, timeout=30).json()
    body = {"model": "tiny-bloom", "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    answered = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
    assert counted["count"] == answered["usage"]["prompt_tokens"]
    # The developer message went through the template as a system message, not as an unknown role.
    assert "Answer in one word." in counted["text"]


class _Message:
    def __init__(self, role: str, content: str) -> None:
        self.role, self.content = role, content

    def text(self) -> str:
        return self.content

    def calls(self) -> list[tuple[str, str]]:
        return []


def test_developer_is_templated_as_system(tiny_loaded: LoadedModel) -> None:
    tokenizer = tiny_loaded.tokenizer
    as_developer = chat_text(tokenizer, [_Message("developer", "Be brief."), _Message("user", "Hi")])
    as_system = chat_text(tokenizer, [_Message("system", "Be brief."), _Message("user", "Hi")])
    assert as_developer == as_system


def test_token_ids_outside_the_vocabulary_are_refused_by_name(tiny_loaded: LoadedModel) -> None:
    vocab = len(tiny_loaded.tokenizer)
    assert text_prompt(tiny_loaded, [1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ServingError) as caught:
        text_prompt(tiny_loaded, [1, vocab])
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.param == "prompt"
    assert str(vocab) in caught.value.message


def test_sampling_defaults_and_limits(tiny_loaded: LoadedModel, tiny_settings: Settings) -> None:
    params = sampling_params(tiny_loaded, tiny_settings, SamplingRequest(), 10)
    assert params.max_tokens == min(tiny_settings.max_tokens_default, tiny_loaded.max_context - 10)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (1.0, 1.0, 0, 1.0)
    with pytest.raises(ServingError) as too_many:
        sampling_params(tiny_loaded, tiny_settings, SamplingRequest(max_tokens=tiny_settings.max_tokens_limit + 1), 10)
    assert too_many.value.param == "max_tokens"
    with pytest.raises(ServingError) as too_long:
        sampling_params(tiny_loaded, tiny_settings, SamplingRequest(), tiny_loaded.max_context)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(ServingError) as choices:
        sampling_params(tiny_loaded, tiny_settings, SamplingRequest(n=tiny_settings.max_batch_size + 1), 10)
    assert choices.value.param == "n" and choices.value.code in ("capacity_exceeded", "invalid_value")
    with pytest.raises(ServingError) as stops:
        sampling_params(tiny_loaded, tiny_settings, SamplingRequest(stop=tuple("abcdefghijklmnopq")), 10)
    assert stops.value.param == "stop"
    params = sampling_params(tiny_loaded, tiny_settings, SamplingRequest(presence_penalty=0.5, n=3, min_p=0.1), 10)
    assert (params.presence_penalty, params.n, params.min_p) == (0.5, 3, 0.1)


def test_models_card_carries_the_chat_defaults_from_settings(server_factory: ServerFactory) -> None:
    with server_factory(chat_temperature=0.3, chat_max_tokens=77) as (url, _):
        card = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
    assert card["defaults"]["temperature"] == 0.3
    assert card["defaults"]["max_tokens"] == 77
    assert card["max_tokens_limit"] == Settings().max_tokens_limit


def test_fallback_tools_prompt_and_history(tiny_loaded: LoadedModel) -> None:
    from pibloom.http.protocol.common import ChatMessage
    from pibloom.serving.prepare import chat_text
    from pibloom.serving.tools import FALLBACK_TOOLS_PROMPT, Tool, ToolRequest

    tools = ToolRequest((Tool("lookup", "Find a word", {"type": "object", "properties": {"q": {"type": "string"}}}),))
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Define cat"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}],
            }
        ),
        ChatMessage(role="tool", content="a small feline", tool_call_id="c1"),
    ]
    text = chat_text(tiny_loaded.tokenizer, messages, tools=tools)
    head = FALLBACK_TOOLS_PROMPT.split("{tools}")[0]
    assert "Be brief.\n\n" + head in text  # merged into the existing system message
    assert '{"name": "lookup", "parameters": {' in text and '"description": "Find a word"' in text
    assert '<tool_call>\n{"name": "lookup", "arguments": {"q": "cat"}}\n</tool_call>' in text
    assert "<tool_response>\na small feline\n</tool_response>" in text
    assert head not in chat_text(tiny_loaded.tokenizer, messages, tools=ToolRequest(tools.tools, "none"))


def test_a_template_that_renders_tools_gets_them_natively(tiny_loaded: LoadedModel) -> None:
    import copy

    from pibloom.http.protocol.common import ChatMessage
    from pibloom.serving.prepare import chat_text
    from pibloom.serving.tools import FALLBACK_TOOLS_PROMPT, Tool, ToolRequest

    tokenizer = copy.deepcopy(tiny_loaded.tokenizer)
    tokenizer.chat_template = (
        "{% for t in tools or [] %}TOOL {{ t.function.name }}\n{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %} CALL {{ c.function.name }}({{ c.function.arguments.q }}){% endfor %}\n"
        "{% endfor %}"
    )
    tools = ToolRequest((Tool("lookup", None, {"type": "object", "properties": {"q": {"type": "string"}}}),))
    messages = [
        ChatMessage(role="user", content="Define cat"),
        ChatMessage.model_validate(
            {"role": "assistant", "tool_calls": [{"function": {"name": "lookup", "arguments": '{"q": "cat"}'}}]}
        ),
        ChatMessage(role="tool", content="a feline"),
    ]
    text = chat_text(tokenizer, messages, tools=tools)
    assert text.startswith("TOOL lookup\n")
    assert "CALL lookup(cat)" in text and "tool: a feline" in text
    assert FALLBACK_TOOLS_PROMPT.split("{tools}")[0] not in text
