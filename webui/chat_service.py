"""Chat service: one chat turn from message to saved reply, for the UI (and any other front end).

Streams the reply through the generation service with the chat's turn builder (`webui/chat_turn.py`: the prompt for
the chat's mode, rendered with the template, tokens and stop strings of the model that actually runs the turn), and
saves the chat to disk after the user's message, at most once a second while the reply streams, and after the
reply, so nothing typed is lost even if generation fails or is stopped. Each streamed token costs the same however
long the chat: the reply is written into the last message in place (`chat_prompt.StreamedReply`).

One writer per chat: a turn holds the chat's lock (`HistoryStore.chat_lock`) from the user's message to the saved
reply, so two sends into one chat (two tabs, or Enter plus a click) run one after the other; each save merges onto
the file (`HistoryStore.save`), so the second turn is appended after the first and answered with it in the prompt.
Operations that change earlier messages (Regenerate, Continue, Remove last, Clear) refuse a copy older than the
file rather than drop a turn saved elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from loaders.base import GenerationParams
from loaders.errors import HistoryError
from webui import chat_prompt, chat_turn
from webui.generation import Pacer, StreamUpdate
from webui.history import Chat
from webui.state import AppState

SAVE_SECONDS = 1.0  # while streaming, the chat is saved at most this often (and always at the end)
EDIT_WAIT_SECONDS = 2.0  # an edit waits this long for a turn streaming into the chat, then says why it cannot run
STALE = (
    "This chat was changed in another tab or window since you opened it, so this would drop a message saved "
    "there. Open it again from Past chats, then try again."
)
BUSY = "A reply is being written into this chat. Wait for it (or press Stop), then try again."


def send(
    state: AppState, session: str, chat: Chat, text: str, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    with _writer(state, chat):
        chat = chat_prompt.add_user_message(chat, text)
        state.history.save(chat)  # merged onto the file: a turn saved elsewhere now comes before this message
        yield from _reply(state, session, chat, params, continue_last=False)


def regenerate(
    state: AppState, session: str, chat: Chat, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    with _writer(state, chat):
        chat = _rebased(state, chat_prompt.prepare_regenerate(chat), replaces_last_reply=True)
        yield from _reply(state, session, chat, params, continue_last=False)


def continue_reply(
    state: AppState, session: str, chat: Chat, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    with _writer(state, chat):
        chat = _rebased(state, chat_prompt.prepare_continue(chat))
        yield from _reply(state, session, chat, params, continue_last=True)


def remove_last(state: AppState, chat: Chat) -> tuple[Chat, str]:
    """`chat_prompt.remove_last`, saved; the removed user text comes back for the input box."""
    with _writer(state, chat, wait=EDIT_WAIT_SECONDS):
        chat, text = chat_prompt.remove_last(_rebased(state, chat))
        state.history.save(chat)
    return chat, text


def clear(state: AppState, chat: Chat) -> Chat:
    """`chat_prompt.clear_messages`, saved."""
    with _writer(state, chat, wait=EDIT_WAIT_SECONDS):
        chat = chat_prompt.clear_messages(_rebased(state, chat))
        state.history.save(chat)
    return chat


@contextmanager
def _writer(state: AppState, chat: Chat, *, wait: float = -1) -> Iterator[None]:
    """Hold the chat's lock (waiting `wait` seconds at most; -1: as long as a turn takes). Released in `finally`,
    also when a streaming caller closes the generator early."""
    lock = state.history.chat_lock(chat.id)
    if not lock.acquire(timeout=wait):
        raise HistoryError(BUSY)
    try:
        yield
    finally:
        lock.release()


def _rebased(state: AppState, chat: Chat, *, replaces_last_reply: bool = False) -> Chat:
    """`chat`, ready for an edit of its messages: unchanged if it is as new as its file; moved to the file's
    revision if the file holds nothing the edit would drop (the same messages, or with `replaces_last_reply` only a
    different last reply, which Regenerate replaces anyway); else `HistoryError`."""
    disk = state.history.newer(chat)
    if disk is None:
        return chat
    kept = disk.messages
    if replaces_last_reply and kept and kept[-1].role == "assistant":
        kept = kept[:-1]
    if kept != chat.messages:
        raise HistoryError(STALE)
    return dataclasses.replace(chat, revision=disk.revision, synced=len(chat.messages))


def _reply(
    state: AppState, session: str, chat: Chat, params: GenerationParams, *, continue_last: bool
) -> Iterator[tuple[Chat, StreamUpdate]]:
    """(chat, update) per streamed piece; the chat yielded is the same object each time, its last message updated."""
    reply = chat_prompt.StreamedReply(chat, continue_last=continue_last)
    build = chat_turn.chat_turn(state.templates, chat, params, continue_last=continue_last)
    saves = Pacer(SAVE_SECONDS)
    try:
        for update in state.generation.stream(session, build):
            current = reply.chat if update.queued else reply.update(update.text)  # no empty reply while in line
            if update.stats is None and saves.due():
                state.history.save(current)
            yield current, update
    finally:
        state.history.save(reply.chat)
