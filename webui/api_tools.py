"""Tools (function calling) on the chat endpoints: the request fields, the prompt, and the model's calls read back.

**The prompt.** A chat template with a tools section (it reads `tools`, as Qwen's, Llama 3.1's, Mistral's and
Hermes' do) gets the tools and the messages in transformers' chat format (`tool_calls` on assistant messages,
`tool` messages), rendered by `PromptTemplate.render` exactly as `apply_chat_template(tools=...)` would. Any other
template gets the **generic format**, in plain messages through the shared chat prompt builder:

- the system message (one is added if there is none) ends with `GENERIC_INSTRUCTIONS`: the tools' JSON schemas
  inside `<tools></tools>`, and the instruction to answer a call as `<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>` (the Hermes / Qwen format, which many models were trained on);
- an assistant message's calls are written the same way after its text;
- `tool` results become a user message of `<tool_response>...</tool_response>` blocks (consecutive results merged).

**The calls read back** (`parse_tool_calls`, and `ToolCallStream` while streaming): `<tool_call>` blocks,
Mistral's `[TOOL_CALLS] [...]`, Llama's `<|python_tag|>{...}`, or a reply that is nothing but a JSON object (or
list) naming a declared tool with its `arguments` (or `parameters`). Text before the calls stays the message's
content. While streaming, text that may begin a call is held back until it is clear.

**tool_choice.** `auto` (the default with tools): the model decides. `none`: no tools in the prompt, no calls read.
`required` / a named function: the reply is constrained (`loaders/constraints.py`) to one JSON call object
`{"name": ..., "arguments": {...}}` of a declared tool (that tool), its arguments valid for the tool's schema.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from loaders.base import ConstraintSpec, GenerationParams
from loaders.constraints import spec_from_schema
from webui import chat_turn
from webui.api_common import ApiError
from webui.generation import Turn, TurnBuilder
from webui.templates import Message, PromptTemplate, TemplateRegistry

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MARKERS = (CALL_OPEN, "[TOOL_CALLS]", "<|python_tag|>")
GENERIC_INSTRUCTIONS = """# Tools

You may call one or more functions to help with the user's request. The functions are described by these JSON \
schemas:
<tools>
{tools}
</tools>

To call a function, reply with one JSON object per call inside <tool_call></tool_call> tags:
<tool_call>
{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}
</tool_call>"""
TOOL_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


# --- the request fields ------------------------------------------------------------------------------------------


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class ToolCallFunction(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(BaseModel):
    """A call in an assistant message of the request (the history)."""

    model_config = ConfigDict(extra="ignore")

    id: str = ""
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ToolFields(BaseModel):
    """The request fields of this module (the chat endpoint)."""

    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def tool_setup(self) -> ToolSetup:
        """The tools of this request, checked (`ApiError` 400 for a choice that names no declared tool)."""
        tools = tuple(tool.function for tool in self.tools or ())
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise ApiError(400, "Two tools have the same name.", param="tools")
        choice = self.tool_choice or ("auto" if tools else "none")
        if isinstance(choice, NamedToolChoice):
            choice = choice.function.name
            if choice not in names:
                raise ApiError(400, f"tool_choice names '{choice}', which is not among the tools.",
                               param="tool_choice")
        elif choice == "required" and not tools:
            raise ApiError(400, "tool_choice 'required' needs at least one tool.", param="tool_choice")
        return ToolSetup(tools, choice)


class ChatMessageLike(Protocol):
    """What this module reads of a request's message (`webui/api.py` ChatMessage)."""

    role: str
    tool_calls: list[ToolCallIn] | None
    tool_call_id: str | None
    name: str | None

    @property
    def text(self) -> str:
        """The message's text (its text parts joined)."""
        ...

    def to_message(self) -> Message:
        """The message as a plain chat message (any role but "tool")."""
        ...


# --- the tools of one request ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSetup:
    """The declared tools and the choice: "none", "auto", "required" or the name of the function to call."""

    functions: tuple[FunctionDef, ...] = ()
    choice: str = "none"

    @property
    def active(self) -> bool:
        """Whether the tools are in the prompt and the reply is read for calls."""
        return bool(self.functions) and self.choice != "none"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.functions) if self.active else ()

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's (and transformers' chat template) shape."""
        return [{"type": "function", "function": _function_schema(f)} for f in self.functions]

    def constraint(self) -> ConstraintSpec | None:
        """For `required` / a named function: the one call object the reply must be."""
        if self.choice not in ("required", *self.names) or not self.active:
            return None
        chosen = [f for f in self.functions if self.choice in ("required", f.name)]
        calls = [_call_schema(f) for f in chosen]
        return spec_from_schema(calls[0] if len(calls) == 1 else {"anyOf": calls})


def _function_schema(function: FunctionDef) -> dict[str, Any]:
    schema: dict[str, Any] = {"name": function.name}
    if function.description:
        schema["description"] = function.description
    schema["parameters"] = function.parameters or {"type": "object", "properties": {}}
    return schema


def _call_schema(function: FunctionDef) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": function.name},
                                             "arguments": function.parameters or {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False}


# --- the prompt --------------------------------------------------------------------------------------------------


def chat_turn_builder(
    templates: TemplateRegistry, messages: Sequence[ChatMessageLike], setup: ToolSetup,
    params: Callable[[LoadedInfo], GenerationParams],
) -> TurnBuilder:
    """The turn of a chat request: with the template's own tools section when it has one and tools are active,
    else through the shared chat prompt builder (`webui/chat_turn.py`), in the generic format when needed."""
    uses_tools = setup.active or any(m.role == "tool" or m.tool_calls for m in messages)
    plain = generic_messages(messages, setup) if uses_tools else [m.to_message() for m in messages]
    shared = chat_turn.chat_turn(templates, lambda info: chat_turn.model_chat(info, plain), params)
    if not setup.active:
        return shared

    def build(info: LoadedInfo) -> Turn:
        template = chat_turn.resolve(templates, info, chat_turn.model_template_name(info))
        if not template.reads_tools:
            return shared(info)
        return Turn(_native_prompt(template, info, messages, setup), chat_turn.with_stops(params(info),
                                                                                          template.stop))

    return build


def _native_prompt(
    template: PromptTemplate, info: LoadedInfo, messages: Sequence[ChatMessageLike], setup: ToolSetup
) -> str:
    tokenizer = info.model.tokenizer
    return template.render(native_messages(messages), tools=setup.schemas(), bos_token=tokenizer.bos_token or "",
                           eos_token=tokenizer.eos_token or "")


def native_messages(messages: Sequence[ChatMessageLike]) -> list[dict[str, Any]]:
    """The messages in transformers' chat format (arguments as objects, as chat templates expect them)."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.to_message().role if message.role != "tool" else "tool"
        item: dict[str, Any] = {"role": role, "content": message.text}
        if message.tool_calls:
            item["tool_calls"] = [_native_call(call) for call in message.tool_calls]
            names.update((call.id, call.function.name) for call in message.tool_calls if call.id)
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id or ""
            item["name"] = message.name or names.get(message.tool_call_id or "", "")
        out.append(item)
    return out


def _native_call(call: ToolCallIn) -> dict[str, Any]:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # not JSON: the template gets the text as sent
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def generic_messages(messages: Sequence[ChatMessageLike], setup: ToolSetup) -> list[Message]:
    """The messages in the generic format: plain system / user / assistant messages."""
    out: list[Message] = []
    for message in messages:
        if message.role == "tool":
            block = f"<tool_response>\n{message.text}\n</tool_response>"
            if out and out[-1].role == "user" and out[-1].content.endswith("</tool_response>"):
                out[-1] = Message("user", f"{out[-1].content}\n{block}")
            else:
                out.append(Message("user", block))
            continue
        plain = message.to_message()
        calls = "\n".join(_generic_call(call) for call in message.tool_calls or ())
        out.append(Message(plain.role, "\n".join(part for part in (plain.content, calls) if part)))
    if setup.active:
        tools = "\n".join(json.dumps(schema, ensure_ascii=False) for schema in setup.schemas())
        instructions = GENERIC_INSTRUCTIONS.format(tools=tools)
        if out and out[0].role == "system":
            out[0] = Message("system", f"{out[0].content}\n\n{instructions}")
        else:
            out.insert(0, Message("system", instructions))
    return out


def _generic_call(call: ToolCallIn) -> str:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    body = json.dumps({"name": call.function.name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


# --- reading calls back ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def openai(self, index: int | None = None) -> dict[str, Any]:
        body = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return body if index is None else {"index": index, **body}


def parse_tool_calls(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    """(the content, the calls) of a whole reply; no calls (and `text` unchanged) when none is found."""
    if not names:
        return text, []
    if CALL_OPEN in text:
        blocks = re.findall(r"<tool_call>(.*?)(?:</tool_call>|\Z)", text, flags=re.S)  # the last may be unclosed
        calls = _calls_in([block.strip() for block in blocks], names)
        if calls:
            return text.partition(CALL_OPEN)[0].rstrip(), calls
    for marker in MARKERS[1:]:
        if marker in text:
            before, _, rest = text.partition(marker)
            calls = _calls_in([rest], names)
            if calls:
                return before.rstrip(), calls
    stripped = _unfenced(text.strip())
    if stripped.startswith(("{", "[")):
        calls = _calls_in([stripped], names)
        if calls:
            return "", calls
    return text, []


def _unfenced(text: str) -> str:
    match = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    return match.group(1) if match else text


def _calls_in(blocks: Sequence[str], names: Sequence[str]) -> list[ToolCall]:
    """The calls of JSON `blocks` (objects, or lists of them); [] unless every one is a call of a known tool."""
    calls: list[ToolCall] = []
    for block in blocks:
        try:
            value = json.loads(block)
        except ValueError:
            return []
        for item in value if isinstance(value, list) else [value]:
            call = _call(item, names)
            if call is None:
                return []
            calls.append(call)
    return calls


def _call(item: Any, names: Sequence[str]) -> ToolCall | None:
    if not isinstance(item, dict) or item.get("name") not in names:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", item["name"], json.dumps(arguments, ensure_ascii=False))


class ToolCallStream:
    """A streamed reply's text in, content safe to show out; the calls at the end. Holds back what may begin a
    call: a reply that opens with `{` / `[` (possibly a bare JSON call) or code fence, and anything from a marker
    (`<tool_call>`...) on."""

    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)
        self._text = ""
        self._released = 0
        self._holding = False  # everything from `_released` on waits for the end

    def push(self, delta: str) -> str:
        self._text += delta
        if not self._names:
            return self._release(len(self._text))
        if self._holding:
            return ""
        if self._released == 0:
            start = self._text.lstrip()
            if not start:
                return ""
            if start[0] in "{[`":
                self._holding = True
                return ""
        pending = self._text[self._released :]
        found = [i for i in (pending.find(marker) for marker in MARKERS) if i >= 0]
        if found:
            self._holding = True
            return self._release(self._released + min(found))
        return self._release(len(self._text) - _partial_marker(pending))

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the content not yet shown, the calls) once the reply is complete."""
        content, calls = parse_tool_calls(self._text, self._names)
        if not calls:
            return self._text[self._released :], []
        shown = self._text[: self._released]
        return (content[len(shown) :] if content.startswith(shown) else ""), calls

    def _release(self, end: int) -> str:
        while end > self._released and self._text[end - 1].isspace():
            end -= 1  # trailing whitespace waits: before a call it is not part of the content
        text, self._released = self._text[self._released : end], max(self._released, end)
        return text


def _partial_marker(text: str) -> int:
    """Length of the longest tail of `text` that begins a marker."""
    for length in range(min(len(text), max(len(m) for m in MARKERS) - 1), 0, -1):
        if any(marker.startswith(text[-length:]) for marker in MARKERS):
            return length
    return 0
