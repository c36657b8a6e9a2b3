"""Tool (function) calling: the tools in the prompt, the constrained call for `required` or a named
function, and tool calls parsed out of a reply (Hermes-style `<tool_call>{...}</tool_call>`).

Tools reach the model through its chat template when the template renders them (it mentions
`tools`); otherwise through the fallback system prompt below, in the Hermes convention many small
instruction-tuned models were trained on. History follows the same convention in the fallback: an
assistant's earlier calls as `<tool_call>` blocks, tool results as `<tool_response>` blocks.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import bad_request
from .structured import check_schema

FALLBACK_TOOLS_PROMPT = (
    "You can call functions to help with the user's request. The functions are described, as JSON "
    "Schema, inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with a JSON object naming it and giving its arguments, inside "
    '<tool_call></tool_call> tags:\n<tool_call>\n{{"name": "<function name>", "arguments": {{...}}}}\n</tool_call>'
)

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


ToolMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class ToolRequest:
    """The tools offered and how the model may use them (`forced`: the one function it must call)."""

    tools: tuple[Tool, ...] = ()
    mode: ToolMode = "auto"
    forced: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.mode != "none"

    @property
    def constrained(self) -> bool:
        return self.active and (self.mode == "required" or self.forced is not None)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def check_tools(request: ToolRequest) -> ToolRequest:
    names = [t.name for t in request.tools]
    if len(set(names)) != len(names):
        raise bad_request("tool names must be unique", param="tools")
    for i, tool in enumerate(request.tools):
        check_schema(tool.parameters, param=f"tools.{i}.function.parameters")
    if request.mode == "required" and not request.tools:
        raise bad_request("tool_choice 'required' needs at least one tool", param="tool_choice")
    if request.forced is not None and request.forced not in names:
        raise bad_request(f"tool_choice names '{request.forced}', which is not among the tools", param="tool_choice")
    return request


def call_schema(request: ToolRequest) -> dict[str, Any]:
    """JSON Schema of one call: `{"name": ..., "arguments": {...}}` for the allowed function(s)."""
    allowed = [t for t in request.tools if request.forced in (None, t.name)]
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": _closed(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in allowed
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _closed(parameters: dict[str, Any]) -> dict[str, Any]:
    """Arguments hold the declared properties only, unless the schema says otherwise (as OpenAI's
    strict mode requires): a small model would otherwise invent extra ones until max_tokens."""
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def template_renders_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tools" in template


def fallback_prompt(tools: tuple[Tool, ...]) -> str:
    listed = "\n".join(json.dumps(t.as_openai()["function"]) for t in tools)
    return FALLBACK_TOOLS_PROMPT.format(tools=listed)


def call_block(name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def parse_calls(text: str, request: ToolRequest) -> tuple[str | None, list[ToolCall]]:
    """Tool calls in a reply, and the text around them (None when nothing else was said).

    A constrained reply is the call's JSON itself; otherwise each `<tool_call>` block whose JSON names
    an offered function becomes a call (blocks that do not parse stay in the text)."""
    names = {t.name for t in request.tools}
    if request.constrained:
        call = _call_of(text, names)
        return (None, [call]) if call is not None else (text, [])
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for match in _CALL.finditer(text):
        call = _call_of(match.group(1), names)
        if call is None:
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    rest = "".join(kept).strip()
    return (rest or None) if calls else text, calls


def _call_of(blob: str, names: set[str]) -> ToolCall | None:
    try:
        data = json.loads(blob)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return ToolCall(name=data["name"], arguments=json.dumps(arguments))
