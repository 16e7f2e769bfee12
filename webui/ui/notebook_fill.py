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
from webui.state import AppState
from webui.ui.common import error_text, format_stats

CONTINUE, FILL = "Continue the text", "Fill in the middle"


def mode_control() -> gr.Radio:
    return gr.Radio([CONTINUE, FILL], value=CONTINUE, label="Mode", elem_id="notebook-mode",
                    info=f"Fill in the middle: write {FILL_ME} where the code is missing (code models with FIM "
                         "tokens: CodeLlama, StarCoder, DeepSeek-Coder, Qwen2.5-Coder)")  # fmt: skip


def is_fill(mode: str | None) -> bool:
    return mode == FILL


def run(state: AppState, session: str, current: str, params: GenerationParams) -> Iterator[tuple[str, str, str]]:
    """(text, text before, status) updates: the gap filled as the middle streams in."""
    yield current, current, "Filling in the middle…"
    try:
        prefix, suffix = infill.fill_parts(current)
        for update in state.generation.stream(session, infill.infill_turn(prefix, suffix, lambda _info: params)):
            status = format_stats(update.stats) if update.stats else "Filling in the middle…"
            yield prefix + update.text + suffix, current, status
    except Exception as error:  # noqa: BLE001 - error_text shows ours and logs anything else as a bug
        yield current, current, error_text(error, "filling in the middle")
