"""Parameters tab: every sampler of `GenerationParams`, stop strings, seed, presets (choose, save as, delete), and
the reply format (a JSON object, a JSON schema or a GBNF grammar that Chat and Notebook replies must match).

The controls are created unrendered by `create_controls` so the Chat and Notebook tabs can take them as inputs;
`build_tab` renders them inside the Parameters tab, `wire` connects the preset buttons to the preset store. When a
page opens, the preset is the loaded model's saved one (else the default) and the sliders hold that preset's values
(`preset_updates`, which the Model tab uses too when a model is picked). A preset that was broken and set aside
(the store uses the built-in defaults in its place) shows as a warning line.

The reply format is per request, like the API's `response_format` (`GenerationParams.constraint`): presets leave it
out. The browser keeps it (BrowserState, as the Notebook keeps its text), so a reload of the page does not lose a
schema; the server checks it, with the API's own `constraint_spec`, when it changes and at each generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from loaders.base import ConstraintSpec, GenerationParams
from loaders.constraints import MAX_SPEC_CHARS, constraint_spec
from loaders.errors import ConstraintError, CorralError, PresetError
from webui.state import AppState
from webui.ui.common import ERROR, warning_lines
from webui.ui.wiring import Ctx, Values, listen

INT_FIELDS = ("max_new_tokens", "top_k", "repetition_penalty_range", "seed", "truncation_length")
LEFT = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "typical_p", "min_p")
NO_FORMAT = "none"
FORMATS = (("None (free text)", NO_FORMAT), ("JSON object", "json_object"), ("JSON schema", "json_schema"),
           ("GBNF grammar", "grammar"))  # (label, `constraint_spec` kind)  # fmt: skip
FORMAT_NOTES = {NO_FORMAT: "", "json_object": "Chat and Notebook replies will be one JSON object.",
                "json_schema": "Chat and Notebook replies will follow this JSON schema.",
                "grammar": "Chat and Notebook replies will follow this grammar."}  # fmt: skip
SAVED_FORMAT_KEY = "corral-reply-format"
SAVED_FORMAT_SECRET = "corral-reply-format-v1"  # a fixed key: the format is found again after a server restart


@dataclass
class ParamControls:
    """The components whose values make one `GenerationParams`, by field name, and the preset dropdown."""

    components: dict[str, gr.components.Component]
    preset: gr.Dropdown
    reply_format: dict[str, gr.components.Component]  # "mode" and "text": the constraint (not in presets)
    saved_format: gr.BrowserState  # the reply format as this browser keeps it

    @property
    def inputs(self) -> dict[str, Any]:
        """What a generation reads: the samplers and the reply format (`params_from_values` takes these values)."""
        return {**self.components, "constraint": self.reply_format}


@dataclass
class ParamsTab:
    refresh: gr.Button
    save_name: gr.Textbox
    save: gr.Button
    delete: gr.Button
    status: gr.Markdown


def params_from_values(values: dict[str, Any]) -> GenerationParams:
    """The parameters of the controls' values (by field name), with the reply format's constraint when `values`
    has one (`ParamControls.inputs`). `ConstraintError` for a schema or grammar that cannot be enforced."""
    raw = dict(values)
    reply_format = raw.pop("constraint", None)
    raw["stop"] = tuple(s for s in (raw.get("stop") or "").split("\n") if s)
    for name in INT_FIELDS:
        raw[name] = int(raw[name])
    params = GenerationParams.from_dict(raw)
    return dataclasses.replace(params, constraint=constraint_of(reply_format))


def constraint_of(reply_format: Mapping[str, Any] | None) -> ConstraintSpec | None:
    """The constraint of the reply-format values (`{"mode", "text"}`), None for free text; checked."""
    mode = (reply_format or {}).get("mode") or NO_FORMAT
    if mode == NO_FORMAT:
        return None
    return constraint_spec(mode, (reply_format or {}).get("text") or "")


def format_values(saved: Any) -> dict[str, Any]:
    """The reply-format controls for what a browser kept (anything odd there gives the empty field)."""
    saved = saved if isinstance(saved, Mapping) else {}
    mode, text = saved.get("mode"), saved.get("text")
    mode = mode if mode in dict(FORMATS).values() else NO_FORMAT
    text = text if isinstance(text, str) and len(text) <= MAX_SPEC_CHARS else ""
    return {"mode": mode, "text": text_update(mode, text)}


def text_update(mode: str, text: str | None = None) -> Any:
    """The code box as `mode` shows it: hidden when it has no text to hold, JSON-highlighted for a schema."""
    label, language = ("GBNF grammar", None) if mode == "grammar" else ("JSON schema", "json")
    shown = mode in ("json_schema", "grammar")
    if text is None:
        return gr.update(visible=shown, label=label, language=language)
    return gr.update(value=text, visible=shown, label=label, language=language)


def values_of(params: GenerationParams) -> dict[str, Any]:
    """The controls' values (by field name) for `params` (not the per-request fields: grammar, logprobs)."""
    values = {name: getattr(params, name) for name in GenerationParams.field_names()}
    values["stop"] = "\n".join(params.stop)
    return values


def preset_updates(state: AppState, name: str) -> Values:
    """The preset dropdown set to `name` and the controls to its values, with a status line."""
    try:
        params, warning = state.presets.load_with_warning(name)
    except PresetError as error:
        return {"status": f"{ERROR} {error}"}
    status = warning_lines([warning]) if warning else f"Preset **{name}** applied."
    return {"preset": gr.update(value=name), "params": values_of(params), "status": status}


def page_preset(state: AppState) -> str:
    """The preset a page opens with: the loaded model's preset as its settings say now (saved since the load
    included), else the default."""
    info = state.models.current_info
    if info is None:
        return state.config.default_preset
    preset = info.view.resolved.preset
    if info.view.detection.files is not None:  # a local model (a remote engine's settings live in remote.yaml)
        try:
            preset = state.settings.resolve(info.view.name, info.view.detection).preset
        except CorralError:  # the model's files changed under it: what it was loaded with still holds
            pass
    return preset or state.config.default_preset


# --- layout ----------------------------------------------------------------------------------------------------------


def create_controls(state: AppState) -> ParamControls:
    d, later = GenerationParams(), {"render": False}  # rendered by the Parameters tab, used as inputs everywhere
    c: dict[str, gr.components.Component] = {
        "max_new_tokens": gr.Slider(1, 8192, value=d.max_new_tokens, step=1, label="max_new_tokens", **later),
        "do_sample": gr.Checkbox(value=d.do_sample, label="do_sample (off = greedy)", **later),
        "temperature": gr.Slider(0.01, 5, value=d.temperature, step=0.01, label="temperature", **later),
        "top_p": gr.Slider(0, 1, value=d.top_p, step=0.01, label="top_p", **later),
        "top_k": gr.Slider(0, 200, value=d.top_k, step=1, label="top_k", **later),
        "typical_p": gr.Slider(0, 1, value=d.typical_p, step=0.01, label="typical_p", **later),
        "min_p": gr.Slider(0, 1, value=d.min_p, step=0.01, label="min_p", **later),
        "repetition_penalty": gr.Slider(1, 1.5, value=d.repetition_penalty, step=0.01, label="repetition_penalty",
                                        **later),
        "repetition_penalty_range": gr.Number(value=d.repetition_penalty_range, precision=0,
                                              label="repetition_penalty_range (0 = all)", **later),
        "presence_penalty": gr.Slider(0, 2, value=d.presence_penalty, step=0.05, label="presence_penalty", **later),
        "frequency_penalty": gr.Slider(0, 2, value=d.frequency_penalty, step=0.05, label="frequency_penalty",
                                       **later),
        "seed": gr.Number(value=d.seed, precision=0, label="seed (-1 = random)", **later),
        "ban_eos_token": gr.Checkbox(value=d.ban_eos_token, label="ban_eos_token", **later),
        "add_bos_token": gr.Checkbox(value=d.add_bos_token, label="add_bos_token", **later),
        "skip_special_tokens": gr.Checkbox(value=d.skip_special_tokens, label="skip_special_tokens", **later),
        "truncation_length": gr.Number(value=d.truncation_length, precision=0,
                                       label="truncation_length (prompt + reply)", **later),
        "stop": gr.Textbox(value="", lines=2, label="Custom stop strings (one per line)", **later),
    }  # fmt: skip
    assert list(c) == list(GenerationParams.field_names()), "controls must follow GenerationParams field order"
    for name, component in c.items():
        component.elem_id = f"param-{name}"
    preset = gr.Dropdown(choices=state.presets.names(), value=state.config.default_preset, label="Preset",
                         render=False, allow_custom_value=True, elem_id="param-preset")  # fmt: skip
    reply_format = {
        "mode": gr.Radio(list(FORMATS), value=NO_FORMAT, label="Reply format", elem_id="param-format-mode",
                         info="Chat and Notebook replies are held to it while they decode (local models). Per "
                              "request, like the API's response_format: not saved in presets; this browser keeps "
                              "it.", **later),
        "text": gr.Code(value="", language="json", label="JSON schema", lines=6, max_lines=20, visible=False,
                        interactive=True, elem_id="param-format-text", **later),
    }  # fmt: skip
    # Made here, outside the tabs, so the page-load event reads what the browser kept (see notebook.saved_text).
    saved = gr.BrowserState({"mode": NO_FORMAT, "text": ""}, storage_key=SAVED_FORMAT_KEY, secret=SAVED_FORMAT_SECRET)
    return ParamControls(components=c, preset=preset, reply_format=reply_format, saved_format=saved)


def build_tab(controls: ParamControls) -> ParamsTab:
    with gr.Row():
        controls.preset.render()
        refresh = gr.Button("Refresh", scale=0, min_width=90, elem_id="param-refresh")
    with gr.Row():
        save_name = gr.Textbox(label="Save current values as preset", placeholder="My preset", scale=3)
        save = gr.Button("Save preset", scale=1)
        delete = gr.Button("Delete preset", variant="stop", scale=1)
    status = gr.Markdown(elem_id="param-status")
    with gr.Row():
        with gr.Column():
            for name in LEFT:
                controls.components[name].render()
        with gr.Column():
            for name, component in controls.components.items():
                if name not in LEFT:
                    component.render()
    with gr.Group():
        controls.reply_format["mode"].render()
        controls.reply_format["text"].render()
    return ParamsTab(refresh, save_name, save, delete, status)


# --- handlers --------------------------------------------------------------------------------------------------------


def on_page_load(state: AppState, values: Values, ctx: Ctx) -> Values:
    """The preset list, the page's preset and its values, any broken preset set aside so far, and the reply format
    this browser kept."""
    updates = preset_updates(state, page_preset(state))
    updates["preset"] = gr.update(choices=state.presets.names(), value=page_preset(state))
    updates["reply_format"] = format_values(values.get("saved"))
    if state.presets.warnings:
        updates["status"] = warning_lines(state.presets.warnings)
    return updates


def on_format(state: AppState, values: Values, ctx: Ctx) -> Values:
    """The reply format changed: checked at once (the error a generation would give), kept by the browser."""
    mode, text = values["mode"] or NO_FORMAT, values["text"] or ""
    kept = {"mode": mode, "text": text}
    try:
        constraint_of(kept)
    except ConstraintError as error:
        return {"text": text_update(mode), "saved": kept, "status": f"{ERROR} {error}"}
    return {"text": text_update(mode), "saved": kept, "status": FORMAT_NOTES.get(mode, "")}


def on_preset(state: AppState, values: Values, ctx: Ctx) -> Values:
    updates = preset_updates(state, values["preset"])
    updates.pop("preset", None)  # the user just picked it
    return updates


def on_save(state: AppState, values: Values, ctx: Ctx) -> Values:
    name = (values["name"] or "").strip()
    try:
        state.presets.save(name, params_from_values(values["params"]))
    except (PresetError, ValueError, KeyError) as error:
        return {"status": f"{ERROR} {error}"}
    return {"preset": gr.update(choices=state.presets.names(), value=name), "status": f"Saved preset **{name}**."}


def on_delete(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        state.presets.delete(values["preset"])
    except PresetError as error:
        return {"status": f"{ERROR} {error}"}
    return {"preset": gr.update(choices=state.presets.names(), value=None),
            "status": f"Deleted preset **{values['preset']}**."}  # fmt: skip


def on_refresh(state: AppState, values: Values, ctx: Ctx) -> Values:
    return {"preset": gr.update(choices=state.presets.names()), "status": warning_lines(state.presets.warnings)}


def wire(state: AppState, demo: gr.Blocks, controls: ParamControls, tab: ParamsTab) -> None:
    out = {"preset": controls.preset, "params": controls.components, "status": tab.status}
    page_out = out | {"reply_format": controls.reply_format}
    listen(demo.load, on_page_load, state, {"saved": controls.saved_format}, page_out, show_progress="hidden")
    reply_format = controls.reply_format
    format_out = {"text": reply_format["text"], "saved": controls.saved_format, "status": tab.status}
    listen([reply_format["mode"].input, reply_format["text"].blur], on_format, state, reply_format, format_out,
           show_progress="hidden")  # fmt: skip
    listen(controls.preset.input, on_preset, state, {"preset": controls.preset}, out)
    listen(tab.save.click, on_save, state, {"name": tab.save_name, "params": controls.components}, out)
    listen(tab.delete.click, on_delete, state, {"preset": controls.preset}, out)
    listen(tab.refresh.click, on_refresh, state, None, out)
