"""The Gradio app: one Blocks with the Chat, Notebook, Parameters and Model tabs, built from the one AppState.

Each tab module builds its layout (`build_tab`, returning its components) and wires its handlers (`wire`) apart;
this module only assembles them and holds the page's CSS (the Past chats list, the Prompt view, the memory bar, the
job list, and a phone-width layout). No emoji anywhere: marks are words and CSS shapes.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.state import AppState
from webui.ui import chat, model, notebook, parameters

CSS = """
#chat-status, #notebook-status, #model-status { min-height: 1.5em; }
#chat-past { max-height: 420px; overflow-y: auto; }
#chat-past .wrap { flex-direction: column; gap: 2px; }
#chat-past label { width: 100%; white-space: normal; overflow-wrap: anywhere; }
#download-gguf-file .wrap { flex-direction: column; gap: 2px; }
#download-gguf-file label { width: 100%; white-space: normal; overflow-wrap: anywhere; }
#download-files td:nth-child(2), #download-estimates td:not(:first-child) { white-space: nowrap; }
#download-files table, #download-estimates table { display: block; overflow-x: auto; }
#download-files td:first-child, #download-estimates td:first-child { overflow-wrap: anywhere; min-width: 8em; }
#download-files td:nth-child(3) { min-width: 10em; word-break: normal; overflow-wrap: normal; }
@media (max-width: 720px) {
  #chat-layout { flex-direction: column; }
  #chat-main { order: 1; }
  #chat-side { order: 2; }
  #chat-past { max-height: 240px; }
}

.corral-prompt { font-size: 0.9em; }
.corral-prompt .pv-head { margin: 4px 0; }
.corral-prompt .pv-cut { color: #b45309; }
.corral-prompt .pv-bar { height: 6px; background: #e5e7eb; border-radius: 3px; margin: 4px 0 8px; }
.corral-prompt .pv-bar > div { height: 100%; background: #6366f1; border-radius: 3px; }
.corral-prompt .pv-label { font-weight: 600; margin-top: 6px; }
.corral-prompt .pv-text { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 320px; overflow-y: auto;
  background: #f8fafc; color: #0f172a; border: 1px solid #e2e8f0; border-radius: 6px; padding: 8px; margin: 4px 0; }
.corral-prompt .pv-chips { display: flex; flex-wrap: wrap; gap: 2px; max-height: 320px; overflow-y: auto; }
.corral-prompt .pv-note, .corral-prompt .pv-gap { color: #64748b; font-style: italic; margin: 2px 6px; }
.corral-prompt .tok { display: inline-flex; flex-direction: column; align-items: center; border: 1px solid #cbd5e1;
  border-radius: 4px; padding: 0 3px; font-family: monospace; font-size: 0.85em; background: #fff; color: #0f172a; }
.corral-prompt .tok .i { font-size: 0.75em; color: #64748b; }
.corral-prompt .tok.bos { background: #dcfce7; border-color: #16a34a; }
.corral-prompt .tok.eos { background: #fee2e2; border-color: #dc2626; }
.corral-prompt .tok.special { background: #e0e7ff; border-color: #6366f1; }

.corral-memory { font-size: 0.9em; margin: 6px 0; }
.corral-memory .mb-title { font-weight: 600; margin-bottom: 4px; }
.corral-memory .mb-row { margin: 6px 0; }
.corral-memory .mb-name { font-weight: 600; }
.corral-memory .mb-bar { position: relative; display: flex; height: 18px; background: #e5e7eb; border-radius: 4px;
  overflow: hidden; margin: 2px 0; }
.corral-memory .mb-seg.weights, .corral-memory .mb-key.weights { background: #2563eb; }
.corral-memory .mb-seg.kv_cache, .corral-memory .mb-key.kv_cache { background: #f59e0b; }
.corral-memory .mb-seg.buffers, .corral-memory .mb-key.buffers { background: #10b981; }
.corral-memory .mb-seg.overhead, .corral-memory .mb-key.overhead { background: #94a3b8; }
.corral-memory .mb-bar.thin { height: 8px; }
.corral-memory .mb-seg.need { background: #6366f1; }
.corral-memory .mb-mark { position: absolute; top: 0; bottom: 0; width: 2px; }
.corral-memory .mb-mark.load { background: #111827; }
.corral-memory .mb-mark.free { background: #dc2626; width: 3px; }
.corral-memory .mb-key { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; border-radius: 2px; }
.corral-memory .mb-verdict { font-weight: 600; padding: 0 6px; border-radius: 3px; }
.corral-memory .mb-verdict.fits { background: #dcfce7; color: #166534; }
.corral-memory .mb-verdict.tight { background: #fef3c7; color: #92400e; }
.corral-memory .mb-verdict.wont.fit { background: #fee2e2; color: #991b1b; }
.corral-memory .mb-parts, .corral-memory .mb-note { color: #64748b; }

.corral-jobs .job { border: 1px solid #e2e8f0; border-radius: 6px; padding: 6px 8px; margin: 6px 0; }
.corral-jobs .job-head { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.corral-jobs .job-head b { overflow-wrap: anywhere; }
.corral-jobs .job-gguf { color: #475569; overflow-wrap: anywhere; }
.corral-jobs .job-actions { margin-left: auto; display: flex; gap: 4px; }
.corral-jobs .job-btn { border: 1px solid #cbd5e1; border-radius: 4px; padding: 1px 10px; background: #f8fafc;
  color: #0f172a; cursor: pointer; }
.corral-jobs .job-btn.cancel { border-color: #dc2626; color: #b91c1c; }
.corral-jobs .job-btn.resume { border-color: #2563eb; color: #1d4ed8; }
.corral-jobs .job-state { font-weight: 600; padding: 0 6px; border-radius: 3px; background: #e2e8f0; color: #0f172a; }
.corral-jobs .job-state.done { background: #dcfce7; color: #166534; }
.corral-jobs .job-state.failed { background: #fee2e2; color: #991b1b; }
.corral-jobs .job-state.cancelled { background: #fef3c7; color: #92400e; }
.corral-jobs .job-bar { height: 8px; background: #e5e7eb; border-radius: 4px; overflow: hidden; margin: 4px 0; }
.corral-jobs .job-bar > div { height: 100%; background: #2563eb; }
.corral-jobs .job-bar.done > div { background: #16a34a; }
.corral-jobs .job-bar.verifying > div { background: #8b5cf6; }
.corral-jobs .job-bar.failed > div, .corral-jobs .job-bar.cancelled > div { background: #d97706; }
.corral-jobs .job-msg, .corral-jobs .job-files { color: #475569; font-size: 0.9em; overflow-wrap: anywhere; }
.corral-jobs .job-error { color: #b91c1c; font-size: 0.9em; overflow-wrap: anywhere; }
.corral-jobs .job-files { margin: 2px 0 0 1.2em; }
"""


def build_ui(state: AppState) -> gr.Blocks:
    with gr.Blocks(title="Corral") as demo:
        controls = parameters.create_controls(state)
        open_chat, notebook_text = chat.open_chat(), notebook.saved_text()  # the browser's own storage
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_tab = chat.build_tab(state, open_chat)
            with gr.Tab("Notebook", id="notebook"):
                notebook_tab = notebook.build_tab(notebook_text)
            with gr.Tab("Parameters", id="parameters"):
                params_tab = parameters.build_tab(controls)
            with gr.Tab("Model", id="model"):
                model_tab = model.build_tab(state)
        chat.wire(state, demo, chat_tab, controls)
        notebook.wire(state, demo, notebook_tab, controls)
        parameters.wire(state, demo, controls, params_tab)
        model.wire(state, demo, model_tab, chat_tab, controls, params_tab)
    return demo


def launch_kwargs(state: AppState) -> dict[str, Any]:
    """Options that gradio 6 takes at launch rather than in Blocks()."""
    return {"css": CSS, "theme": gr.themes.Soft()}
