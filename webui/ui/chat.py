"""Chat tab: modes chat / chat-instruct / instruct, system prompt and names, streaming replies with Stop,
Regenerate, Continue, Remove last, Clear, copy; every chat saved to disk after each message and listed for reopening.
All chat logic is in `webui/chat_service.py` and `webui/chat_prompt.py`; this module only wires components."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import gradio as gr

from loaders.errors import CorralError
from webui import chat_prompt, chat_service
from webui.history import CHAT_MODES, Chat
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE
from webui.ui.common import format_stats, session_id, stopper
from webui.ui.parameters import ParamControls


@dataclass
class ChatControls:
    template: gr.Dropdown  # the Model tab sets it on model select and saves it with the model's settings


def build_tab(state: AppState, controls: ParamControls) -> ChatControls:
    chat_state = gr.State(None)  # the open Chat (a dataclass; each browser session has its own)
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            new = gr.Button("New chat", elem_id="chat-new")
            past = gr.Dropdown(choices=_chat_choices(state), label="Past chats", elem_id="chat-past")
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
        try:
            for chat, update in stream:
                stats = format_stats(update.stats) if update.stats else "Generating…"
                yield _messages(chat), chat, stats, gr.skip()
        except CorralError as error:
            yield _messages(chat), chat, f"⚠️ {error}", gr.skip()
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
            return gr.skip(), gr.skip(), gr.skip()
        chat, text = chat_prompt.remove_last(chat)
        state.history.save(chat)
        return _messages(chat), chat, text

    def on_clear(chat: Chat | None):
        if chat is None:
            return gr.skip(), gr.skip()
        chat = chat_prompt.clear_messages(chat)
        state.history.save(chat)
        return _messages(chat), chat

    def on_open(chat_id: str | None):
        if not chat_id:
            return [gr.skip()] * 8
        try:
            chat = state.history.load(chat_id)
        except CorralError as error:
            return [gr.skip()] * 7 + [f"⚠️ {error}"]
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

    def on_new():
        return [], None, gr.update(value=None), "New chat."

    def on_delete(chat: Chat | None):
        if chat is not None:
            state.history.delete(chat.id)
        return [], None, gr.update(choices=_chat_choices(state), value=None), "Chat deleted."

    gen_inputs = [chat_state, *settings, *controls.inputs]
    gen_outputs = [chatbot, chat_state, status, past]
    for trigger in (send.click, message.submit):
        trigger(on_send, [message, *gen_inputs], [message, *gen_outputs], concurrency_id="model")
    regenerate.click(on_regenerate, gen_inputs, gen_outputs, concurrency_id="model")
    cont.click(on_continue, gen_inputs, gen_outputs, concurrency_id="model")
    stop.click(stopper(state), None, None)
    remove.click(on_remove_last, chat_state, [chatbot, chat_state, message])
    clear.click(on_clear, chat_state, [chatbot, chat_state])
    past.input(on_open, past, [chatbot, chat_state, *settings, status])
    new.click(on_new, None, [chatbot, chat_state, past, status])
    delete.click(on_delete, chat_state, [chatbot, chat_state, past, status])
    return ChatControls(template=template)


def _messages(chat: Chat) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in chat.messages if m.role in ("user", "assistant")]


def _chat_choices(state: AppState) -> list[tuple[str, str]]:
    return [
        (f"{c.title or 'New chat'} — {time.strftime('%Y-%m-%d %H:%M', time.localtime(c.updated))}", c.id)
        for c in state.history.list()
    ]
