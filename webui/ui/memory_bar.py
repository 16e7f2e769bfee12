"""The Model tab's memory bar, as HTML: for each device the plan uses (RAM, each GPU), the weights, KV cache,
buffers and overhead of the estimate at full context, with a mark where the model stands right after the load
("at load"), and under it the whole need against the memory free for the model, with the estimate's verdict.

For a loaded model the memory it holds now counts as free for it (it would be freed to load it again). Pure
functions of an `Estimate` and a `Hardware` snapshot; the verdict is the estimate's own (`Estimate.fit` margins).
"""

from __future__ import annotations

from dataclasses import replace
from html import escape

from loaders.base import MemoryReport
from loaders.hardware import Hardware
from loaders.units import format_bytes
from webui.estimate import Estimate

PARTS = {"weights": "weights", "kv_cache": "KV cache", "buffers": "buffers", "overhead": "overhead"}


def memory_html(est: Estimate | None, hw: Hardware, *, loaded: MemoryReport | None = None, note: str = "") -> str:
    """The bars of `est` on `hw`; `loaded`: what the model (the one `est` is of) holds now, measured."""
    if est is None:
        text = escape(note) if note else "No memory estimate for this model."
        return f'<div class="corral-memory mb-empty">{text}</div>'
    gpu = f", {est.n_gpu_layers} of {est.n_layers} layers on the GPU" if est.vram else ""
    head = f'<div class="mb-title">Memory: {escape(est.loader)}, context {est.ctx:,} tokens{gpu}</div>'
    hw = _freed(hw, loaded)
    rows = [_device(est, device, hw) for device in est.parts]
    legend = "".join(f'<span class="mb-key {k}"></span>{v} ' for k, v in PARTS.items())
    notes = "".join(f'<div class="mb-note">{escape(n)}</div>' for n in est.notes)
    return f'<div class="corral-memory">{head}{"".join(rows)}<div class="mb-legend">{legend}</div>{notes}</div>'


def _device(est: Estimate, device: str, hw: Hardware) -> str:
    """Two bars: the parts, scaled to the model's need at full context (the mark: at load), then that need
    against the free memory (the mark: free, when it does not fit)."""
    parts = est.parts[device]
    full, at_load = est.device_total(device), est.device_at_load(device)
    free = hw.free(device)
    segments = "".join(f'<div class="mb-seg {k}" style="width:{100 * parts.get(k, 0) / max(full, 1):.2f}%" '
                       f'title="{v} {format_bytes(parts.get(k, 0))}"></div>' for k, v in PARTS.items())  # fmt: skip
    load_mark = f'<div class="mb-mark load" style="left:{100 * at_load / max(full, 1):.2f}%" title="at load"></div>'
    scale = max(full, free, 1)
    need = f'<div class="mb-seg need" style="width:{100 * full / scale:.2f}%"></div>'
    free_mark = "" if full <= free else f'<div class="mb-mark free" style="left:{100 * free / scale:.2f}%"></div>'
    verdict = replace(est, parts={device: parts}).fit(hw).verdict  # the estimate's own rule, for this device
    name = "RAM" if device == "ram" else _gpu_name(device, hw)
    sizes = " · ".join(f"{v} {format_bytes(parts.get(k, 0))}" for k, v in PARTS.items() if parts.get(k))
    return (
        f'<div class="mb-row" data-device="{escape(device)}"><div class="mb-name">{escape(name)}</div>'
        f'<div class="mb-bar" title="the model at full context; the mark: at load">{segments}{load_mark}</div>'
        f'<div class="mb-text"><b>{format_bytes(at_load)}</b> at load, <b>{format_bytes(full)}</b> at full context '
        f'<span class="mb-parts">({sizes})</span></div>'
        f'<div class="mb-bar thin" title="against the free memory">{need}{free_mark}</div>'
        f'<div class="mb-text">{format_bytes(full)} of {format_bytes(free)} free '
        f'<span class="mb-verdict {verdict.replace(chr(39), "")}">{verdict}</span></div></div>'
    )


def _freed(hw: Hardware, loaded: MemoryReport | None) -> Hardware:
    """`hw` with the memory the loaded model holds counted as free (for the bars of that model)."""
    if loaded is None:
        return hw
    gpus = tuple(replace(g, free=g.free + loaded.vram_bytes.get(g.index, 0)) for g in hw.gpus)
    return replace(hw, ram_available=hw.ram_available + loaded.ram_bytes, gpus=gpus)


def _gpu_name(device: str, hw: Hardware) -> str:
    index = int(device.partition(":")[2] or 0)
    gpu = next((g for g in hw.gpus if g.index == index), None)
    return f"GPU {index}" + (f" ({gpu.name})" if gpu else "")
