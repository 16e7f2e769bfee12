"""The Notebook's "Fill in the middle" mode, as a control and a handler the Notebook tab hosts.

The user writes `<FILL_ME>` where code is missing; Generate fills the gap with the model's FIM prompt
(`webui/infill.py`) and streams the middle into the text in place, prefix and suffix untouched. Undo brings back the
text with its `<FILL_ME>`.
"""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from loaders.base import GenerationParams
from loaders.fim import FILL_ME
from webui import infill
from webui.generation import status_text
from webui.prompt_record import recording
from webui.state import AppState
from webui.ui.common import error_text
from webui.ui.prompt_view import prompt_html
from webui.ui.wiring import Values

CONTINUE, FILL = "Continue the text", "Fill in the middle"


def mode_control() -> gr.Radio:
    return gr.Radio([CONTINUE, FILL], value=CONTINUE, label="Mode", elem_id="notebook-mode",
                    info=f"Fill in the middle: write {FILL_ME} where the code is missing (code models with FIM "
                         "tokens: CodeLlama, StarCoder, DeepSeek-Coder, Qwen2.5-Coder)")  # fmt: skip


def is_fill(mode: str | None) -> bool:
    return mode == FILL


def on_fill(state: AppState, current: str, params: GenerationParams, session: str, key: str) -> Iterator[Values]:
    """The Notebook's updates while the middle streams into the gap (the text with its `<FILL_ME>` kept for Undo);
    the prompt is recorded under `key` for the Prompt view."""
    yield {"before": current, "status": "Filling in the middle..."}
    try:
        prefix, suffix = infill.fill_parts(current)
        build = recording(infill.infill_turn(prefix, suffix, lambda _info: params), state.prompts, key)
        for update in state.generation.stream(session, build):
            yield {"text": prefix + update.text + suffix, "status": status_text(update)}
    except Exception as error:  # noqa: BLE001 - error_text shows ours and logs anything else as a bug
        yield {"text": current, "status": error_text(error, "filling in the middle")}
    yield {"prompt": prompt_html(state.prompts.get(key))}
