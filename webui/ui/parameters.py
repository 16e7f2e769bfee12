"""Parameters tab: every sampler of `GenerationParams`, stop strings, seed, and presets (choose, save as, delete).

The controls are created unrendered by `create_controls` so the Chat and Notebook tabs can take them as inputs;
`build_tab` renders them inside the Parameters tab and wires the preset buttons to the preset store. A preset that
was broken and set aside (the store uses the built-in defaults in its place) shows as a warning line: when it is
chosen, and on page load / refresh for one set aside elsewhere (an API request, the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from loaders.base import GenerationParams
from loaders.errors import PresetError
from webui.state import AppState


@dataclass
class ParamControls:
    """The components whose values make one `GenerationParams`, in field order."""

    components: dict[str, gr.components.Component]
    preset: gr.Dropdown

    @property
    def inputs(self) -> list[gr.components.Component]:
        return list(self.components.values())

    def to_params(self, *values) -> GenerationParams:
        return params_from_values(list(self.components), values)


def params_from_values(names: list[str], values) -> GenerationParams:
    raw = dict(zip(names, values, strict=True))
    raw["stop"] = tuple(s for s in (raw.get("stop") or "").split("\n") if s)
    for name in ("max_new_tokens", "top_k", "repetition_penalty_range", "seed", "truncation_length"):
        raw[name] = int(raw[name])
    return GenerationParams.from_dict(raw)


def values_from_params(params: GenerationParams) -> list:
    values = {name: getattr(params, name) for name in GenerationParams.field_names()}  # not the per-request ones
    values["stop"] = "\n".join(params.stop)
    return list(values.values())


def create_controls(state: AppState) -> ParamControls:
    defaults = GenerationParams()
    c: dict[str, gr.components.Component] = {}
    c["max_new_tokens"] = gr.Slider(
        1, 8192, value=defaults.max_new_tokens, step=1, label="max_new_tokens", render=False
    )
    c["do_sample"] = gr.Checkbox(value=defaults.do_sample, label="do_sample (off = greedy)", render=False)
    c["temperature"] = gr.Slider(0.01, 5, value=defaults.temperature, step=0.01, label="temperature", render=False)
    c["top_p"] = gr.Slider(0, 1, value=defaults.top_p, step=0.01, label="top_p", render=False)
    c["top_k"] = gr.Slider(0, 200, value=defaults.top_k, step=1, label="top_k", render=False)
    c["typical_p"] = gr.Slider(0, 1, value=defaults.typical_p, step=0.01, label="typical_p", render=False)
    c["min_p"] = gr.Slider(0, 1, value=defaults.min_p, step=0.01, label="min_p", render=False)
    c["repetition_penalty"] = gr.Slider(
        1, 1.5, value=defaults.repetition_penalty, step=0.01, label="repetition_penalty", render=False
    )
    c["repetition_penalty_range"] = gr.Number(
        value=defaults.repetition_penalty_range, precision=0, label="repetition_penalty_range (0 = all)", render=False
    )
    c["presence_penalty"] = gr.Slider(
        0, 2, value=defaults.presence_penalty, step=0.05, label="presence_penalty", render=False
    )
    c["frequency_penalty"] = gr.Slider(
        0, 2, value=defaults.frequency_penalty, step=0.05, label="frequency_penalty", render=False
    )
    c["seed"] = gr.Number(value=defaults.seed, precision=0, label="seed (-1 = random)", render=False)
    c["ban_eos_token"] = gr.Checkbox(value=defaults.ban_eos_token, label="ban_eos_token", render=False)
    c["add_bos_token"] = gr.Checkbox(value=defaults.add_bos_token, label="add_bos_token", render=False)
    c["skip_special_tokens"] = gr.Checkbox(
        value=defaults.skip_special_tokens, label="skip_special_tokens", render=False
    )
    c["truncation_length"] = gr.Number(
        value=defaults.truncation_length, precision=0, label="truncation_length (prompt + reply)", render=False
    )
    c["stop"] = gr.Textbox(value="", lines=2, label="Custom stop strings (one per line)", render=False)
    assert list(c) == list(GenerationParams.field_names()), "controls must follow GenerationParams field order"
    for name, component in c.items():
        component.elem_id = f"param-{name}"
    preset = gr.Dropdown(
        choices=_preset_names(state),
        value=state.config.default_preset,
        label="Preset",
        render=False,
        allow_custom_value=True,
        elem_id="param-preset",
    )
    return ParamControls(components=c, preset=preset)


def _preset_names(state: AppState) -> list[str]:
    return state.presets.names()


def _preset_warnings(state: AppState) -> str:
    """One warning line per broken preset set aside so far (empty when none)."""
    return "\n\n".join(f"⚠️ {warning}" for warning in state.presets.warnings)


def build_tab(state: AppState, controls: ParamControls) -> None:
    with gr.Row():
        controls.preset.render()
        refresh = gr.Button("🔄", scale=0, min_width=40)
    with gr.Row():
        save_name = gr.Textbox(label="Save current values as preset", placeholder="My preset", scale=3)
        save = gr.Button("Save preset", scale=1)
        delete = gr.Button("Delete preset", variant="stop", scale=1)
    status = gr.Markdown(lambda: _preset_warnings(state))  # evaluated on every page load
    with gr.Row():
        with gr.Column():
            for name in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "typical_p", "min_p"):
                controls.components[name].render()
        with gr.Column():
            for name in (
                "repetition_penalty",
                "repetition_penalty_range",
                "presence_penalty",
                "frequency_penalty",
                "seed",
                "truncation_length",
                "ban_eos_token",
                "add_bos_token",
                "skip_special_tokens",
                "stop",
            ):
                controls.components[name].render()

    def on_preset(name: str):
        try:
            params, warning = state.presets.load_with_warning(name)
        except PresetError as error:
            return *[gr.skip()] * len(controls.components), f"⚠️ {error}"
        return *values_from_params(params), f"⚠️ {warning}" if warning else f"Preset **{name}** applied."

    def on_save(name: str, *values):
        try:
            state.presets.save(name.strip(), controls.to_params(*values))
        except (PresetError, ValueError, KeyError) as error:
            return gr.skip(), f"⚠️ {error}"
        return gr.update(choices=_preset_names(state), value=name.strip()), f"Saved preset **{name.strip()}**."

    def on_delete(name: str):
        try:
            state.presets.delete(name)
        except PresetError as error:
            return gr.skip(), f"⚠️ {error}"
        return gr.update(choices=_preset_names(state), value=None), f"Deleted preset **{name}**."

    controls.preset.input(on_preset, controls.preset, [*controls.inputs, status])
    refresh.click(lambda: (gr.update(choices=_preset_names(state)), _preset_warnings(state)), None,
                  [controls.preset, status])  # fmt: skip
    save.click(on_save, [save_name, *controls.inputs], [controls.preset, status])
    delete.click(on_delete, controls.preset, [controls.preset, status])
