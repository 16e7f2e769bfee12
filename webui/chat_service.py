"""Chat service: one chat turn from message to saved reply, for the UI (and any other front end).

Builds the prompt for the chat's mode with the loaded model's template and tokens, adds the mode's stop strings,
streams the reply through the generation service, and saves the chat to disk after the user's message and after
the reply, so nothing typed is lost even if generation fails or is stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from loaders.base import GenerationParams
from loaders.errors import ModelNotLoadedError
from webui import chat_prompt
from webui.generation import StreamUpdate
from webui.history import Chat
from webui.state import AppState


def prompt_for(state: AppState, chat: Chat, *, continue_last: bool = False) -> tuple[str, tuple[str, ...]]:
    """The exact prompt and the extra stop strings for the next reply in `chat` with the loaded model."""
    info = state.models.current_info
    if info is None:
        raise ModelNotLoadedError("No model is loaded. Pick one in the Model tab and click Load.")
    tokenizer = info.model.tokenizer
    names = {"model_name": info.view.name, "model_chat_template": tokenizer.chat_template}
    prompt = chat_prompt.build_prompt(
        chat,
        state.templates,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
        continue_last=continue_last,
        **names,
    )
    template = None if chat.mode == "chat" else chat_prompt.resolve_template(chat, state.templates, **names)
    return prompt, chat_prompt.stop_strings(chat, template)


def send(
    state: AppState, session: str, chat: Chat, text: str, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    chat = chat_prompt.add_user_message(chat, text)
    state.history.save(chat)
    yield from _reply(state, session, chat, params, continue_last=False)


def regenerate(
    state: AppState, session: str, chat: Chat, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    yield from _reply(state, session, chat_prompt.prepare_regenerate(chat), params, continue_last=False)


def continue_reply(
    state: AppState, session: str, chat: Chat, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    yield from _reply(state, session, chat_prompt.prepare_continue(chat), params, continue_last=True)


def _reply(
    state: AppState, session: str, chat: Chat, params: GenerationParams, *, continue_last: bool
) -> Iterator[tuple[Chat, StreamUpdate]]:
    prompt, stops = prompt_for(state, chat, continue_last=continue_last)
    params = dataclasses.replace(params, stop=tuple(dict.fromkeys((*params.stop, *stops))))
    base, current = chat, chat
    try:
        for update in state.generation.stream(session, prompt, params):
            if continue_last:
                current = chat_prompt.append_reply(base, update.text)
            else:
                current = chat_prompt.set_reply(base, update.text)
            yield current, update
    finally:
        state.history.save(current)
