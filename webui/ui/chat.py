"""Chat tab: modes chat / chat-instruct / instruct, system prompt and names, streaming replies with Stop,
Regenerate, Continue, Remove last, Clear, copy; every chat saved to disk after each message and listed for reopening.
All chat logic is in `webui/chat_service.py` and `webui/chat_prompt.py`; this module only wires components.

While a reply streams, the chatbot's message list is built once and then only its last message changes, and the
browser gets at most `UI_REFRESH_SECONDS` worth of updates: Gradio re-serializes and diffs the whole chatbot value on
every yield, so yielding per token would cost the length of the history per token."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import gradio as gr
from gradio.context import Context

from webui import chat_service
from webui.generation import Pacer, status_text
from webui.history import CHAT_MODES, Chat
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE
from webui.ui.common import UI_REFRESH_SECONDS, error_text, session_id, stopper
from webui.ui.parameters import ParamControls


@dataclass
class ChatControls:
    template: gr.Dropdown  # the Model tab sets it on model select and saves it with the model's settings


def build_tab(state: AppState, controls: ParamControls) -> ChatControls:
    chat_state = gr.State(None)  # the open Chat (a dataclass; each browser session has its own)
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            new = gr.Button("New chat", elem_id="chat-new")
            past = gr.Dropdown(choices=[], label="Past chats", elem_id="chat-past")  # filled as the page opens
            delete = gr.Button("Delete this chat", variant="stop")
            mode = gr.Radio(list(CHAT_MODES), value="instruct", label="Mode", elem_id="chat-mode")
            template = gr.Dropdown(
                [AUTO_TEMPLATE, *state.templates.names()],
                value=AUTO_TEMPLATE,
                label="Prompt template",
                elem_id="chat-template",
            )
            system = gr.Textbox(label="System prompt / context", lines=3, elem_id="chat-system")
            with gr.Row():
                user_name = gr.Textbox(value="You", label="Your name")
                bot_name = gr.Textbox(value="Assistant", label="Bot name")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chat-box", buttons=["copy", "copy_all"])
            message = gr.Textbox(placeholder="Send a message (Enter)", show_label=False, elem_id="chat-input")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                regenerate = gr.Button("Regenerate", elem_id="chat-regenerate")
                cont = gr.Button("Continue", elem_id="chat-continue")
                remove = gr.Button("Remove last", elem_id="chat-remove-last")
                clear = gr.Button("Clear", elem_id="chat-clear")
            status = gr.Markdown(elem_id="chat-status")
    settings = [mode, template, system, user_name, bot_name]

    def current(chat: Chat | None, *values) -> Chat:
        """The open chat with the settings controls' values applied (a new one if none is open)."""
        chat = chat or state.history.new()
        m, t, s, u, b = values
        return dataclasses.replace(chat, mode=m, template=t, system_prompt=s, user_name=u, bot_name=b)

    def run(stream, chat: Chat):
        """Drive a chat_service stream into (chatbot, chat, status, past-chats) updates."""
        shown = ShownReply()
        try:
            for chat, update in stream:
                messages = shown.update(chat)
                if update.stats is not None or update.queued or shown.due():  # the place in line, stats at the end
                    yield messages, chat, status_text(update), gr.skip()
        except Exception as error:  # noqa: BLE001 - error_text shows ours and logs anything else as a bug
            yield shown.messages(chat), chat, error_text(error, "generating"), gr.skip()
        yield gr.skip(), gr.skip(), gr.skip(), gr.update(choices=_chat_choices(state), value=chat.id)

    def on_send(request: gr.Request, text: str, chat: Chat | None, *values):
        if not text.strip():
            yield gr.skip(), gr.skip(), "Write a message first.", gr.skip(), gr.skip()
            return
        chat = current(chat, *values[:5])
        params = controls.to_params(*values[5:])
        stream = chat_service.send(state, session_id(request), chat, text, params)
        for out in run(stream, chat):
            yield "", *out

    def on_regenerate(request: gr.Request, chat: Chat | None, *values):
        chat = current(chat, *values[:5])
        yield from run(chat_service.regenerate(state, session_id(request), chat, controls.to_params(*values[5:])), chat)

    def on_continue(request: gr.Request, chat: Chat | None, *values):
        chat = current(chat, *values[:5])
        yield from run(
            chat_service.continue_reply(state, session_id(request), chat, controls.to_params(*values[5:])), chat
        )

    def on_remove_last(chat: Chat | None):
        if chat is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            chat, text = chat_service.remove_last(state, chat)
        except Exception as error:  # noqa: BLE001 - as above
            return gr.skip(), gr.skip(), gr.skip(), error_text(error, "saving the chat")
        return _messages(chat), chat, text, gr.skip()

    def on_clear(chat: Chat | None):
        if chat is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            chat = chat_service.clear(state, chat)
        except Exception as error:  # noqa: BLE001 - as above
            return gr.skip(), gr.skip(), error_text(error, "saving the chat")
        return _messages(chat), chat, gr.skip()

    def on_open(chat_id: str | None):
        if not chat_id:
            return [gr.skip()] * 8
        try:
            chat = state.history.load(chat_id)
        except Exception as error:  # noqa: BLE001 - as above
            return [gr.skip()] * 7 + [error_text(error, "opening the chat")]
        return (
            _messages(chat),
            chat,
            chat.mode,
            chat.template,
            chat.system_prompt,
            chat.user_name,
            chat.bot_name,
            f"Opened “{chat.display_title}”.",
        )

    def on_page_open():
        try:
            return gr.update(choices=_chat_choices(state), value=None), gr.skip()
        except Exception as error:  # noqa: BLE001 - as above
            return gr.skip(), error_text(error, "listing the chats")

    def on_new():
        return [], None, gr.update(value=None), "New chat."

    def on_delete(chat: Chat | None):
        try:
            if chat is not None:
                state.history.delete(chat.id)
        except Exception as error:  # noqa: BLE001 - as above
            return gr.skip(), gr.skip(), gr.skip(), error_text(error, "deleting the chat")
        return [], None, gr.update(choices=_chat_choices(state), value=None), "Chat deleted."

    gen_inputs = [chat_state, *settings, *controls.inputs]
    gen_outputs = [chatbot, chat_state, status, past]
    for trigger in (send.click, message.submit):
        trigger(on_send, [message, *gen_inputs], [message, *gen_outputs], concurrency_id="model")
    regenerate.click(on_regenerate, gen_inputs, gen_outputs, concurrency_id="model")
    cont.click(on_continue, gen_inputs, gen_outputs, concurrency_id="model")
    stop.click(stopper(state), None, None)
    remove.click(on_remove_last, chat_state, [chatbot, chat_state, message, status])
    clear.click(on_clear, chat_state, [chatbot, chat_state, status])
    past.input(on_open, past, [chatbot, chat_state, *settings, status])
    new.click(on_new, None, [chatbot, chat_state, past, status])
    delete.click(on_delete, chat_state, [chatbot, chat_state, past, status])
    # Listed when each page opens, not when the app is built: a chat saved since (in any tab) is then in the list.
    Context.root_block.load(on_page_open, None, [past, status])
    return ChatControls(template=template)


class ShownReply:
    """The chatbot's messages while one reply streams: built from the chat once, then only the last one changes
    (the chat service updates the same chat in place). `due()` paces the updates sent to the browser."""

    def __init__(self) -> None:
        self._shown: list[dict[str, str]] | None = None
        self._length = 0  # messages in the chat when `_shown` was built
        self._pacer: Pacer | None = None

    def update(self, chat: Chat) -> list[dict[str, str]]:
        if self._shown is None or len(chat.messages) != self._length:  # the first update, or the reply's first
            self._shown, self._length = _messages(chat), len(chat.messages)  # after waiting in line without one
        else:
            self._shown[-1]["content"] = chat.messages[-1].content
        return self._shown

    def messages(self, chat: Chat) -> list[dict[str, str]]:
        return self._shown if self._shown is not None else _messages(chat)

    def due(self) -> bool:
        """True for the first update (the user's message appears at once), then at most once per refresh."""
        if self._pacer is None:
            self._pacer = Pacer(UI_REFRESH_SECONDS)
            return True
        return self._pacer.due()


def _messages(chat: Chat) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in chat.messages if m.role in ("user", "assistant")]


def _chat_choices(state: AppState) -> list[tuple[str, str]]:
    return [
        (f"{c.title or 'New chat'} — {time.strftime('%Y-%m-%d %H:%M', time.localtime(c.updated))}", c.id)
        for c in state.history.list()
    ]
