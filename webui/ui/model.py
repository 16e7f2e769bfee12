"""Model tab: pick a model (autoload on select), its loader and settings (from detection, pattern defaults and the
user's saved values), the memory estimate before load and the measured memory after, Load / Unload / Reload,
"Save settings for this model", and the download box (`webui/ui/downloads.py`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import gradio as gr

from loaders.settings import SETTINGS_CLASSES, settings_for
from webui import estimate, hardware
from webui.errors import CorralError, InsufficientMemoryError
from webui.settings import ModelSettings
from webui.state import AppState
from webui.ui import downloads, loader_controls
from webui.ui.chat import ChatControls
from webui.ui.parameters import ParamControls

GB = 1024**3


def build_tab(state: AppState, controls: ParamControls, chat: ChatControls) -> None:
    with gr.Row():
        model_name = gr.Dropdown(choices=_names(state), value=None, label="Model", elem_id="model-dropdown", scale=4)
        refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="model-refresh")
        autoload = gr.Checkbox(value=True, label="Autoload the model", scale=1, elem_id="model-autoload")
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load")
        unload = gr.Button("Unload", elem_id="model-unload")
        reload = gr.Button("Reload the model", elem_id="model-reload")
        save = gr.Button("Save settings for this model", elem_id="model-save")
        force = gr.Checkbox(value=False, label="Load even if the estimate says it won't fit", elem_id="model-force")
    status = gr.Markdown(_status(state), elem_id="model-status")
    loader = gr.Dropdown(choices=list(SETTINGS_CLASSES), value="transformers", label="Loader", elem_id="model-loader")
    loader_ui = loader_controls.build()
    with gr.Row():
        estimate_btn = gr.Button("Estimate memory")
        fit_btn = gr.Button("Fit GPU layers to free VRAM")
    details = gr.Markdown(elem_id="model-details")
    with gr.Accordion("Download a model", open=True):
        downloads.build(state, on_models_changed=model_name)

    settings_inputs = [loader, *loader_ui.inputs]

    def on_select(name: str | None):
        if not name:
            return [gr.skip()] * (2 + len(loader_ui.inputs) + len(loader_ui.groups) + 1) + [gr.skip()]
        try:
            view = state.models.inspect(name)
        except CorralError as error:
            return [gr.skip()] * (1 + len(loader_ui.inputs) + len(loader_ui.groups)) + [
                f"⚠️ {error}",
                gr.skip(),
                gr.skip(),
            ]
        resolved = view.resolved
        files = [f.name for f in view.detection.gguf_files]
        template = resolved.template or state.templates.auto_select(name, view.detection.chat_template)
        return [
            resolved.loader,
            *loader_ui.updates(resolved.loader, asdict(resolved.loader_settings), files),
            *loader_ui.visibility(resolved.loader),
            _describe(view),
            gr.update(value=template),
            gr.update(value=resolved.preset) if resolved.preset else gr.skip(),
        ]

    def on_load(name: str | None, confirm: bool, loader_name: str, *values):
        if not name:
            return "⚠️ Pick a model first."
        try:
            settings = loader_ui.collect(loader_name, list(values))
            state.models.load(name, loader=loader_name, loader_settings=settings, confirm_memory=confirm)
        except InsufficientMemoryError as error:
            return f"⚠️ {error}\n\nTick **Load even if the estimate says it won't fit** to try anyway."
        except (CorralError, ValueError) as error:
            return f"⚠️ {error}"
        return _status(state)

    def on_unload():
        state.models.unload()
        return _status(state)

    def on_save(name: str | None, template: str, preset: str, loader_name: str, *values):
        if not name:
            return "⚠️ Pick a model first."
        loader_settings = loader_ui.collect(loader_name, list(values))
        context = loader_settings.get("n_ctx") or loader_settings.get("context_length") or None
        try:
            warnings = state.settings.save(
                name,
                ModelSettings(
                    loader=loader_name,
                    loader_settings=loader_settings,
                    template=template,
                    preset=preset,
                    context_length=context,
                ),
            )
        except CorralError as error:
            return f"⚠️ {error}"
        notes = "".join(f"\n\n⚠️ {w}" for w in warnings)
        return f"Saved settings for **{name}**. Click **Reload the model** to apply them.{notes}"

    def on_estimate(name: str | None, loader_name: str, *values):
        if not name:
            return "⚠️ Pick a model first."
        try:
            settings = settings_for(loader_name, loader_ui.collect(loader_name, list(values)))
            est = estimate.estimate_local(state.models.path_of(name), loader_name, settings)
        except (CorralError, ValueError) as error:
            return f"⚠️ {error}"
        return format_estimate(est, hardware.snapshot())

    def on_fit(name: str | None, loader_name: str, *values):
        if not name:
            return gr.skip(), "⚠️ Pick a model first."
        try:
            settings = settings_for(loader_name, loader_ui.collect(loader_name, list(values)))
            n = estimate.best_gpu_layers(state.models.path_of(name), loader_name, settings, hardware.snapshot())
        except (CorralError, ValueError, AttributeError) as error:
            return gr.skip(), f"⚠️ {error}"
        return n, f"{n} layers fit in free VRAM at this context length."

    select_outputs = [loader, *loader_ui.inputs, *loader_ui.groups.values(), details, chat.template, controls.preset]
    selected = model_name.input(on_select, model_name, select_outputs)
    selected.then(
        lambda name, auto, confirm, *rest: on_load(name, confirm, *rest) if auto else gr.skip(),
        [model_name, autoload, force, *settings_inputs],
        status,
        concurrency_id="model",
    )
    loader.input(loader_ui.visibility, loader, list(loader_ui.groups.values()))
    refresh.click(lambda: gr.update(choices=_names(state)), None, model_name)
    load.click(on_load, [model_name, force, *settings_inputs], status, concurrency_id="model")
    reload.click(lambda *a: on_load(*a), [model_name, force, *settings_inputs], status, concurrency_id="model")
    unload.click(on_unload, None, status, concurrency_id="model")
    save.click(on_save, [model_name, chat.template, controls.preset, *settings_inputs], status)
    estimate_btn.click(on_estimate, [model_name, *settings_inputs], details)
    gpu_layer_fields = [loader_ui.fields[x]["n_gpu_layers"] for x in ("llama.cpp", "gguf")]
    fit_btn.click(on_fit, [model_name, *settings_inputs], [gpu_layer_fields[0], details])


def _names(state: AppState) -> list[str]:
    return state.models.names()


def _status(state: AppState) -> str:
    info = state.models.current_info
    if info is None:
        return "No model loaded."
    model = info.model
    text = (
        f"**{model.name}** loaded with **{model.loader}** on {model.device} in {model.load_seconds:.1f} s — "
        f"RAM {model.memory.ram_bytes / GB:.2f} GB"
    )
    if model.memory.total_vram:
        text += f", VRAM {model.memory.total_vram / GB:.2f} GB"
    if info.estimate is not None:
        text += f" (estimated RAM {info.estimate.ram / GB:.2f} GB, VRAM {info.estimate.vram / GB:.2f} GB)"
    return text + f"; context {model.context_length} tokens."


def _describe(view: Any) -> str:
    d = view.detection
    lines = [f"**Detected:** loader `{d.loader}`" + (f", {d.quant}" if d.quant else "")]
    if d.model_type:
        lines.append(
            f"Architecture `{d.architecture or d.model_type}`, context {d.context_length}, "
            f"RoPE base {d.rope_theta}, {(d.n_params or 0) / 1e9:.2f} B parameters"
        )
    lines.append(f"Chat template: {d.chat_template_source or 'none in the model files'}")
    lines += [f"- {reason}" for reason in d.reasons]
    sources = getattr(view.resolved, "sources", {}) or {}
    if sources:
        lines.append("**Settings:** " + ", ".join(f"`{k}` {v}" for k, v in sources.items()))
    lines += [f"⚠️ {w}" for w in view.warnings]
    return "\n".join(lines)


def format_estimate(est: estimate.Estimate, hw: hardware.Hardware) -> str:
    fit = est.fit(hw)
    rows = ["| device | weights | KV cache | buffers | overhead | total | free |", "|---|---|---|---|---|---|---|"]
    for device, parts in est.parts.items():
        need, free = fit.devices[device]
        rows.append(
            f"| {device} | {parts['weights'] / GB:.2f} | {parts['kv_cache'] / GB:.2f} | {parts['buffers'] / GB:.2f} "
            f"| {parts['overhead'] / GB:.2f} | {need / GB:.2f} | {free / GB:.2f} |"
        )
    mark = {"fits": "✅ fits", "tight": "🟡 tight", "won't fit": "❌ won't fit"}[fit.verdict]
    return (
        f"**Estimate ({est.loader}, context {est.ctx}, {est.n_gpu_layers} GPU layers): {mark}** (GB)\n\n"
        + "\n".join(rows)
    )
