"""The Model tab's LoRA adapters box: the adapters of the loras folder that fit the loaded model, applied several at
a time with a scale each, removed, and shown; "Save settings for this model" stores the ones applied.

Handlers only call `state.models` (`set_adapters`, `adapter_fits`); every `CorralError` becomes a ⚠️ line."""

from __future__ import annotations

from typing import Any

import gradio as gr

from loaders.errors import CorralError, SettingsError
from loaders.lora import AdapterChoice
from webui.state import AppState


def build(state: AppState) -> None:
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

    def on_refresh():
        return _choices(state), describe(state)

    def on_apply(chosen: list[str] | None, scale_text: str):
        try:
            state.models.set_adapters(parse_choices(chosen or [], scale_text))
        except CorralError as error:
            return f"⚠️ {error}\n\n{describe(state)}"
        return describe(state)

    def on_remove():
        try:
            state.models.set_adapters([])
        except CorralError as error:
            return gr.skip(), f"⚠️ {error}"
        return gr.update(value=[]), describe(state)

    refresh.click(on_refresh, None, [names, status])
    apply.click(on_apply, [names, scales], status, concurrency_id="model")
    remove.click(on_remove, None, [names, status], concurrency_id="model")
    gr.on(None, on_refresh, inputs=None, outputs=[names, status])  # each page load sees the current folder and model


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


def _choices(state: AppState) -> Any:
    info = state.models.current_info
    fitting = [f.name for f in state.models.adapter_fits() if f.fits]
    active = [c.name for c in info.adapters.active] if info is not None and info.adapters is not None else []
    return gr.update(choices=fitting, value=active)


def status_note(info: Any) -> str:
    """" LoRA: a × 1, b × 0.5." (and what the load could not apply) for the Model tab's status line."""
    active = info.adapters.active if info.adapters is not None else ()
    note = " LoRA: " + ", ".join(f"{c.name} × {c.scale:g}" for c in active) + "." if active else ""
    return note + "".join(f"\n\n⚠️ {w}" for w in info.warnings)


def describe(state: AppState) -> str:
    """The active adapters and, for those that do not fit, why."""
    info = state.models.current_info
    if info is None:
        folder = state.config.loras_dir
        return f"Load a model to apply LoRA adapters (from {folder})."
    active = info.adapters.active if info.adapters is not None else ()
    lines = ["**Active:** " + (", ".join(f"{c.name} × {c.scale:g}" for c in active) or "none")]
    lines += [f"- ⚠️ {w}" for w in info.warnings]
    lines += [f"- {f.name}: does not fit ({f.problem})" for f in state.models.adapter_fits() if not f.fits]
    return "\n".join(lines)
