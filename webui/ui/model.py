"""Model tab: pick a model (autoload on select), its loader and settings (from detection, pattern defaults and the
user's saved values), the memory estimate before load and the measured memory after, Load / Unload / Reload,
"Save settings for this model" (the LoRA adapters applied included), the LoRA adapters box (`webui/ui/adapters.py`)
and the download box (`webui/ui/downloads.py`).

Handlers only call `state.models` (`webui/model_service.py`), `state.settings` and `webui/estimate.py`, and word
the result; every `CorralError` becomes a ⚠️ line in the status or details area, never a traceback."""

from __future__ import annotations

from typing import Any

import gradio as gr

from loaders import hardware
from loaders.errors import CorralError, InsufficientMemoryError
from loaders.settings import SETTINGS_CLASSES, settings_for
from loaders.units import format_bytes
from webui import estimate
from webui.estimate.local import GPU_LAYER_LOADERS
from webui.model_service import ModelView
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE
from webui.ui import adapters, downloads, loader_controls
from webui.ui.chat import ChatControls
from webui.ui.parameters import ParamControls


def build_tab(state: AppState, controls: ParamControls, chat: ChatControls) -> None:
    with gr.Row(equal_height=True):
        model_name = gr.Dropdown(choices=_names(state), value=None, label="Model", elem_id="model-dropdown", scale=4)
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="model-refresh")
        autoload = gr.Checkbox(value=True, label="Autoload the model on select", scale=1, elem_id="model-autoload")
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load")
        unload = gr.Button("Unload", elem_id="model-unload")
        reload = gr.Button("Reload the model", elem_id="model-reload")
        save = gr.Button("Save settings for this model", elem_id="model-save")
    force = gr.Checkbox(value=False, label="Load even if the memory estimate says it won't fit", elem_id="model-force")
    status = gr.Markdown(_status(state), elem_id="model-status")
    loader = gr.Dropdown(choices=list(SETTINGS_CLASSES), value="transformers", label="Loader", elem_id="model-loader")
    loader_ui = loader_controls.build()
    with gr.Row():
        estimate_btn = gr.Button("Estimate memory", elem_id="model-estimate")
        fit_btn = gr.Button("Fit GPU layers to free VRAM", visible=False, elem_id="model-fit")
    details = gr.Markdown(elem_id="model-details")
    with gr.Accordion("LoRA adapters", open=False, elem_id="lora-box"):
        adapters.build(state)
    with gr.Accordion("Download a model", open=True):
        downloads.build(state, on_models_changed=model_name, status=status, status_text=lambda: _status(state))

    settings_inputs = [loader, *loader_ui.inputs]
    view_outputs = [loader, *loader_ui.inputs, *loader_ui.groups.values(), fit_btn, details]

    def view_updates(view: ModelView) -> list[Any]:
        """Loader, its controls (only its group visible) and the detection text for a model's resolved settings."""
        resolved = view.resolved
        files = [f.name for f in view.detection.gguf_files]
        return [
            resolved.loader,
            *loader_ui.updates(resolved.loader, vars(resolved.loader_settings), files),
            *loader_ui.visibility(resolved.loader),
            gr.update(visible=resolved.loader in GPU_LAYER_LOADERS),
            _describe(view),
        ]

    def error_updates(error: CorralError) -> list[Any]:
        """A model that cannot be read: no loader controls (they would be another model's), the error in details."""
        hidden = [gr.update(visible=False)] * (len(loader_ui.groups) + 1)
        return [gr.skip(), *[gr.skip()] * len(loader_ui.inputs), *hidden, f"⚠️ {error}"]

    def on_select(name: str | None):
        skip_view = [gr.skip()] * (len(view_outputs) - 1)
        if not name:
            return [*skip_view, state.models.empty_message() or "", gr.skip(), gr.skip()]
        try:
            view = state.models.inspect(name)
        except CorralError as error:
            return [*error_updates(error), gr.skip(), gr.skip()]
        template = view.resolved.template or AUTO_TEMPLATE
        preset = gr.update(value=view.resolved.preset) if view.resolved.preset else gr.skip()
        return [*view_updates(view), gr.update(value=template), preset]

    def on_loader(name: str | None, loader_name: str):
        """Another loader picked: its controls, filled with this model's settings for that loader."""
        fit_visible = gr.update(visible=loader_name in GPU_LAYER_LOADERS)
        if not name:
            return [gr.skip(), *[gr.skip()] * len(loader_ui.inputs), *loader_ui.visibility(loader_name), fit_visible,
                    gr.skip()]  # fmt: skip
        try:
            return view_updates(state.models.inspect(name, loader=loader_name))
        except CorralError as error:
            return error_updates(error)

    def on_load(name: str | None, confirm: bool, loader_name: str, *values):
        if not name:
            yield f"⚠️ Pick a model first. {state.models.empty_message() or ''}".strip()
            return
        yield f"⏳ Loading **{name}** with **{loader_name}**…"
        try:
            settings = loader_ui.collect(loader_name, list(values))
            state.models.load(name, loader=loader_name, loader_settings=settings, confirm_memory=confirm)
        except InsufficientMemoryError as error:
            yield f"⚠️ {error}\n\nTick **Load even if the memory estimate says it won't fit** to try anyway."
            return
        except CorralError as error:
            yield f"⚠️ Could not load **{name}** with {loader_name}: {error}\n\n{_status(state)}"
            return
        yield _status(state)

    def on_autoload(name: str | None, auto: bool, confirm: bool, *rest):
        if not auto:
            yield gr.skip()
            return
        yield from on_load(name, confirm, *rest)

    def on_unload():
        state.models.unload()
        return _status(state)

    def on_save(name: str | None, template: str, preset: str, loader_name: str, *values):
        if not name:
            return "⚠️ Pick a model first."
        try:
            settings = loader_ui.collect(loader_name, list(values))
            warnings = state.models.save_settings(name, loader_name, settings, template=template, preset=preset)
        except CorralError as error:
            return f"⚠️ {error}"
        notes = "".join(f"\n\n⚠️ {w}" for w in warnings)
        return f"Saved settings for **{name}**. Click **Reload the model** to apply them.{notes}"

    def on_estimate(name: str | None, loader_name: str, *values):
        if not name:
            return "⚠️ Pick a model first."
        try:
            view = state.models.inspect(name, loader=loader_name,
                                        loader_settings=loader_ui.collect(loader_name, list(values)))
        except CorralError as error:
            return f"⚠️ No estimate: {error}"
        if view.plan is None or view.estimate is None:
            return f"⚠️ No estimate: {view.plan_error or 'a remote engine holds its memory on its own machine'}"
        return f"{view.plan.describe()}\n\n{format_estimate(view.estimate, hardware.snapshot())}"

    def on_fit(name: str | None, loader_name: str, *values):
        if not name:
            return gr.skip(), gr.skip(), "⚠️ Pick a model first."
        if loader_name not in GPU_LAYER_LOADERS:
            return gr.skip(), gr.skip(), f"⚠️ {loader_name} has no GPU-layer setting: pick its device instead."
        try:
            settings = settings_for(loader_name, loader_ui.collect(loader_name, list(values)))
            hw = hardware.snapshot()
            path = state.models.path_of(name)
            n = estimate.best_gpu_layers(path, loader_name, settings, hw)
            ctx = estimate.best_context(path, loader_name, settings, hw, n_gpu_layers=n)
        except CorralError as error:
            return gr.skip(), gr.skip(), f"⚠️ {error}"
        updates = [n if loader_name == x else gr.skip() for x in GPU_LAYER_LOADERS]
        return *updates, _fit_text(n, ctx, hw)

    def on_page_load():
        return gr.update(choices=_names(state)), _status(state)

    select_outputs = [*view_outputs, chat.template, controls.preset]
    selected = model_name.input(on_select, model_name, select_outputs)
    selected.then(on_autoload, [model_name, autoload, force, *settings_inputs], status, concurrency_id="model")
    loader.input(on_loader, [model_name, loader], view_outputs)
    refresh.click(lambda: gr.update(choices=_names(state)), None, model_name)
    gr.on(None, on_page_load, inputs=None, outputs=[model_name, status])  # a reload of the page sees new models
    for button in (load, reload):
        button.click(on_load, [model_name, force, *settings_inputs], status, concurrency_id="model")
    unload.click(on_unload, None, status, concurrency_id="model")
    save.click(on_save, [model_name, chat.template, controls.preset, *settings_inputs], status)
    estimate_btn.click(on_estimate, [model_name, *settings_inputs], details)
    gpu_layer_fields = [loader_ui.fields[x]["n_gpu_layers"] for x in GPU_LAYER_LOADERS]
    fit_btn.click(on_fit, [model_name, *settings_inputs], [*gpu_layer_fields, details])




def _names(state: AppState) -> list[str]:
    return state.models.names()


def _status(state: AppState) -> str:
    info = state.models.current_info
    if info is None:
        return state.models.empty_message() or "No model loaded: pick one above."
    model = info.model
    text = (
        f"**{model.name}** loaded with **{model.loader}** from `{model.path.name}` on {model.device} in "
        f"{model.load_seconds:.1f} s — context {model.context_length} tokens, "
        f"RAM {format_bytes(model.memory.ram_bytes)}"
    )
    if model.memory.total_vram:
        text += f", VRAM {format_bytes(model.memory.total_vram)}"
    est = info.estimate
    if est is not None:
        text += f" (estimated {format_bytes(est.ram_at_load)} at load, {format_bytes(est.ram)} at the full context"
        text += f"; VRAM {format_bytes(est.vram_at_load)} / {format_bytes(est.vram)})" if est.vram else ")"
    return text + "." + adapters.status_note(info)


def _describe(view: ModelView) -> str:
    """The detection and where each non-default setting came from, as Markdown."""
    d = view.detection
    facts = [f"loader **{d.loader}**", d.quant, d.architecture or d.model_type]
    if d.n_params:
        facts.append(f"{d.n_params / 1e9:.2f} B parameters")
    if d.context_length:
        facts.append(f"context {d.context_length}")
    if d.rope_theta:
        facts.append(f"RoPE base {d.rope_theta:g}")
    facts.append(f"chat template: {d.chat_template_source or 'none in the model files'}")
    lines = ["**Detected:** " + " · ".join(f for f in facts if f), "", "**Why:**"]
    lines += [f"- {reason}" for reason in d.reasons]
    chosen = {k: v for k, v in view.resolved.sources.items() if v.layer != "default"}
    if chosen:
        lines += ["", "**Settings:** " + "; ".join(f"`{k}` {v}" for k, v in chosen.items())]
    if view.plan is not None:
        lines += ["", f"**Plan:** {view.plan.describe()}"]
    if view.estimate is not None:
        lines += ["", f"**Memory:** {format_bytes(view.estimate.ram_at_load)} RAM at load, "
                  f"{format_bytes(view.estimate.ram)} at the full context of {view.estimate.ctx} tokens"
                  + (f"; VRAM {format_bytes(view.estimate.vram_at_load)} / {format_bytes(view.estimate.vram)}"
                     if view.estimate.vram else "")]  # fmt: skip
    if view.plan_error:
        lines += ["", f"⚠️ {view.plan_error}"]
    lines += [f"\n⚠️ {w}" for w in view.warnings]
    return "\n".join(lines)


def _fit_text(n: int, ctx: int, hw: hardware.Hardware) -> str:
    if not hw.gpus:
        return f"No GPU on this machine: n_gpu_layers 0. The longest context that fits in RAM is {ctx} tokens."
    return f"{n} layers fit in free VRAM at this context length; with {n} layers, up to {ctx} tokens of context fit."


def format_estimate(est: estimate.Estimate, hw: hardware.Hardware) -> str:
    fit = est.fit(hw)
    rows = [
        "| device | weights | KV cache | buffers | overhead | at load | at full context | free |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for device, parts in est.parts.items():
        need, free = fit.devices[device]
        cells = [format_bytes(parts[p]) for p in ("weights", "kv_cache", "buffers", "overhead")]
        rows.append(f"| {'RAM' if device == 'ram' else device} | {' | '.join(cells)} | "
                    f"{format_bytes(est.device_at_load(device))} | **{format_bytes(need)}** | {format_bytes(free)} |")
    mark = {"fits": "✅ fits", "tight": "🟡 tight", "won't fit": "❌ won't fit"}[fit.verdict]
    gpu = f", {est.n_gpu_layers} of {est.n_layers} layers on the GPU" if est.vram else ""
    notes = "".join(f"\n\n{note}" for note in est.notes)
    return f"**Memory estimate ({est.loader}, context {est.ctx}{gpu}): {mark}**\n\n" + "\n".join(rows) + notes
