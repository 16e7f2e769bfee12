"""Chat service: one chat turn from message to saved reply, for the UI (and any other front end).

Streams the reply through the generation service with the chat's turn builder (`webui/chat_turn.py`: the prompt for
the chat's mode, rendered with the template, tokens and stop strings of the model that actually runs the turn), and
saves the chat to disk after the user's message, at most once a second while the reply streams, and after the
reply, so nothing typed is lost even if generation fails or is stopped. Each streamed token costs the same however
long the chat: the reply is written into the last message in place (`chat_prompt.StreamedReply`).
"""

from __future__ import annotations

from collections.abc import Iterator

from loaders.base import GenerationParams
from webui import chat_prompt, chat_turn
from webui.generation import Pacer, StreamUpdate
from webui.history import Chat
from webui.state import AppState

SAVE_SECONDS = 1.0  # while streaming, the chat is saved at most this often (and always at the end)


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
    """(chat, update) per streamed piece; the chat yielded is the same object each time, its last message updated."""
    reply = chat_prompt.StreamedReply(chat, continue_last=continue_last)
    build = chat_turn.chat_turn(state.templates, chat, params, continue_last=continue_last)
    saves = Pacer(SAVE_SECONDS)
    try:
        for update in state.generation.stream(session, build):
            current = reply.update(update.text)
            if update.stats is None and saves.due():
                state.history.save(current)
            yield current, update
    finally:
        state.history.save(reply.chat)
