"""The loader-specific controls of the Model tab, generated from the settings dataclasses in `loaders/settings.py`.

One group per loader, only the chosen loader's group visible. A field becomes a checkbox, number or text box by
its type; settings read from the model's files (GPTQ bits, group size, act-order...) are shown read-only, and so
are settings only a start-up flag decides (`trust_remote_code`: `--trust-remote-code`), which show the flag's value.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from typing import Any

import gradio as gr

from loaders.settings import SETTINGS_CLASSES

READ_ONLY = {"gptq": {"bits", "group_size", "desc_act", "sym", "checkpoint_format", "weights_file"}}
# Settings a page must never change: running a model's own code is decided at start-up, by the flag alone.
FLAG_ONLY = {"trust_remote_code": "set at start: --trust-remote-code"}
CHOICES = {
    "dtype": ["auto", "float32", "float16", "bfloat16"],
    "device": ["auto", "cpu", "cuda", "cuda:0", "cuda:1"],
    "dequantize_cache": ["auto", "on", "off"],
    "checkpoint_format": ["gptq", "gptq_v2"],
    "kind": ["openai", "tgi"],
    "quant_type": ["nf4", "fp4"],
    "compute_dtype": ["auto", "float32", "float16", "bfloat16"],
}
PER_ROW = 5  # controls per row: labels stay readable at a laptop's width
WIDE = ("file", "weights_file")  # on a row of their own
HELP = {
    "n_gpu_layers": "layers on the GPU (0 = CPU only)",
    "n_ctx": "context length in tokens",
    "parallel": "requests decoded at once, a KV cache each; 0 = from free memory",
    "context_length": "context in tokens; 0 = the model's own",
    "rope_freq_base": "0 = from the model",
    "rope_freq_scale": "0 = from the model",
    "compress_pos_emb": "linear RoPE scaling; 1 = none",
    "threads": "0 = physical cores",
    "n_batch": "prompt tokens per step",
    "use_mmap": "map the file instead of reading it",
    "use_mlock": "keep the weights in RAM (no swap)",
    "dequantize_cache": "auto = integer kernels, the rest dequantized once if RAM allows; on = all; off = per call",
    "dtype": "auto = bf16/fp16 where fast, else fp32",
    "file": "which .gguf file",
    "max_memory_gib": 'JSON, e.g. {"0": 20, "cpu": 60}',
    "url": "http://host:port of the remote engine",
    "api_key": "empty = the key in models/remote.yaml",
    "load_in_8bit": "bitsandbytes 8-bit at load",
    "load_in_4bit": "bitsandbytes 4-bit at load",
    "quant_type": "4-bit data type",
    "use_double_quant": "4-bit: quantize the scales too",
    "compute_dtype": "4-bit matmul dtype",
}


@dataclass
class LoaderControls:
    groups: dict[str, gr.Group]  # loader -> its group
    fields: dict[str, dict[str, gr.components.Component]]  # loader -> field -> control (one per settings field)


def collect(loader: str, values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The settings of `loader` from the controls' values (`values[loader][field]`, nested as `fields` is)."""
    if loader not in SETTINGS_CLASSES:
        raise KeyError(loader)
    return {f: _from_control(f, v) for f, v in values[loader].items()}


def field_updates(loader: str, settings: dict[str, Any], gguf_files: list[str]) -> dict[str, dict[str, Any]]:
    """Control values for every loader (nested like `LoaderControls.fields`): the chosen one's from `settings`,
    the others' defaults. The GGUF `file` control lists `gguf_files`."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in SETTINGS_CLASSES.items():
        values = {f.name: _default(f) for f in fields(cls)} | (settings if name == loader else {})
        out[name] = {}
        for f in fields(cls):
            if f.name == "file":
                pick = values.get("file") or (gguf_files or [""])[0]
                out[name][f.name] = gr.update(choices=gguf_files, value=pick)
            else:
                out[name][f.name] = _to_control(f.name, values.get(f.name))
    return out


def visibility(loader: str | None) -> dict[str, Any]:
    """Only `loader`'s group visible (none for None)."""
    return {name: gr.update(visible=name == loader) for name in SETTINGS_CLASSES}


def build(initial_loader: str = "transformers") -> LoaderControls:
    groups: dict[str, gr.Group] = {}
    controls: dict[str, dict[str, gr.components.Component]] = {}
    for loader, cls in SETTINGS_CLASSES.items():
        items = list(fields(cls))
        controls[loader] = {}
        with gr.Group(visible=loader == initial_loader, elem_id=f"loader-{loader.replace('.', '')}") as group:
            wide = [f for f in items if f.name in WIDE]  # a file name needs the whole width to be read
            for f in wide:
                controls[loader][f.name] = _control(loader, f)
            rest = [f for f in items if f.name not in WIDE]
            for start in range(0, len(rest), PER_ROW):
                with gr.Row(equal_height=True):
                    controls[loader].update({f.name: _control(loader, f) for f in rest[start : start + PER_ROW]})
        groups[loader] = group
    return LoaderControls(groups, controls)


def _default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _control(loader: str, f) -> gr.components.Component:
    from_files = f.name in READ_ONLY.get(loader, set())
    read_only = from_files or f.name in FLAG_ONLY
    info = "read from the model's files" if from_files else FLAG_ONLY.get(f.name) or HELP.get(f.name)
    default = _default(f)
    elem_id = f"{loader.replace('.', '')}-{f.name}"
    common = {"label": f.name, "info": info, "interactive": not read_only, "elem_id": elem_id}
    if f.name == "file":
        return gr.Dropdown(choices=[], allow_custom_value=True, **common)
    if f.name in CHOICES:
        return gr.Dropdown(CHOICES[f.name], value=default, **common)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **common)
    if isinstance(default, int):
        return gr.Number(value=default, precision=0, **common)
    if isinstance(default, float):
        return gr.Number(value=default, **common)
    if f.name == "api_key":  # typed by the user, never filled from the server
        return gr.Textbox(value="", type="password", **common)
    return gr.Textbox(value=_to_control(f.name, default), **common)


def _to_control(name: str, value: Any) -> Any:
    if name == "max_memory_gib":
        return json.dumps(value) if value else ""
    return value


def _from_control(name: str, value: Any) -> Any:
    if name == "max_memory_gib":
        return json.loads(value) if value else None
    if (
        isinstance(value, float)
        and value.is_integer()
        and name not in ("rope_freq_base", "rope_freq_scale", "compress_pos_emb")
    ):
        return int(value)
    return value
