"""`best_gpu_layers` / `best_context`: the Model tab's "Fit GPU layers to free VRAM" on the real SmolLM2 files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from loaders.hardware import GIB, GPU, Hardware, fake
from loaders.settings import settings_for
from webui import estimate as E


def gpu_of(size: int, ram_gib: float = 32) -> Hardware:
    return replace(fake(ram_gib=ram_gib), gpus=(GPU(0, "test GPU", size, size),))


def test_best_gpu_layers_is_the_most_that_fit_the_gpu(smollm2_gguf: Path) -> None:
    settings = settings_for("llama.cpp", {"n_ctx": 4096})
    shape, weights = E.local_shape_weights(smollm2_gguf)
    # A GPU exactly as big as 12 layers need (from the estimate itself): 12 fit, 13 do not.
    need_12 = E.estimate(shape, weights, ctx=4096, n_gpu_layers=12).device_total("cuda:0")
    hw = gpu_of(need_12)
    assert E.best_gpu_layers(smollm2_gguf, "llama.cpp", settings, hw) == 12
    # A shorter context leaves room for more layers; a big GPU takes all layers and the output head.
    short = settings_for("llama.cpp", {"n_ctx": 512})
    assert E.best_gpu_layers(smollm2_gguf, "llama.cpp", short, hw) > 12
    assert E.best_gpu_layers(smollm2_gguf, "llama.cpp", settings, gpu_of(8 * GIB)) == shape.n_layers + 1


def test_best_gpu_layers_without_a_gpu_is_zero(smollm2_gguf: Path) -> None:
    for loader in ("llama.cpp", "gguf"):
        assert E.best_gpu_layers(smollm2_gguf.parent, loader, settings_for(loader), fake(ram_gib=32)) == 0


def test_best_context_fits_the_ram(smollm2_gguf: Path) -> None:
    shape, weights = E.local_shape_weights(smollm2_gguf)
    ram = E.estimate(shape, weights, ctx=2048).device_total("ram")
    hw = replace(fake(ram_gib=1), ram_available=ram)
    ctx = E.best_context(smollm2_gguf, "llama.cpp", settings_for("llama.cpp"), hw, n_gpu_layers=0)
    assert ctx == 2048
    assert E.best_context(smollm2_gguf, "llama.cpp", settings_for("llama.cpp"), fake(ram_gib=32), n_gpu_layers=0) \
        == shape.context_max
