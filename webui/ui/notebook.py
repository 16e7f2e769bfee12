"""Notebook tab: one free-text box; Generate continues the text in place (streaming), or fills its `<FILL_ME>` in
"Fill in the middle" mode (`notebook_fill.py`); Stop, Undo, Regenerate, a token count, and the Prompt view of the
last request. The text before each generation is kept per browser session
for Undo / Regenerate; the text itself is kept in the browser (BrowserState, written by the browser alone, no
server call per keystroke), so a reload of the page does not lose it.

Layout (`build_tab`), handlers (`on_*`, plain functions of named values) and wiring (`wire`) are apart, so a new
mode (e.g. fill-in-the-middle) adds its controls to `NotebookTab`, a handler, and a line in `wire`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr

from loaders.errors import CorralError
from webui.generation import raw_turn, status_text
from webui.prompt_record import recording
from webui.state import AppState
from webui.ui import notebook_fill
from webui.ui.common import error_text
from webui.ui.parameters import ParamControls, params_from_values
from webui.ui.prompt_view import prompt_html
from webui.ui.wiring import Ctx, Values, listen

SAVED_TEXT_KEY = "corral-notebook"
SAVED_TEXT_SECRET = "corral-notebook-v1"  # a fixed key: the text is found again after a server restart


@dataclass
class NotebookTab:
    text: gr.Textbox
    mode: gr.Radio
    saved: gr.BrowserState
    before: gr.State
    generate: gr.Button
    stop: gr.Button
    undo: gr.Button
    regenerate: gr.Button
    count: gr.Button
    status: gr.Markdown
    prompt: gr.HTML


def saved_text() -> gr.BrowserState:
    """The text as the browser keeps it; made outside the tabs, so it is read as the page opens (a component in a
    tab not shown yet is not mounted, and would still hold its default when the page-load event reads it)."""
    return gr.BrowserState({"text": ""}, storage_key=SAVED_TEXT_KEY, secret=SAVED_TEXT_SECRET)


def build_tab(saved: gr.BrowserState) -> NotebookTab:
    text = gr.Textbox(lines=20, max_lines=40, label="Text", elem_id="notebook-text",
                      placeholder="Write here; Generate continues it.")  # fmt: skip
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate", min_width=80)
        stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop", min_width=80)
        undo = gr.Button("Undo", elem_id="notebook-undo", min_width=80)
        regenerate = gr.Button("Regenerate", elem_id="notebook-regenerate", min_width=80)
        count = gr.Button("Count tokens", elem_id="notebook-count", min_width=80)
    mode = notebook_fill.mode_control()
    status = gr.Markdown(elem_id="notebook-status")
    with gr.Accordion("Prompt (the last request, exactly as sent)", open=False, elem_id="notebook-prompt-view"):
        prompt = gr.HTML(prompt_html(None), elem_id="notebook-prompt", js_on_load=None)
    before = gr.State("")  # the text as it was before the last generation
    return NotebookTab(text, mode, saved, before, generate, stop, undo, regenerate, count, status, prompt)


def prompt_key(session: str) -> str:
    return f"notebook:{session}"


def on_page_load(state: AppState, values: Values, ctx: Ctx) -> Values:
    saved = values["saved"]
    return {"text": saved.get("text", "") if isinstance(saved, dict) else ""}


def on_generate(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    """Continue `text` in place, streaming; the text before is kept for Undo and Regenerate."""
    current = values["text"] or ""
    key = prompt_key(ctx.session)
    try:
        params = params_from_values(values["params"])  # a bad reply format is said here, the text untouched
    except (CorralError, ValueError) as error:
        yield {"status": error_text(error, "reading the parameters")}
        return
    if notebook_fill.is_fill(values["mode"]):
        yield from notebook_fill.on_fill(state, current, params, ctx.session, key)
        return
    yield {"before": current, "status": "Generating..."}
    try:
        build = recording(raw_turn(current, params), state.prompts, key)
        for update in state.generation.stream(ctx.session, build):
            status = status_text(update)
            yield {"text": current + update.text, "status": status}
    except Exception as error:  # noqa: BLE001 - error_text shows ours and logs anything else as a bug
        yield {"text": current, "status": error_text(error, "generating")}
    yield {"prompt": prompt_html(state.prompts.get(key))}


def on_regenerate(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    yield from on_generate(state, values | {"text": values["before"]}, ctx)


def on_undo(state: AppState, values: Values, ctx: Ctx) -> Values:
    return {"text": values["before"], "status": "Undone."}


def on_count(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        return {"status": f"{state.generation.count_tokens(values['text'] or '')} tokens"}
    except Exception as error:  # noqa: BLE001 - as above
        return {"status": error_text(error, "counting tokens")}


def on_stop(state: AppState, values: Values, ctx: Ctx) -> Values:
    state.generation.stop(ctx.session)
    return {}


def wire(state: AppState, demo: gr.Blocks, tab: NotebookTab, controls: ParamControls) -> None:
    out = {"text": tab.text, "before": tab.before, "status": tab.status, "prompt": tab.prompt}
    inputs = {"text": tab.text, "mode": tab.mode, "before": tab.before, "params": controls.inputs}
    listen(demo.load, on_page_load, state, {"saved": tab.saved}, {"text": tab.text}, show_progress="hidden")
    # The browser copies the text into its own storage after each edit and each generation: no server call.
    # (Not on every change: the empty box a page starts with would overwrite the saved text before it is read.)
    keep = {"fn": None, "inputs": tab.text, "outputs": tab.saved, "js": "(text) => ({text: text})"}
    tab.text.input(**keep)
    for done in (
        listen(tab.generate.click, on_generate, state, inputs, out, concurrency_id="model"),
        listen(tab.regenerate.click, on_regenerate, state, inputs, out, concurrency_id="model"),
        listen(tab.undo.click, on_undo, state, {"before": tab.before}, out),
    ):
        done.then(**keep)
    listen(tab.stop.click, on_stop, state, None, None)
    listen(tab.count.click, on_count, state, {"text": tab.text}, out)
