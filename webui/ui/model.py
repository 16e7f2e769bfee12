"""Model tab, layout and wiring: pick a model (autoload on select), its loader and settings (from detection,
pattern defaults and the user's saved values), the memory bar (the plan's estimate against free memory, at load
and at full context), Load / Unload / Reload, "Save settings for this model" (the LoRA adapters applied included),
the switch that lets API requests load other models (models on demand, `webui/model_switch.py`: it changes the
running server's permission, not a saved setting), the LoRA adapters box (`webui/ui/adapters.py`), and the download
box and job list (`webui/ui/downloads.py`). The handlers are in `webui/ui/model_handlers.py`; every page fills the
tab from the server's state when it opens (the switch included).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from loaders.hardware import Hardware
from loaders.settings import SETTINGS_CLASSES
from webui.state import AppState
from webui.ui import adapters, downloads, loader_controls
from webui.ui import model_handlers as h
from webui.ui.chat import ChatTab
from webui.ui.memory_bar import memory_html
from webui.ui.parameters import ParamControls, ParamsTab
from webui.ui.wiring import listen, then

_status = h.status_text  # the status line, by its old name (tests/test_model_files.py reads it)


@dataclass
class ModelTab:
    name: gr.Dropdown
    refresh: gr.Button
    autoload: gr.Checkbox
    load: gr.Button
    unload: gr.Button
    reload: gr.Button
    save: gr.Button
    force: gr.Checkbox
    api_loads: gr.Checkbox
    status: gr.Markdown
    memory: gr.HTML
    loader: gr.Dropdown
    loader_ui: loader_controls.LoaderControls
    estimate: gr.Button
    fit: gr.Button
    details: gr.Markdown
    lora: adapters.AdaptersBox
    downloads: downloads.DownloadsBox


def build_tab(state: AppState) -> ModelTab:
    with gr.Row(equal_height=True):
        name = gr.Dropdown(choices=[], value=None, label="Model", elem_id="model-dropdown", scale=4, min_width=240)
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="model-refresh")
        autoload = gr.Checkbox(value=True, label="Autoload the model on select", scale=1, elem_id="model-autoload",
                               min_width=200)  # fmt: skip
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load", min_width=90)
        unload = gr.Button("Unload", elem_id="model-unload", min_width=90)
        reload = gr.Button("Reload the model", elem_id="model-reload", min_width=140)
        save = gr.Button("Save settings for this model", elem_id="model-save", min_width=200)
    with gr.Row():
        force = gr.Checkbox(value=False, label=h.FORCE_LABEL, elem_id="model-force")
        api_loads = gr.Checkbox(value=state.config.api_load_models, label=h.API_LOADS_LABEL, info=h.API_LOADS_INFO,
                                elem_id="model-api-loads")  # fmt: skip
    status = gr.Markdown(elem_id="model-status")
    memory = gr.HTML(memory_html(None, _no_hardware()), elem_id="model-memory", js_on_load=None)
    loader = gr.Dropdown(choices=list(SETTINGS_CLASSES), value="transformers", label="Loader", elem_id="model-loader")
    loader_ui = loader_controls.build()
    with gr.Row():
        estimate_btn = gr.Button("Estimate memory", elem_id="model-estimate")
        fit = gr.Button("Fit GPU layers to free VRAM", visible=False, elem_id="model-fit")
    details = gr.Markdown(elem_id="model-details")
    with gr.Accordion("LoRA adapters", open=False, elem_id="lora-box"):
        lora = adapters.build()
    with gr.Accordion("Download a model", open=True, elem_id="download-box"):
        box = downloads.build_box()
    return ModelTab(name, refresh, autoload, load, unload, reload, save, force, api_loads, status, memory, loader,
                    loader_ui, estimate_btn, fit, details, lora, box)  # fmt: skip


def _no_hardware() -> Hardware:  # the first paint, before a page load fills the bar
    return Hardware(ram_total=0, ram_available=0)


def wire(state: AppState, demo: gr.Blocks, tab: ModelTab, chat: ChatTab, controls: ParamControls,
         params: ParamsTab) -> None:  # fmt: skip
    t = tab
    view = {"loader": t.loader, "fields": t.loader_ui.fields, "groups": t.loader_ui.groups, "fit": t.fit,
            "details": t.details, "memory": t.memory}  # fmt: skip
    settings = {"name": t.name, "loader": t.loader, "fields": t.loader_ui.fields}
    load_in = settings | {"force": t.force, "autoload": t.autoload}
    load_out = {"status": t.status, "details": t.details, "memory": t.memory}
    model = {"concurrency_id": "model", "show_progress_on": [t.status]}  # the spinner and the time on the status
    listen(demo.load, h.on_page_load, state, None, view | {"name": t.name, "status": t.status,
           "api_loads": t.api_loads}, show_progress="hidden")  # fmt: skip
    listen(t.api_loads.input, h.on_api_loads, state, {"api_loads": t.api_loads}, {"status": t.status})
    picked = {"template": chat.template, "preset": controls.preset, "params": controls.components,
              "param_status": params.status, "status": t.status}  # fmt: skip
    selected = listen(t.name.input, h.on_select, state, {"name": t.name}, view | picked)
    then(selected, h.on_autoload, state, load_in, load_out, **model)
    listen(t.loader.input, h.on_loader, state, {"name": t.name, "loader": t.loader}, view)
    listen(t.refresh.click, h.on_refresh, state, None, {"name": t.name})
    listen([t.load.click, t.reload.click], h.on_load, state, load_in, load_out, **model)
    listen(t.unload.click, h.on_unload, state, None, {"status": t.status}, **model)
    save_in = settings | {"template": chat.template, "preset": controls.preset}
    listen(t.save.click, h.on_save, state, save_in, {"status": t.status})
    listen(t.estimate.click, h.on_estimate, state, settings, {"details": t.details, "memory": t.memory})
    fit_out = {"fields": {x: {"n_gpu_layers": t.loader_ui.fields[x]["n_gpu_layers"]} for x in h.GPU_LAYER_LOADERS},
               "details": t.details}  # fmt: skip
    listen(t.fit.click, h.on_fit, state, settings, fit_out)
    downloads.wire(state, demo, t.downloads, model_name=t.name, model_status=t.status)
    adapters.wire(state, demo, t.lora, model_status=t.status)
