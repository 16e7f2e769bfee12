"""Prompt templates: chat messages in, the exact prompt string a model was trained on out.

Owns the `Message` record, the `PromptTemplate` (a Jinja chat template plus its stop strings), the registry of
templates shipped as YAML in `webui/templates/` (one file per template), the model's own `chat_template`
(registry name `"model"`), and the rules that pick a template for a model. Every template, shipped or the model's
own, is rendered the way transformers' `apply_chat_template` renders: an `ImmutableSandboxedEnvironment` with
`trim_blocks` / `lstrip_blocks`, `raise_exception`, `strftime_now`, a `tojson` that does not escape HTML, and the
variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

import jinja2
import jinja2.ext
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from loaders.errors import TemplateNotFoundError, TemplateRenderError
from webui.fileio import read_yaml

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)

MODEL_TEMPLATE = "model"  # registry name of the model's own chat_template
AUTO_TEMPLATE = "auto"  # `TemplateRegistry.resolve`: pick with `auto_select`
DEFAULT_TEMPLATE = "alpaca"
_SUFFIX = ".yaml"

# First match wins (re.search, case-insensitive, on the model's folder / repo name). Every name here is a file in
# webui/templates/, as is every `template:` in models/config.yaml (tests/test_templates.py checks both).
NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"code-?llama.*instruct", "codellama-instruct"),
    (r"llama-?2.*chat", "llama-2-chat"),
    (r"llama-?3(?!\d).*(instruct|chat)", "llama-3-instruct"),  # Llama-3, Llama-3.1..., not llama-30b
    (r"zephyr", "zephyr"),
    (r"gemma.*(-it\b|instruct)", "gemma"),
    (r"phi-?3(?!\d)", "phi-3"),
    (r"mi[sx]tral.*instruct", "mistral"),
    (r"vicuna", "vicuna"),
    (r"alpaca", "alpaca"),
    (r"chatml|qwen|smol|hermes|dolphin|openchat-?3\.6|tinyllama.*chat", "chatml"),
)

# Appended to the message being continued; the rendered prompt is cut where it appears (the method of
# transformers' `continue_final_message`, so templates that strip or re-wrap content still work).
_CONTINUE_TAG = "CORRAL_CONTINUE_MARKER "


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {', '.join(ROLES)}, not {self.role!r}")


@dataclass(frozen=True)
class PromptTemplate:
    """A Jinja chat template. `stop` holds strings that end a reply when the model does not emit EOS."""

    name: str
    source: str
    description: str = ""
    stop: tuple[str, ...] = ()

    @cached_property
    def _compiled(self) -> jinja2.Template:
        try:
            return _environment().from_string(self.source)
        except jinja2.TemplateError as error:
            raise TemplateRenderError(f"Prompt template '{self.name}' is not valid Jinja: {error}") from error

    def check(self) -> None:
        """Raise `TemplateRenderError` now if the Jinja text does not compile."""
        self._compiled  # noqa: B018 - compiling is the check

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        continue_last: bool = False,
    ) -> str:
        """The prompt for `messages`. With `continue_last`, the prompt ends with the last message's text (no
        end-of-turn, no generation prompt) so the model goes on writing it."""
        plain = [asdict(message) for message in messages]
        if not continue_last:
            return self._render(plain, add_generation_prompt, bos_token, eos_token)
        if not plain:
            raise TemplateRenderError("There is no message to continue.")
        original = plain[-1]["content"]
        plain[-1]["content"] = original + _CONTINUE_TAG
        rendered = self._render(plain, False, bos_token, eos_token)
        return self._cut_at_tag(rendered, original)

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool, bos: str, eos: str) -> str:
        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos,
                eos_token=eos,
                tools=None,
                documents=None,
            )
        except (jinja2.TemplateError, TypeError, ValueError) as error:
            raise TemplateRenderError(f"Prompt template '{self.name}' failed to render: {error}") from error

    def _cut_at_tag(self, rendered: str, original: str) -> str:
        tag = _CONTINUE_TAG.strip()
        if tag not in rendered or original.strip() not in rendered:
            raise TemplateRenderError(
                f"Prompt template '{self.name}' drops or rewrites the last message, so it cannot be continued."
            )
        at = rendered.rindex(tag)
        if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            return rendered[:at]
        return rendered[:at].rstrip()  # the template trimmed the message: trailing spaces are gone too


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (used by some Hub templates to mark assistant text): rendered as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON (as in transformers).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    # Chat templates from the Hub are untrusted code: sandboxed, immutable, as transformers does it.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def auto_select(model_name: str, model_chat_template: str | None) -> str:
    """Template name for a model: its own chat_template if it has one, else the first `NAME_RULES` match on its name,
    else `DEFAULT_TEMPLATE`."""
    if model_chat_template:
        return MODEL_TEMPLATE
    for pattern, name in NAME_RULES:
        if re.search(pattern, model_name, flags=re.IGNORECASE):
            return name
    return DEFAULT_TEMPLATE


@dataclass(frozen=True)
class TemplateRegistry:
    """The templates in `directory` (`<name>.yaml`), read when asked for, so edits to the files take effect."""

    directory: Path

    def names(self) -> list[str]:
        """Shipped template names, sorted; `"model"` (the model's own template) is not among them."""
        if not self.directory.is_dir():
            return []
        return sorted((p.stem for p in self.directory.glob(f"*{_SUFFIX}")), key=str.lower)

    def get(self, name: str, *, model_chat_template: str | None = None) -> PromptTemplate:
        """The template called `name`; `"model"` is `model_chat_template`. Raises `TemplateNotFoundError`, or
        `TemplateRenderError` if the template's file or Jinja text is malformed."""
        if name == MODEL_TEMPLATE:
            return self._model_template(model_chat_template)
        known = self.names()
        match = name if name in known else next((n for n in known if n.lower() == name.lower()), None)
        if match is None:
            choices = ", ".join([MODEL_TEMPLATE, *known])
            raise TemplateNotFoundError(f"Unknown prompt template '{name}'. Choose one of: {choices}.")
        template = self._read(self.directory / f"{match}{_SUFFIX}")
        template.check()
        return template

    def resolve(self, name: str, *, model_name: str, model_chat_template: str | None) -> PromptTemplate:
        """Like `get`, and `"auto"` (or an empty name) picks the template with `auto_select`."""
        if name in ("", AUTO_TEMPLATE):
            name = auto_select(model_name, model_chat_template)
        return self.get(name, model_chat_template=model_chat_template)

    def _model_template(self, source: str | None) -> PromptTemplate:
        if not source:
            choices = ", ".join(self.names())
            raise TemplateNotFoundError(
                f"This model ships no chat template, so template '{MODEL_TEMPLATE}' is not available. "
                f"Choose one of: {choices}."
            )
        template = PromptTemplate(name=MODEL_TEMPLATE, source=source, description="The model's own chat template.")
        template.check()
        return template

    def _read(self, path: Path) -> PromptTemplate:
        try:
            data = read_yaml(path)
        except (OSError, yaml.YAMLError) as error:
            raise TemplateRenderError(f"Prompt template file {path} cannot be read: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("template"), str):
            raise TemplateRenderError(f"Prompt template file {path} needs a 'template' key holding Jinja text.")
        stop = data.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TemplateRenderError(f"Prompt template file {path}: 'stop' must be a list of strings.")
        return PromptTemplate(
            name=path.stem, source=data["template"], description=str(data.get("description", "")), stop=tuple(stop)
        )
