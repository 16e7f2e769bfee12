"""The Gradio app: one Blocks with the Chat, Notebook, Parameters and Model tabs, built from the one AppState.

Each tab lives in its own module and only calls services; this module only assembles them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.state import AppState
from webui.ui import chat, model, notebook, parameters

CSS = """
#chat-status, #notebook-status, #model-status { min-height: 1.5em; }
"""


def build_ui(state: AppState) -> gr.Blocks:
    with gr.Blocks(title="Corral") as demo:
        controls = parameters.create_controls(state)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_controls = chat.build_tab(state, controls)
            with gr.Tab("Notebook", id="notebook"):
                notebook.build_tab(state, controls)
            with gr.Tab("Parameters", id="parameters"):
                parameters.build_tab(state, controls)
            with gr.Tab("Model", id="model"):
                model.build_tab(state, controls, chat_controls)
    return demo


def launch_kwargs(state: AppState) -> dict[str, Any]:
    """Options that gradio 6 takes at launch rather than in Blocks()."""
    return {"css": CSS, "theme": gr.themes.Soft()}
