"""The Model tab's LoRA adapters box: the adapters of the loras folder that fit the loaded model, applied several at
a time with a scale each, removed, and shown; "Save settings for this model" stores the ones applied.

Handlers only call `state.models` (`set_adapters`, `adapter_fits`); every `CorralError` becomes an "Error:" line.
The box fills itself from the server's state when a page opens, and again after a load, an unload or a refresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from loaders.errors import CorralError, SettingsError
from loaders.lora import AdapterChoice
from webui.state import AppState
from webui.ui.common import ERROR, WARNING
from webui.ui.wiring import Ctx, Values, listen


@dataclass
class AdaptersBox:
    names: gr.Dropdown
    scales: gr.Textbox
    apply: gr.Button
    remove: gr.Button
    refresh: gr.Button
    status: gr.Markdown


def build() -> AdaptersBox:
    with gr.Row(equal_height=True):
        names = gr.Dropdown(choices=[], value=[], multiselect=True, label="LoRA adapters (in order)", scale=4,
                            elem_id="lora-names")  # fmt: skip
        scales = gr.Textbox(value="", label="Scales", info="one per adapter, e.g. 1, 0.5 (empty = 1 each)", scale=2,
                            elem_id="lora-scales")  # fmt: skip
    with gr.Row():
        apply = gr.Button("Apply adapters", elem_id="lora-apply")
        remove = gr.Button("Remove all", elem_id="lora-remove")
        refresh = gr.Button("Refresh", elem_id="lora-refresh")
    status = gr.Markdown(elem_id="lora-status")
    return AdaptersBox(names, scales, apply, remove, refresh, status)


def on_refresh(state: AppState, values: Values, ctx: Ctx) -> Values:
    """The adapters that fit the loaded model (those applied selected, with their scales) and the box's status."""
    info = state.models.current_info
    active = info.adapters.active if info is not None and info.adapters is not None else ()
    fitting = [f.name for f in state.models.adapter_fits() if f.fits]
    return {"names": gr.update(choices=fitting, value=[c.name for c in active]),
            "scales": ", ".join(f"{c.scale:g}" for c in active), "status": describe(state)}  # fmt: skip


def on_apply(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        state.models.set_adapters(parse_choices(values["names"] or [], values["scales"] or ""))
    except CorralError as error:
        return {"status": f"{ERROR} {error}\n\n{describe(state)}"}
    return {"status": describe(state)}


def on_remove(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        state.models.set_adapters([])
    except CorralError as error:
        return {"status": f"{ERROR} {error}"}
    return {"names": gr.update(value=[]), "scales": "", "status": describe(state)}


def wire(state: AppState, demo: gr.Blocks, box: AdaptersBox, *, model_status: gr.Markdown) -> None:
    shown = {"names": box.names, "scales": box.scales, "status": box.status}
    listen([demo.load, box.refresh.click, model_status.change], on_refresh, state, None, shown,
           show_progress="hidden")  # fmt: skip
    listen(box.apply.click, on_apply, state, {"names": box.names, "scales": box.scales}, {"status": box.status},
           concurrency_id="model")  # fmt: skip
    listen(box.remove.click, on_remove, state, None, shown, concurrency_id="model")


def parse_choices(names: list[str], scale_text: str) -> list[AdapterChoice]:
    """Adapters in order with their scales from "1, 0.5" (empty: 1 each); a count or number that is off is refused."""
    parts = [p.strip() for p in scale_text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        parts = ["1"] * len(names)
    if len(parts) != len(names):
        raise SettingsError(f"Give one scale per adapter: {len(names)} adapters, {len(parts)} scales.")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SettingsError(f"Scales are numbers such as 1 or 0.5, not {scale_text[:40]!r}.") from None
    return [AdapterChoice(name, value) for name, value in zip(names, values, strict=True)]


def status_note(info: Any) -> str:
    """" LoRA: a × 1, b × 0.5." (and what the load could not apply) for the Model tab's status line."""
    active = info.adapters.active if info.adapters is not None else ()
    note = " LoRA: " + ", ".join(f"{c.name} × {c.scale:g}" for c in active) + "." if active else ""
    return note + "".join(f"\n\n{WARNING} {w}" for w in info.warnings)


def describe(state: AppState) -> str:
    """The active adapters and, for those that do not fit, why."""
    info = state.models.current_info
    if info is None:
        return f"Load a model to apply LoRA adapters (from {state.config.loras_dir})."
    active = info.adapters.active if info.adapters is not None else ()
    lines = ["**Active:** " + (", ".join(f"{c.name} × {c.scale:g}" for c in active) or "none")]
    lines += [f"- {WARNING} {w}" for w in info.warnings]
    lines += [f"- {f.name}: does not fit ({f.problem})" for f in state.models.adapter_fits() if not f.fits]
    return "\n".join(lines)
