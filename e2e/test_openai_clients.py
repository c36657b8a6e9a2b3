"""Real OpenAI clients against `pibloom serve` on the embedded model: the official `openai` SDK with
`tools=` and `response_format`, and LangChain's `ChatOpenAI.bind_tools` and structured output."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from openai import OpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}


def model_of(api_server: str) -> str:
    return str(httpx.get(f"{api_server}/v1/models").json()["data"][0]["id"])


@pytest.fixture(scope="module")
def client(api_server: str) -> OpenAI:
    return OpenAI(base_url=f"{api_server}/v1", api_key="unused", timeout=240)


def test_openai_client_forced_tool_call(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=60,
        extra_body={"some_vendor_field": True},  # ignored: the server is lenient by default
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[union-attr, index]


def test_openai_client_structured_output_streamed_and_not(client: OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Invent a person with a name, an age and hobbies."}]
    whole = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=messages,
        response_format=fmt,
        max_tokens=120,
        n=2,  # type: ignore[arg-type]
    )
    for choice in whole.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)
    text = ""
    for chunk in client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=messages,
        response_format=fmt,
        max_tokens=120,
        stream=True,  # type: ignore[arg-type]
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    jsonschema.validate(json.loads(text), PERSON)


def test_langchain_bind_tools_round_trip(api_server: str) -> None:
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city.

        Args:
            city: the city
            unit: celsius or fahrenheit
        """
        return f"18 degrees {unit} in {city}"

    llm = ChatOpenAI(
        base_url=f"{api_server}/v1", api_key="unused", model=model_of(api_server), max_tokens=60, timeout=240
    )  # type: ignore[arg-type]
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage("What is the weather in Oslo, in celsius?")
    reply = bound.invoke([question])
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    args = reply.tool_calls[0]["args"]
    assert set(args) == {"city", "unit"}
    # The call and its result go back into the history; the model then answers in text.
    answer = llm.bind_tools([get_weather]).invoke(
        [question, reply, ToolMessage(get_weather(**args), tool_call_id=reply.tool_calls[0]["id"])]
    )
    assert isinstance(answer.content, str)


def test_langchain_structured_output(api_server: str) -> None:
    llm = ChatOpenAI(
        base_url=f"{api_server}/v1", api_key="unused", model=model_of(api_server), max_tokens=120, timeout=240
    )  # type: ignore[arg-type]
    person = llm.with_structured_output(PERSON | {"title": "person"}, method="json_schema").invoke(
        "Invent a person with a name, an age and hobbies."
    )
    jsonschema.validate(person, PERSON)


def test_model_card_capabilities_and_bare_health(api_server: str) -> None:
    assert "response_format" in httpx.get(f"{api_server}/v1/models").json()["data"][0]["capabilities"]
    assert httpx.get(f"{api_server}/health").status_code == 200
