"""The Model tab's handlers: plain functions of `(state, values, ctx)` returning what changes, by name (see
`webui/ui/wiring.py`). They call `state.models` (`webui/model_service.py`), the estimate and the preset store, and
word the results; every `CorralError` becomes an "Error:" line, never a traceback.

When a page opens, the tab shows what the server holds (`on_page_load`): the loaded model picked in the list, its
loader with the settings it was loaded with, its plan and memory bar, and the status line, so Save and Reload work
on a reloaded page as they did before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import gradio as gr

from loaders import hardware
from loaders.errors import CorralError, InsufficientMemoryError
from loaders.settings import settings_for
from loaders.units import format_bytes
from webui import estimate
from webui.estimate.local import GPU_LAYER_LOADERS
from webui.model_service import LoadedInfo, ModelView
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE
from webui.ui import adapters
from webui.ui.common import ERROR, WARNING, warning_lines
from webui.ui.loader_controls import collect, field_updates, visibility
from webui.ui.memory_bar import memory_html
from webui.ui.parameters import preset_updates
from webui.ui.wiring import Ctx, Values

PICK_FIRST = f"{ERROR} Pick a model first."
FORCE_LABEL = "Load even if the memory estimate says it won't fit"
API_LOADS_LABEL = "Let API requests load other models"
API_LOADS_INFO = (
    "With --api: a request naming another model (or a larger num_ctx) loads it, one at a time, when its memory "
    "estimate fits. Starts as --api-load-models says; not saved."
)
API_LOADS_ON = "API requests may now load other models."
API_LOADS_OFF = "API requests now run only on the loaded model (or on the one an idle unload took away)."


def status_text(state: AppState) -> str:
    """The status line: the loaded model, where it came from, what it holds, against what was estimated."""
    info = state.models.current_info
    if info is None:
        return state.models.empty_message() or "No model loaded: pick one above."
    model = info.model
    text = (
        f"**{model.name}** loaded with **{model.loader}** from `{model.path.name}` on {model.device} in "
        f"{model.load_seconds:.1f} s, context {model.context_length} tokens, "
        f"RAM {format_bytes(model.memory.ram_bytes)}"
    )
    if model.memory.total_vram:
        text += f", VRAM {format_bytes(model.memory.total_vram)}"
    est = info.estimate
    if est is not None:
        text += f" (estimated {format_bytes(est.ram_at_load)} at load, {format_bytes(est.ram)} at the full context"
        text += f"; VRAM {format_bytes(est.vram_at_load)} / {format_bytes(est.vram)})" if est.vram else ")"
    decoding = getattr(model, "decode_mode", "")  # the PyTorch backends: cache, slots, CUDA graphs, warm-up time
    return text + "." + (f" Decoding: {decoding}." if decoding else "") + adapters.status_note(info)


def describe(view: ModelView) -> str:
    """The detection, where each non-default setting came from, and the plan, as Markdown."""
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
        lines += ["", f"{WARNING} {view.plan_error}"]
    if view.warnings:
        lines += ["", warning_lines(view.warnings)]
    return "\n".join(lines)


def view_values(view: ModelView, settings: dict[str, Any] | None = None, loaded: LoadedInfo | None = None) -> Values:
    """Loader, its controls (only its group shown) with `settings` (else the resolved ones), details, memory."""
    loader = view.resolved.loader
    files = [f.name for f in view.detection.gguf_files]
    values = dict(settings if settings is not None else asdict(view.resolved.loader_settings))
    values.pop("api_key", None)  # typed by the user, never sent back to a page
    return {
        "loader": loader,
        "fields": field_updates(loader, values, files),
        "groups": visibility(loader),
        "fit": gr.update(visible=loader in GPU_LAYER_LOADERS),
        "details": describe(view),
        "memory": memory_html(view.estimate, hardware.snapshot(), loaded=loaded.model.memory if loaded else None,
                              note=view.plan_error),  # fmt: skip
    }


def loaded_as(state: AppState, name: str) -> LoadedInfo | None:
    """The loaded model's info if it is `name` (its memory is then free for its own bar: a reload frees it)."""
    info = state.models.current_info
    return info if info is not None and info.view.name == name else None


def error_values(error: CorralError) -> Values:
    """A model that cannot be read: no loader controls (they would be another model's), the error in details."""
    return {"groups": visibility(None), "fit": gr.update(visible=False), "details": f"{ERROR} {error}",
            "memory": memory_html(None, hardware.snapshot())}  # fmt: skip


def _settings_of(values: Values) -> dict[str, Any]:
    return collect(values["loader"], values["fields"])


# --- handlers --------------------------------------------------------------------------------------------------------


def on_page_load(state: AppState, values: Values, ctx: Ctx) -> Values:
    info = state.models.current_info
    out: Values = {"name": gr.update(choices=state.models.names(), value=info.view.name if info else None),
                   "status": status_text(state), "api_loads": state.model_switch.allow_loads}  # fmt: skip
    if info is not None:
        out |= view_values(info.view, asdict(info.loader_settings), loaded=info)
    return out


def on_select(state: AppState, values: Values, ctx: Ctx) -> Values:
    name = values["name"]
    if not name:
        return {"status": state.models.empty_message() or ""}
    try:
        view = state.models.inspect(name)
    except CorralError as error:
        return error_values(error)
    out = view_values(view, loaded=loaded_as(state, name))
    out["template"] = gr.update(value=view.resolved.template or AUTO_TEMPLATE)
    if view.resolved.preset:  # the model's saved preset, with its values (not only its name)
        preset = preset_updates(state, view.resolved.preset)
        out |= {"preset": preset.get("preset", gr.skip()), "params": preset.get("params", {}),
                "param_status": preset["status"]}  # fmt: skip
    return out


def on_loader(state: AppState, values: Values, ctx: Ctx) -> Values:
    """Another loader picked: its controls, filled with this model's settings for that loader."""
    loader = values["loader"]
    if not values["name"]:
        return {"groups": visibility(loader), "fit": gr.update(visible=loader in GPU_LAYER_LOADERS)}
    try:
        return view_values(state.models.inspect(values["name"], loader=loader))
    except CorralError as error:
        return error_values(error)


def on_load(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    name, loader = values["name"], values["loader"]
    if not name:
        yield {"status": f"{PICK_FIRST} {state.models.empty_message() or ''}".strip()}
        return
    yield {"status": f"Loading **{name}** with **{loader}**..."}
    ctx.progress(None, desc=f"Loading {name} with {loader}")
    try:
        settings = _settings_of(values)
        info = state.models.load(name, loader=loader, loader_settings=settings, confirm_memory=values["force"])
    except InsufficientMemoryError as error:
        yield {"status": f"{ERROR} {error}\n\nTick **{FORCE_LABEL}** to try anyway."}
        return
    except CorralError as error:
        yield {"status": f"{ERROR} Could not load **{name}** with {loader}: {error}\n\n{status_text(state)}"}
        return
    yield {"status": status_text(state), "details": describe(info.view),
           "memory": memory_html(info.estimate, hardware.snapshot(), loaded=info.model.memory)}  # fmt: skip


def on_autoload(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    if values["autoload"]:
        yield from on_load(state, values, ctx)


def on_api_loads(state: AppState, values: Values, ctx: Ctx) -> Values:
    """The switch flipped: the running server's API allows (or stops) loads from its next request on."""
    allowed = bool(values["api_loads"])
    state.model_switch.allow_loads = allowed
    note = API_LOADS_ON if allowed else API_LOADS_OFF
    return {"status": f"{status_text(state)}\n\n{note}"}


def on_unload(state: AppState, values: Values, ctx: Ctx) -> Values:
    state.models.unload()
    return {"status": status_text(state)}


def on_save(state: AppState, values: Values, ctx: Ctx) -> Values:
    name = values["name"]
    if not name:
        return {"status": PICK_FIRST}
    try:
        warnings = state.models.save_settings(name, values["loader"], _settings_of(values),
                                              template=values["template"], preset=values["preset"])  # fmt: skip
    except CorralError as error:
        return {"status": f"{ERROR} {error}"}
    notes = f"\n\n{warning_lines(warnings)}" if warnings else ""
    return {"status": f"Saved settings for **{name}**. Click **Reload the model** to apply them.{notes}"}


def on_estimate(state: AppState, values: Values, ctx: Ctx) -> Values:
    if not values["name"]:
        return {"details": PICK_FIRST}
    try:
        view = state.models.inspect(values["name"], loader=values["loader"], loader_settings=_settings_of(values))
    except CorralError as error:
        return {"details": f"{ERROR} No estimate: {error}"}
    if view.plan is None or view.estimate is None:
        reason = view.plan_error or "a remote engine holds its memory on its own machine"
        return {"details": f"{ERROR} No estimate: {reason}", "memory": memory_html(None, hardware.snapshot())}
    loaded = loaded_as(state, values["name"])
    memory = memory_html(view.estimate, hardware.snapshot(), loaded=loaded.model.memory if loaded else None)
    return {"details": describe(view), "memory": memory}


def on_fit(state: AppState, values: Values, ctx: Ctx) -> Values:
    name, loader = values["name"], values["loader"]
    if not name:
        return {"details": PICK_FIRST}
    if loader not in GPU_LAYER_LOADERS:
        return {"details": f"{ERROR} {loader} has no GPU-layer setting: pick its device instead."}
    try:
        settings = settings_for(loader, _settings_of(values))
        hw = hardware.snapshot()
        path = state.models.path_of(name)
        n = estimate.best_gpu_layers(path, loader, settings, hw)
        ctx_len = estimate.best_context(path, loader, settings, hw, n_gpu_layers=n)
    except CorralError as error:
        return {"details": f"{ERROR} {error}"}
    return {"fields": {loader: {"n_gpu_layers": n}}, "details": _fit_text(n, ctx_len, hw)}


def on_refresh(state: AppState, values: Values, ctx: Ctx) -> Values:
    return {"name": gr.update(choices=state.models.names())}


def _fit_text(n: int, ctx: int, hw: hardware.Hardware) -> str:
    if not hw.gpus:
        return f"No GPU on this machine: n_gpu_layers 0. The longest context that fits in RAM is {ctx} tokens."
    return f"{n} layers fit in free VRAM at this context length; with {n} layers, up to {ctx} tokens of context fit."
