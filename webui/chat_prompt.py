"""The prompt for a chat turn, in the three modes of text-generation-webui, and the chat operations.

- `instruct`: the prompt template over the system prompt and the messages.
- `chat`: a plain transcript, the system prompt as context on top, then "{user_name}: ..." / "{bot_name}: ..." lines,
  ending with "{bot_name}:"; stop strings keep the model from writing the user's next line.
- `chat-instruct`: the transcript wrapped in one instruction ("Continue the chat dialogue below...") inside the
  instruct template, the reply starting with "{bot_name}:".

The operations (`add_user_message`, `set_reply`, `remove_last`, ...) are pure: they return a new `Chat` and never
touch the disk; the caller saves it with `HistoryStore.save`. The one exception is `StreamedReply`, which a streaming
reply updates in place so each token costs the same however long the chat (see `webui/chat_service.py`).
"""

from __future__ import annotations

import dataclasses
import time

from loaders.errors import GenerationError
from webui.history import Chat, common_prefix
from webui.templates import Message, PromptTemplate, TemplateRegistry

CHAT_INSTRUCT_COMMAND = 'Continue the chat dialogue below. Write a single reply for the character "{bot_name}".'
_TITLE_LENGTH = 48
_TITLE_WORDS = 8


def resolve_template(
    chat: Chat, templates: TemplateRegistry, *, model_name: str = "", model_chat_template: str | None = None
) -> PromptTemplate:
    """The chat's template; "auto" picks one from the model (its own chat_template first, then its name)."""
    return templates.resolve(chat.template, model_name=model_name, model_chat_template=model_chat_template)


def build_prompt(
    chat: Chat,
    templates: TemplateRegistry,
    *,
    model_chat_template: str | None = None,
    model_name: str = "",
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    continue_last: bool = False,
) -> str:
    """The exact prompt string for the next reply. With `continue_last` the last (assistant) message is continued:
    the prompt ends with its text, no end-of-turn. Raises `GenerationError` when there is nothing to answer or
    continue, `TemplateNotFoundError` / `TemplateRenderError` for template problems."""
    _check_answerable(chat, continue_last=continue_last)
    template = None
    if chat.mode != "chat":
        template = resolve_template(chat, templates, model_name=model_name, model_chat_template=model_chat_template)
    return render_prompt(chat, template, bos_token=bos_token, eos_token=eos_token, continue_last=continue_last)


def render_prompt(
    chat: Chat, template: PromptTemplate | None, *, bos_token: str, eos_token: str, continue_last: bool = False
) -> str:
    """As `build_prompt`, with the template already resolved (None in the plain chat mode, which uses none)."""
    _check_answerable(chat, continue_last=continue_last)
    if chat.mode == "chat" or template is None:  # None only in the chat mode, which needs no template
        return _transcript(chat, chat.messages, continue_last=continue_last, generation_prompt=True)
    if chat.mode == "chat-instruct":
        return _chat_instruct(chat, template, bos_token, eos_token, continue_last=continue_last)
    messages = [Message("system", chat.system_prompt), *chat.messages] if chat.system_prompt else chat.messages
    return template.render(
        messages,
        add_generation_prompt=not continue_last,
        bos_token=bos_token,
        eos_token=eos_token,
        continue_last=continue_last,
    )


def _check_answerable(chat: Chat, *, continue_last: bool) -> None:
    if continue_last:
        prepare_continue(chat)
    elif not chat.messages:
        raise GenerationError("Nothing to answer yet: write a message first.")


def stop_strings(chat: Chat, template: PromptTemplate | None = None) -> tuple[str, ...]:
    """Strings that end the reply: the next transcript line in the chat modes, and the template's own stops."""
    stops: list[str] = []
    if chat.mode in ("chat", "chat-instruct"):
        stops += [f"\n{chat.user_name}:", f"\n{chat.bot_name}:"]
    if template is not None and chat.mode in ("instruct", "chat-instruct"):
        stops += [s for s in template.stop if s not in stops]
    return tuple(stops)


def _speaker(chat: Chat, message: Message) -> str:
    return {"user": chat.user_name, "assistant": chat.bot_name}.get(message.role, "System")


def _line(speaker: str, content: str) -> str:
    return f"{speaker}: {content}" if content else f"{speaker}:"


def _transcript(chat: Chat, messages: list[Message], *, continue_last: bool, generation_prompt: bool) -> str:
    """Context, then one "{name}: {text}" line per message; ends with "{bot_name}:" or the continued reply."""
    context = chat.system_prompt.strip()
    head = f"{context}\n\n" if context else ""
    done = messages[:-1] if continue_last else messages
    lines = [_line(_speaker(chat, m), m.content) for m in done]
    if continue_last:
        lines.append(_line(chat.bot_name, messages[-1].content))
    elif generation_prompt:
        lines.append(f"{chat.bot_name}:")
    return head + "\n".join(lines)


def _chat_instruct(chat: Chat, template: PromptTemplate, bos: str, eos: str, *, continue_last: bool) -> str:
    history = chat.messages[:-1] if continue_last else chat.messages
    transcript = _transcript(chat, history, continue_last=False, generation_prompt=False)
    command = CHAT_INSTRUCT_COMMAND.format(bot_name=chat.bot_name)
    partial = chat.messages[-1].content if continue_last else ""
    outer = [Message("user", f"{command}\n\n{transcript}"), Message("assistant", _line(chat.bot_name, partial))]
    # The reply is "continued" from "{bot_name}:", so the prompt ends right after the bot's name.
    return template.render(outer, bos_token=bos, eos_token=eos, continue_last=True)


# --- operations ------------------------------------------------------------------------------------------------------


def _with_messages(chat: Chat, messages: list[Message], **changes: str) -> Chat:
    # `synced` (how much still matches the saved file) shrinks to what the operation kept: a save then merges.
    synced = min(chat.synced, common_prefix(chat.messages, messages))
    return dataclasses.replace(chat, messages=messages, updated=time.time(), synced=synced, **changes)


def add_user_message(chat: Chat, text: str) -> Chat:
    """Append the user's message; the first one also names an untitled chat."""
    return _with_messages(chat, [*chat.messages, Message("user", text)], title=chat.title or chat_title(text))


def chat_title(text: str) -> str:
    """A chat's title from its first message: its first words, at most `_TITLE_WORDS` and `_TITLE_LENGTH`
    characters, cut at a word ("..." when cut). The chat list adds the date and makes titles unique."""
    words = text.split()
    title = ""
    for count, word in enumerate(words):
        longer = f"{title} {word}" if title else word
        if count == _TITLE_WORDS or len(longer) > _TITLE_LENGTH:
            return (title or word[:_TITLE_LENGTH]) + "..."
        title = longer
    return title


def set_reply(chat: Chat, text: str) -> Chat:
    """Make `text` the bot's reply: replaces the last message if it is the bot's, else appends one. In the chat
    modes leading spaces (after "{bot_name}:") are dropped. A streaming reply uses `StreamedReply` (same rules)."""
    content = text if chat.mode == "instruct" else text.lstrip()
    if chat.messages and chat.messages[-1].role == "assistant":
        return _with_messages(chat, [*chat.messages[:-1], Message("assistant", content)])
    return _with_messages(chat, [*chat.messages, Message("assistant", content)])


def append_reply(chat: Chat, text: str) -> Chat:
    """Add `text` to the end of the bot's last reply (Continue)."""
    last = prepare_continue(chat).messages[-1]
    return _with_messages(chat, [*chat.messages[:-1], Message("assistant", last.content + text)])


class StreamedReply:
    """The chat with a streaming reply in it. The chat is copied once, at the first update; after that each update
    replaces only the last message, in place, so a token costs the same in a long chat as in a short one.
    Same rules as `set_reply` (or `append_reply` with `continue_last`). `chat` is the chat as it stands."""

    def __init__(self, chat: Chat, *, continue_last: bool) -> None:
        self.chat = chat
        self._prefix = prepare_continue(chat).messages[-1].content if continue_last else ""
        # In the chat modes the reply follows "{bot_name}:", so its leading spaces are dropped (not when continuing).
        self._skip: int | None = None if chat.mode != "instruct" and not continue_last else 0
        self._started = False

    def update(self, text: str) -> Chat:
        """The chat with `text` (the reply so far) as the bot's reply."""
        if not self._started:
            self._start()
        chat = self.chat
        chat.messages[-1] = Message("assistant", self._prefix + self._content(text))
        chat.synced = min(chat.synced, len(chat.messages) - 1)  # the reply is this copy's own until saved
        chat.updated = time.time()
        return self.chat

    def _start(self) -> None:
        messages = list(self.chat.messages)
        if not (messages and messages[-1].role == "assistant"):
            messages.append(Message("assistant", ""))
        self.chat = _with_messages(self.chat, messages)
        self._started = True

    def _content(self, text: str) -> str:
        if self._skip is None:  # still in the leading spaces: the text only grows, so they are counted once
            stripped = text.lstrip()
            if not stripped:
                return ""
            self._skip = len(text) - len(stripped)
        return text[self._skip :] if self._skip else text


def remove_last(chat: Chat) -> tuple[Chat, str]:
    """Remove the last exchange (the bot's reply and the user message before it). Returns the new chat and the
    removed user text, so the UI can put it back in the input box ("" if there was none)."""
    messages = list(chat.messages)
    if messages and messages[-1].role == "assistant":
        messages.pop()
    text = messages.pop().content if messages and messages[-1].role == "user" else ""
    if len(messages) == len(chat.messages):
        return chat, ""
    return _with_messages(chat, messages), text


def prepare_regenerate(chat: Chat) -> Chat:
    """The chat without the bot's last reply, ready to answer the last user message again."""
    messages = list(chat.messages)
    if messages and messages[-1].role == "assistant":
        messages.pop()
    if not messages or messages[-1].role != "user":
        raise GenerationError("Nothing to regenerate: there is no message of yours to answer.")
    return _with_messages(chat, messages) if len(messages) != len(chat.messages) else chat


def prepare_continue(chat: Chat) -> Chat:
    """Check the chat ends with a bot reply to continue; returns it unchanged."""
    if not chat.messages or chat.messages[-1].role != "assistant":
        raise GenerationError("Nothing to continue: the last message is not the bot's reply.")
    return chat


def clear_messages(chat: Chat) -> Chat:
    return _with_messages(chat, [])
