"""The one prompt builder for a chat turn, shared by the Chat tab, the API's chat endpoint and the CLI's `--chat`.

A turn is built inside the request's turn (`GenerationService.stream` calls the builder under the model lock) from
the `LoadedInfo` of the model that will run it, so a load that finishes while a request waits in line gives the new
model its own template, BOS/EOS strings and stop strings. The template is resolved once per turn: from the chat's
template name ("auto" picks one from the model's own chat template, then its name), and the same template object
renders the prompt and gives its stop strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from loaders.base import GenerationParams
from webui import chat_prompt
from webui.generation import Turn, TurnBuilder
from webui.history import Chat
from webui.templates import AUTO_TEMPLATE, Message, PromptTemplate, TemplateRegistry

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo


def model_template_name(info: LoadedInfo) -> str:
    """The template the model's settings name, else "auto" (the API and the CLI use the model's template)."""
    return info.view.resolved.template or AUTO_TEMPLATE


def model_chat(
    info: LoadedInfo, messages: Sequence[Message], *, template: str | None = None, system_prompt: str = ""
) -> Chat:
    """An instruct chat of `messages` in `template`, else in the model's own (the API's and the CLI's chats)."""
    return Chat(id="turn", mode="instruct", template=template or model_template_name(info),
                system_prompt=system_prompt, messages=list(messages))


def resolve(templates: TemplateRegistry, info: LoadedInfo, name: str) -> PromptTemplate:
    """Template `name` for the model of `info` ("auto" and "model" look at that model)."""
    return templates.resolve(name, model_name=info.view.name, model_chat_template=info.model.tokenizer.chat_template)


def prompt_for(
    templates: TemplateRegistry, info: LoadedInfo, chat: Chat, *, continue_last: bool = False
) -> tuple[str, tuple[str, ...]]:
    """The exact prompt for the next reply in `chat` on the model of `info`, and the extra stop strings."""
    template = None if chat.mode == "chat" else resolve(templates, info, chat.template)
    tokenizer = info.model.tokenizer
    prompt = chat_prompt.render_prompt(
        chat, template, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "",
        continue_last=continue_last,
    )
    return prompt, chat_prompt.stop_strings(chat, template)


def with_stops(params: GenerationParams, stops: tuple[str, ...]) -> GenerationParams:
    """`params` with `stops` added after its own (no duplicates)."""
    return dataclasses.replace(params, stop=tuple(dict.fromkeys((*params.stop, *stops))))


def chat_turn(
    templates: TemplateRegistry,
    chat: Chat | Callable[[LoadedInfo], Chat],
    params: GenerationParams | Callable[[LoadedInfo], GenerationParams],
    *,
    continue_last: bool = False,
) -> TurnBuilder:
    """The builder of the turn answering `chat` with `params`. Either may be a function of the running model's info
    (the API and the CLI take the template and the preset from the model's settings)."""

    def build(info: LoadedInfo) -> Turn:
        this_chat = chat(info) if callable(chat) else chat
        prompt, stops = prompt_for(templates, info, this_chat, continue_last=continue_last)
        return Turn(prompt, with_stops(params(info) if callable(params) else params, stops))

    return build
