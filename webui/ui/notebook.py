"""Notebook tab: one free-text box; Generate continues the text in place (streaming), or fills its `<FILL_ME>` in
"Fill in the middle" mode (`notebook_fill.py`); Stop, Undo, Regenerate, and a token count. The text before each
generation is kept per browser session for Undo / Regenerate."""

from __future__ import annotations

import gradio as gr

from webui.generation import raw_turn
from webui.state import AppState
from webui.ui import notebook_fill
from webui.ui.common import error_text, format_stats, session_id, stopper
from webui.ui.parameters import ParamControls


def build_tab(state: AppState, controls: ParamControls) -> None:
    text = gr.Textbox(
        lines=20, max_lines=40, label="Text", elem_id="notebook-text", placeholder="Write here; Generate continues it."
    )
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate")
        stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
        undo = gr.Button("Undo")
        regenerate = gr.Button("Regenerate")
        count = gr.Button("Count tokens")
    mode = notebook_fill.mode_control()
    status = gr.Markdown(elem_id="notebook-status")
    before = gr.State("")  # the text as it was before the last generation

    def run(request: gr.Request, current: str, mode_value: str, *values):
        params = controls.to_params(*values)
        if notebook_fill.is_fill(mode_value):
            yield from notebook_fill.run(state, session_id(request), current, params)
            return
        yield current, current, "Generating…"
        try:
            for update in state.generation.stream(session_id(request), raw_turn(current, params)):
                yield current + update.text, current, format_stats(update.stats) if update.stats else "Generating…"
        except Exception as error:  # noqa: BLE001 - error_text shows ours and logs anything else as a bug
            yield current, current, error_text(error, "generating")

    def on_count(current: str):
        try:
            return f"{state.generation.count_tokens(current)} tokens"
        except Exception as error:  # noqa: BLE001 - as above
            return error_text(error, "counting tokens")

    inputs = [text, mode, *controls.inputs]
    generate.click(run, inputs, [text, before, status], concurrency_id="model")
    regenerate.click(lambda b: b, before, text).then(
        run, [before, mode, *controls.inputs], [text, before, status], concurrency_id="model"
    )
    undo.click(lambda b: (b, "Undone."), before, [text, status])
    stop.click(stopper(state), None, None)
    count.click(on_count, text, status)
