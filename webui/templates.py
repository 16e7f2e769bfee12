"""Prompt templates: chat messages in, the exact prompt string a model was trained on out.

Owns the `Message` record, the `PromptTemplate` (a Jinja chat template plus its stop strings), the registry of
templates shipped as YAML in `webui/templates/` (one file per template), the model's own `chat_template`
(registry name `"model"`), and `auto_select`, which picks a template for a model. Every template, shipped or the
model's own, is rendered by transformers' own chat-template renderer (the one `apply_chat_template` calls), so
Corral keeps no copy of its Jinja setup.

The name rules are not kept here: they are the `template:` values of `models/config.yaml` (the models folder's own
`config.yaml` when it has one), the file `webui/settings.py` applies, read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import jinja2
import yaml

from loaders.errors import TemplateNotFoundError, TemplateRenderError
from webui.fileio import read_yaml

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)

MODEL_TEMPLATE = "model"  # registry name of the model's own chat_template
AUTO_TEMPLATE = "auto"  # `TemplateRegistry.resolve`: pick with `auto_select`
DEFAULT_TEMPLATE = "alpaca"  # when the model has no chat template and no name rule matches
_SUFFIX = ".yaml"
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "models" / "config.yaml"
CONFIG_NAME = "config.yaml"  # a models folder's own copy of the name patterns, used instead of the shipped one


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

    def check(self) -> None:
        """Raise `TemplateRenderError` now if the Jinja text does not compile."""
        try:
            _compile(self.source)
        except jinja2.TemplateError as error:
            raise TemplateRenderError(f"Prompt template '{self.name}' is not valid Jinja: {error}") from error

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        continue_last: bool = False,
        variables: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt for `messages`. With `continue_last`, the prompt ends with the last message's text (no
        end-of-turn, no generation prompt) so the model goes on writing it. `variables` are further names the
        template may read (`enable_thinking`, `unk_token`...), as `apply_chat_template`'s keyword arguments.
        A message may also be a mapping in transformers' chat format (a `tool` role, `tool_calls`), and `tools`
        the tools' JSON schemas, for a template with a tools section (`reads_tools`)."""
        if continue_last and not messages:
            raise TemplateRenderError("There is no message to continue.")
        self.check()  # a syntax error is "not valid Jinja", not "failed to render"
        try:
            return _render(
                self.source, [m if isinstance(m, Mapping) else asdict(m) for m in messages],
                add_generation_prompt=add_generation_prompt and not continue_last, continue_last=continue_last,
                variables={**(variables or {}), "bos_token": bos_token, "eos_token": eos_token}, tools=tools,
            )  # fmt: skip
        except (jinja2.TemplateError, TypeError, ValueError) as error:
            raise self._render_error(error, continue_last) from error

    @property
    def reads_tools(self) -> bool:
        """Whether the template has a tools section (it reads the `tools` variable apply_chat_template passes)."""
        from jinja2 import meta

        try:
            return "tools" in meta.find_undeclared_variables(jinja2.Environment().parse(self.source))
        except jinja2.TemplateError:
            return False

    def _render_error(self, error: Exception, continue_last: bool) -> TemplateRenderError:
        # transformers words every failure of continue_final_message this way (the last message is missing from
        # the rendered text, or the template never reads `content`); anything else is the template's own error.
        if continue_last and isinstance(error, ValueError) and str(error).startswith("continue_final_message"):
            return TemplateRenderError(
                f"Prompt template '{self.name}' drops or rewrites the last message, so it cannot be continued."
            )
        return TemplateRenderError(f"Prompt template '{self.name}' failed to render: {error}")


# --- rendering: transformers' renderer ------------------------------------------------------------------------------
# `render_jinja_template` is what `PreTrainedTokenizerBase.apply_chat_template` calls once it has the template
# string: it takes that string rather than a tokenizer, which the llama.cpp and native GGUF loaders do not have, and
# brings the whole setup (sandboxed, immutable environment, trim/lstrip blocks, `raise_exception`, `strftime_now`,
# the non-escaping `tojson`, `{% generation %}`, safe `dict` / `namespace`) and `continue_final_message`.
# `_compile_jinja_template` is the cached compile it starts with: the only way to check a template's syntax exactly
# as transformers will parse it, without rendering it. Both are imported on first use: transformers takes ~0.7 s to
# import and most of the app (settings, CLI) never renders a prompt.


def _compile(source: str) -> object:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source)


def _render(
    source: str,
    messages: list[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    continue_last: bool,
    variables: Mapping[str, Any],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=source, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_last, tools=[dict(tool) for tool in tools] if tools else None, **variables,
    )  # fmt: skip
    return rendered[0]


# --- auto-selection: the name rules of models/config.yaml -----------------------------------------------------------


def config_path(models_dir: Path | None) -> Path:
    """The name-pattern file for `models_dir`: its own `config.yaml` if it has one, else the shipped
    `models/config.yaml` (also for None). `SettingsStore.defaults_path` names the same file."""
    own = Path(models_dir) / CONFIG_NAME if models_dir is not None else None
    return own if own is not None and own.is_file() else SHIPPED_CONFIG


def name_rules(models_dir: Path | None = None) -> list[tuple[str, str]]:
    """(pattern, template) of every entry of the name-pattern file that sets `template`, in file order. A file that
    cannot be read gives none (webui/settings.py reports it when it applies the same file)."""
    try:
        data = read_yaml(config_path(models_dir))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(data, dict):
        return []
    entries = ((str(pattern), values) for pattern, values in data.items() if isinstance(values, dict))
    return [(pattern, values["template"]) for pattern, values in entries if isinstance(values.get("template"), str)]


def auto_select(model_name: str, model_chat_template: str | None, *, models_dir: Path | None = None) -> str:
    """Template name for a model: its own chat_template if it has one, else the template the name rules give its
    folder / repo name, else `DEFAULT_TEMPLATE`. The rules are matched as webui/settings.py matches them (`re.match`,
    case-insensitive, every matching pattern applied in file order), so the later of two matches wins and "auto"
    never disagrees with the template the Model tab shows from the same file."""
    if model_chat_template:
        return MODEL_TEMPLATE
    chosen = DEFAULT_TEMPLATE
    for pattern, template in name_rules(models_dir):
        if _matches(pattern, model_name):
            chosen = template
    return chosen


def _matches(pattern: str, model_name: str) -> bool:
    try:
        return re.match(pattern, model_name.lower(), flags=re.IGNORECASE) is not None
    except re.error:
        return False  # reported by webui/settings.py, which reads the same file


@dataclass(frozen=True)
class TemplateRegistry:
    """The templates in `directory` (`<name>.yaml`), read when asked for, so edits to the files take effect.
    `models_dir` is the models folder whose name rules (`config_path`) "auto" applies; None: the shipped ones."""

    directory: Path
    models_dir: Path | None = None

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
            name = auto_select(model_name, model_chat_template, models_dir=self.models_dir)
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
