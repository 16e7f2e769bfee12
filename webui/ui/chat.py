"""Chat tab, layout and wiring: Past chats (newest first, searchable, unique titles), New / Import / Export /
Delete (with a confirmation; the chat goes to the trash), the chat's settings (mode, template, system prompt,
names), the chatbot with Send, Stop, Regenerate, Continue, Remove last, Clear, and the Prompt view of the last
request. The handlers are in `webui/ui/chat_handlers.py`; the tab's open chat lives in the browser (BrowserState).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from webui.history import CHAT_MODES
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE
from webui.ui import chat_handlers as h
from webui.ui.parameters import ParamControls
from webui.ui.prompt_view import prompt_html
from webui.ui.wiring import listen

# The browser keeps the open chat's id and revision; a fixed key, not a random one per start, so the chat is found
# again after a server restart. It is no secret (the server checks every id it is sent).
OPEN_CHAT_KEY = "corral-open-chat"
OPEN_CHAT_SECRET = "corral-open-chat-v1"


@dataclass
class ChatTab:
    ref: gr.BrowserState
    new: gr.Button
    upload: gr.UploadButton
    query: gr.Textbox
    past: gr.Radio
    export: gr.Button
    delete: gr.Button
    confirm: gr.Group
    confirm_text: gr.Markdown
    confirm_delete: gr.Button
    cancel_delete: gr.Button
    files: gr.File
    settings: dict[str, gr.components.Component]
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    cont: gr.Button
    remove: gr.Button
    clear: gr.Button
    status: gr.Markdown
    prompt: gr.HTML

    @property
    def template(self) -> gr.Dropdown:
        return self.settings["template"]  # type: ignore[return-value]


def open_chat() -> gr.BrowserState:
    """The browser's reference to its open chat; made outside the tabs, so it is read as the page opens."""
    return gr.BrowserState({"id": None, "revision": 0}, storage_key=OPEN_CHAT_KEY, secret=OPEN_CHAT_SECRET)


def build_tab(state: AppState, ref: gr.BrowserState) -> ChatTab:
    with gr.Row(elem_id="chat-layout"):
        with gr.Column(scale=1, min_width=260, elem_id="chat-side"):
            with gr.Row():
                new = gr.Button("New chat", elem_id="chat-new", min_width=80)
                upload = gr.UploadButton("Import", file_types=[".json"], type="filepath", elem_id="chat-import",
                                         min_width=80)  # fmt: skip
            query = gr.Textbox(placeholder="Search past chats", show_label=False, elem_id="chat-search")
            past = gr.Radio(choices=[], label="Past chats", elem_id="chat-past")
            with gr.Row():
                export = gr.Button("Export", elem_id="chat-export", min_width=80)
                delete = gr.Button("Delete", variant="stop", elem_id="chat-delete", min_width=80)
            with gr.Group(visible=False, elem_id="chat-confirm") as confirm:
                confirm_text = gr.Markdown(elem_id="chat-confirm-text")
                with gr.Row():
                    confirm_delete = gr.Button("Move to trash", variant="stop", elem_id="chat-confirm-delete")
                    cancel_delete = gr.Button("Keep it", elem_id="chat-cancel-delete")
            files = gr.File(label="Exported chat", file_count="multiple", visible=False, elem_id="chat-export-files")
            with gr.Accordion("Chat settings", open=True):
                settings = _settings(state)
        with gr.Column(scale=4, elem_id="chat-main"):
            chatbot = gr.Chatbot(label="Chat", height=480, elem_id="chat-box", buttons=["copy", "copy_all"])
            message = gr.Textbox(placeholder="Send a message (Enter)", show_label=False, elem_id="chat-input")
            with gr.Row(elem_id="chat-buttons"):
                send = gr.Button("Send", variant="primary", elem_id="chat-send", min_width=70)
                stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", min_width=70)
                regenerate = gr.Button("Regenerate", elem_id="chat-regenerate", min_width=70)
                cont = gr.Button("Continue", elem_id="chat-continue", min_width=70)
                remove = gr.Button("Remove last", elem_id="chat-remove-last", min_width=70)
                clear = gr.Button("Clear", elem_id="chat-clear", min_width=70)
            status = gr.Markdown(elem_id="chat-status")
            with gr.Accordion("Prompt (the last request, exactly as sent)", open=False, elem_id="chat-prompt-view"):
                prompt = gr.HTML(prompt_html(None), elem_id="chat-prompt", js_on_load=None)
    return ChatTab(ref, new, upload, query, past, export, delete, confirm, confirm_text, confirm_delete,
                   cancel_delete, files, settings, chatbot, message, send, stop, regenerate, cont, remove, clear,
                   status, prompt)  # fmt: skip


def _settings(state: AppState) -> dict[str, gr.components.Component]:
    mode = gr.Radio(list(CHAT_MODES), value="instruct", label="Mode", elem_id="chat-mode")
    template = gr.Dropdown([AUTO_TEMPLATE, *state.templates.names()], value=AUTO_TEMPLATE, label="Prompt template",
                           elem_id="chat-template")  # fmt: skip
    system = gr.Textbox(label="System prompt / context", lines=3, elem_id="chat-system")
    with gr.Row():
        user_name = gr.Textbox(value="You", label="Your name", min_width=100)
        bot_name = gr.Textbox(value="Assistant", label="Bot name", min_width=100)
    return {"mode": mode, "template": template, "system": system, "user_name": user_name, "bot_name": bot_name}


def wire(state: AppState, demo: gr.Blocks, tab: ChatTab, controls: ParamControls) -> None:
    t = tab
    shown = {"chatbot": t.chatbot, "ref": t.ref, "past": t.past, "prompt": t.prompt, "status": t.status,
             "settings": t.settings}  # fmt: skip
    turn_out = shown | {"message": t.message}
    turn_in = {"ref": t.ref, "settings": t.settings, "params": controls.inputs, "query": t.query}
    model = {"concurrency_id": "model", "show_progress_on": [t.chatbot]}
    listen(demo.load, h.on_page_load, state, {"ref": t.ref}, shown, show_progress="hidden")
    listen([t.send.click, t.message.submit], h.on_send, state, turn_in | {"message": t.message}, turn_out, **model)
    listen(t.regenerate.click, h.on_regenerate, state, turn_in, turn_out, **model)
    listen(t.cont.click, h.on_continue, state, turn_in, turn_out, **model)
    listen(t.stop.click, h.on_stop, state, None, None)
    edit_in = {"ref": t.ref, "settings": t.settings, "query": t.query}
    listen(t.remove.click, h.on_remove_last, state, edit_in, turn_out)
    listen(t.clear.click, h.on_clear, state, edit_in, shown)
    listen(t.past.input, h.on_open, state, {"past": t.past, "query": t.query}, shown)
    listen(t.new.click, h.on_new, state, None, shown)
    listen(t.query.input, h.on_search, state, {"query": t.query, "ref": t.ref}, {"past": t.past},
           show_progress="hidden", trigger_mode="always_last")  # fmt: skip
    confirm = {"confirm": t.confirm, "confirm_text": t.confirm_text, "status": t.status}
    listen(t.delete.click, h.on_delete_ask, state, {"ref": t.ref}, confirm)
    listen(t.confirm_delete.click, h.on_delete_confirm, state, {"ref": t.ref, "query": t.query}, shown | confirm)
    listen(t.cancel_delete.click, h.on_delete_cancel, state, None, confirm)
    listen(t.export.click, h.on_export, state, {"ref": t.ref}, {"files": t.files, "status": t.status})
    listen(t.upload.upload, h.on_import, state, {"upload": t.upload, "query": t.query}, shown)
