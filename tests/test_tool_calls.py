"""Tools without a model: the calls read back from replies (whole and streamed), the generic prompt format, a chat
template's own tools section, the forced-call schema, and the grammar engine's masks on SmolLM2's vocabulary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
import torch

from loaders.base import ConstraintSpec, GenerationParams
from loaders.constraints import GrammarCompiler, check, spec_from_schema
from loaders.errors import ConstraintError
from loaders.sampling import select_next
from webui.api_common import ApiError
from webui.api_tools import (
    CALL_OPEN,
    FunctionDef,
    ToolCallIn,
    ToolCallStream,
    ToolFields,
    ToolSetup,
    generic_messages,
    native_messages,
    parse_tool_calls,
)
from webui.templates import PromptTemplate

WEATHER = FunctionDef(name="get_weather", description="The weather in a city.", parameters={
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"], "additionalProperties": False})
CLOCK = FunctionDef(name="get_time", parameters={"type": "object", "properties": {"zone": {"type": "string"}},
                                                   "required": ["zone"]})
NAMES = ("get_weather", "get_time")


class FakeMessage:
    """A request message as `webui/api.py` gives it (only what the tools module reads)."""

    def __init__(self, role: str, content: str = "", *, tool_calls: list[ToolCallIn] | None = None,
                 tool_call_id: str | None = None, name: str | None = None) -> None:  # fmt: skip
        self.role, self.content, self.tool_calls = role, content, tool_calls
        self.tool_call_id, self.name = tool_call_id, name

    @property
    def text(self) -> str:
        return self.content

    def to_message(self):  # noqa: ANN201
        from webui.templates import Message

        return Message(self.role, self.content)


# --- reading calls back -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>',
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}',
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
    '```json\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"C\\"}"}\n```',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}',  # cut before the close tag
])
def test_calls_are_read_from_every_format(reply: str) -> None:
    content, calls = parse_tool_calls(reply, NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "C"})]
    assert content == ("Let me look." if reply.startswith("Let") else "")
    assert calls[0].id.startswith("call_")


@pytest.mark.parametrize("reply", [
    "The weather is fine.",
    '{"name": "unknown_tool", "arguments": {}}',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # not JSON
    '{"city": "Paris"}',  # JSON, but no call
])
def test_text_that_is_no_call_stays_text(reply: str) -> None:
    assert parse_tool_calls(reply, NAMES) == (reply, [])
    assert parse_tool_calls('{"name": "get_weather", "arguments": {}}', ()) == (
        '{"name": "get_weather", "arguments": {}}', [])  # tools off: never read


def test_two_calls_in_one_reply() -> None:
    reply = "".join(f'{CALL_OPEN}{{"name": "{n}", "arguments": {{}}}}</tool_call>\n' for n in NAMES)
    assert [c.name for c in parse_tool_calls(reply, NAMES)[1]] == list(NAMES)


def stream(pieces: list[str], names=NAMES) -> tuple[str, list]:
    calls = ToolCallStream(names)
    shown = "".join(calls.push(piece) for piece in pieces)
    rest, found = calls.finish()
    return shown, rest, found


def test_stream_shows_text_and_holds_back_a_call() -> None:
    reply = 'Let me look.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    pieces = [reply[i : i + 3] for i in range(0, len(reply), 3)]  # cut anywhere, even inside the tag
    shown, rest, calls = stream(pieces)
    assert shown + rest == "Let me look." == parse_tool_calls(reply, NAMES)[0] and "<" not in shown
    assert shown.startswith("Let me look")  # shown as it came, not held to the end
    assert [c.name for c in calls] == ["get_time"]


def test_stream_of_plain_text_is_shown_as_it_comes() -> None:
    reply = "It is sunny in Paris, with a light breeze from the west."
    pieces = [reply[i : i + 4] for i in range(0, len(reply), 4)]
    calls = ToolCallStream(NAMES)
    shown = [calls.push(piece) for piece in pieces]
    assert sum(1 for piece in shown if piece) > len(pieces) // 2  # not held to the end
    assert "".join(shown) + calls.finish()[0] == reply and calls.finish()[1] == []


def test_stream_of_bare_json_that_is_no_call_comes_out_whole() -> None:
    reply = '{"answer": 42}'
    shown, rest, calls = stream([reply[:5], reply[5:]])
    assert shown == "" and rest == reply and calls == []


# --- the prompt -------------------------------------------------------------------------------------------------------


def test_generic_format_puts_tools_calls_and_results_in_plain_messages() -> None:
    call = ToolCallIn(id="call_1", function={"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'})
    messages = [FakeMessage("system", "Be brief."), FakeMessage("user", "Weather in Paris?"),
                FakeMessage("assistant", "", tool_calls=[call]), FakeMessage("tool", "18 C", tool_call_id="call_1"),
                FakeMessage("tool", "sunny", tool_call_id="call_1")]
    out = generic_messages(messages, ToolSetup((WEATHER,), "auto"))
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content.startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in out[0].content
    assert out[2].content == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n' \
                             "</tool_call>"
    assert out[3].content == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\nsunny\n</tool_response>"
    assert "# Tools" not in generic_messages(messages, ToolSetup((WEATHER,), "none"))[0].content


TOOLS_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>|{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call {{ c.function.name }} {{ c.function.arguments.city }}>{% endfor %}"
    "{% if m.role == 'tool' %}({{ m.name }}){% endif %}|{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_a_template_with_a_tools_section_gets_the_tools_and_structured_messages() -> None:
    template = PromptTemplate("tools", TOOLS_TEMPLATE)
    assert template.reads_tools and not PromptTemplate("plain", "{{ messages[0].content }}").reads_tools
    call = ToolCallIn(id="c1", function={"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'})
    messages = [FakeMessage("user", "Weather?"), FakeMessage("assistant", tool_calls=[call]),
                FakeMessage("tool", "18 C", tool_call_id="c1")]
    prompt = template.render(native_messages(messages), tools=ToolSetup((WEATHER, CLOCK), "auto").schemas())
    assert prompt == ("<tools>get_weather;get_time;</tools>|[user]Weather?|[assistant]<call get_weather Paris>|"
                      "[tool]18 C(get_weather)|[assistant]")


def test_tool_choice_is_checked_and_forcing_builds_a_call_schema() -> None:
    fields = ToolFields(tools=[{"function": WEATHER.model_dump()}, {"function": CLOCK.model_dump()}],
                        tool_choice={"type": "function", "function": {"name": "get_time"}})
    setup = fields.tool_setup()
    schema = json.loads(setup.constraint().text)
    jsonschema.validate({"name": "get_time", "arguments": {"zone": "UTC"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, schema)
    required = ToolFields(tools=fields.tools, tool_choice="required").tool_setup().constraint()
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, json.loads(required.text))
    assert ToolFields(tools=fields.tools).tool_setup().constraint() is None  # auto: the model decides
    with pytest.raises(ApiError, match="not among the tools"):
        ToolFields(tools=fields.tools, tool_choice={"type": "function", "function": {"name": "nope"}}).tool_setup()
    with pytest.raises(ApiError, match="needs at least one tool"):
        ToolFields(tool_choice="required").tool_setup()


# --- the grammar engine -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf: Path):  # noqa: ANN201
    from loaders.hf_tokenizer import HFTokenizer

    return HFTokenizer.from_folder(smollm2_hf)


def test_random_logits_under_a_schema_always_give_valid_json(tokenizer) -> None:  # noqa: ANN001
    """Whatever the model's logits say, the masked sampler writes JSON of the schema, and the grammar's end ends it."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "tag": {"enum": ["a", "bc"]},
                                               "ok": {"type": "boolean"}}, "required": ["n", "tag", "ok"],
              "additionalProperties": False}
    params = GenerationParams(temperature=1.0, top_p=1.0, top_k=0, logprobs=2)
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    grammar = GrammarCompiler.for_tokenizer(tokenizer)
    for _ in range(5):
        constraint = grammar.start(spec_from_schema(schema))
        ids: list[int] = []
        while not constraint.finished and len(ids) < 60:
            logits = torch.randn(49152, generator=generator) * rng.choice([1.0, 5.0])
            token, logprob = select_next(logits, torch.tensor(ids, dtype=torch.long), params, generator,
                                         constraint=constraint)
            assert logprob.token == token and logprob.logprob > float("-inf") and len(logprob.top) == 2
            ids.append(token)
        assert constraint.finished
        jsonschema.validate(json.loads(tokenizer.decode(ids)), schema)


def test_bad_specs_are_refused_before_any_model_runs() -> None:
    check(ConstraintSpec("json_object"))
    check(ConstraintSpec("grammar", 'root ::= "yes" | "no"'))
    for spec in (ConstraintSpec("json_schema", '{"type": "objekt"}'), ConstraintSpec("grammar", "root ::= nope"),
                 ConstraintSpec("json_schema", "not json")):
        with pytest.raises(ConstraintError):
            check(spec)


def test_per_request_fields_stay_out_of_presets() -> None:
    assert "constraint" not in GenerationParams.field_names() and "logprobs" not in GenerationParams.field_names()
    with pytest.raises(KeyError):
        GenerationParams.from_dict({"logprobs": 3})
