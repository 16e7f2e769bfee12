"""Estimates of models on disk: price the loader's own plan (`loaders/plan.py`), never a guess of what it does.

`estimate_plan(plan)` is what the Model tab and the load check use; `estimate_local(path, loader, settings)` reads
the files and plans first. `best_gpu_layers` / `best_context` answer the Model tab's fit button.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from loaders.errors import ModelFormatError
from loaders.files import ModelFiles, ModelShape, read_model_files
from loaders.files.gguf_header import GGUFHeader, TruncatedHeader, parse_gguf_header, read_gguf_header
from loaders.hardware import Hardware, snapshot
from loaders.plan import DTYPE_BYTES, LoadPlan, plan_load
from loaders.settings import LoaderSettings, settings_for
from webui.estimate.arithmetic import Estimate, estimate, fit_context, fit_gpu_layers
from webui.estimate.weights import WeightsInfo, gguf_weights, held_on_cpu, loading_bytes, weights_of

GPU_LAYER_LOADERS = ("llama.cpp", "gguf")


def plan_options(plan: LoadPlan) -> dict[str, Any]:
    """`estimate` keyword arguments that a plan decides (everything but the GPU layers and the context)."""
    return {
        "loader": plan.loader,
        "dtype_bytes": DTYPE_BYTES[plan.weights_dtype] if plan.weights_dtype else None,
        "act_bytes": DTYPE_BYTES[plan.dtype],
        "kv_bytes": plan.kv_bytes,
        "batch": plan.batch,
        "gpu": plan.gpu,
        "gpu_device": plan.gpu_device,
        "slots": plan.slots,
        "cpu_weights": held_on_cpu(plan),
        "loading": loading_bytes(plan),
    }


def estimate_plan(plan: LoadPlan) -> Estimate:
    """The memory `plan` will take, at load and at its full context."""
    return estimate(plan.files.shape, weights_of(plan.files), ctx=plan.context, n_gpu_layers=plan.n_gpu_layers,
                    max_memory=plan.max_memory_gib, notes=plan.notes, **plan_options(plan))  # fmt: skip


def estimate_local(
    path: Path | str, loader: str, settings: LoaderSettings | None = None, *, hw: Hardware | None = None
) -> Estimate:
    """The estimate for loading the local model `path` (a folder or a .gguf file) with `loader` and `settings`."""
    settings = settings or settings_for(loader)
    files = _files(Path(path), settings)
    return estimate_plan(plan_load(loader, files, settings, hw or snapshot()))


def best_gpu_layers(path: Path | str, loader: str, settings: LoaderSettings, hw: Hardware) -> int:
    """The most layers of the local model `path` that fit `hw`'s free GPU memory (and RAM) at the context of
    `settings` (0 when the machine has no GPU or nothing fits)."""
    if not hw.gpus:
        return 0
    plan = _fit_plan(path, loader, settings, hw)
    return fit_gpu_layers(plan.files.shape, weights_of(plan.files), hw, ctx=plan.context, **plan_options(plan))


def best_context(path: Path | str, loader: str, settings: LoaderSettings, hw: Hardware, *, n_gpu_layers: int) -> int:
    """The longest context (a multiple of 256, at most the model's) that fits with `n_gpu_layers` on the GPU."""
    plan = _fit_plan(path, loader, settings, hw)
    return fit_context(plan.files.shape, weights_of(plan.files), hw, n_gpu_layers=n_gpu_layers, **plan_options(plan))


def _fit_plan(path: Path | str, loader: str, settings: LoaderSettings, hw: Hardware) -> LoadPlan:
    """The plan a fit starts from: with a GPU, one layer on it, so the plan takes the dtype it uses there."""
    if loader in GPU_LAYER_LOADERS and hw.gpus:
        settings = replace(settings, n_gpu_layers=1)
    return plan_load(loader, _files(Path(path), settings), settings, hw)


def _files(path: Path, settings: LoaderSettings) -> ModelFiles:
    return read_model_files(path, gguf_file=getattr(settings, "file", ""),
                            weights_file=getattr(settings, "weights_file", ""))  # fmt: skip


def local_shape_weights(path: Path | str, *, gguf_file: str = "") -> tuple[ModelShape, WeightsInfo]:
    """Shape and weights of a local model (a .gguf file, a folder with one, or a Transformers / GPTQ folder)."""
    files = read_model_files(Path(path), gguf_file=gguf_file)
    return files.shape, weights_of(files)


def estimate_gguf_header(
    source: bytes | memoryview | Path | str, *, ctx: int | None = None, n_gpu_layers: int = 0, file_bytes: int = 0,
    loader: str = "llama.cpp", **options: Any,
) -> Estimate:  # fmt: skip
    """Estimate a GGUF model from its header alone: a path, or the first bytes of the file."""
    if isinstance(source, (str, Path)):
        header = read_gguf_header(Path(source))
        file_bytes = file_bytes or Path(source).stat().st_size
    else:
        header = parse_complete_header(source)
    shape, weights = gguf_shape_weights(header, file_bytes)
    return estimate(shape, weights, loader=loader, ctx=ctx, n_gpu_layers=n_gpu_layers, **options)


def gguf_shape_weights(header: GGUFHeader, file_bytes: int = 0) -> tuple[ModelShape, WeightsInfo]:
    return ModelShape.from_gguf(header.metadata, (t.name for t in header.tensors)), gguf_weights(header, file_bytes)


def parse_complete_header(data: bytes | memoryview) -> GGUFHeader:
    try:
        return parse_gguf_header(data)
    except TruncatedHeader:
        raise ModelFormatError(f"the first {len(data)} bytes do not hold the whole GGUF header") from None
