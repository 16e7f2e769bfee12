"""Memory estimation: how many bytes a model takes on each device when its loader's plan is carried out, and
whether that fits this machine.

- `weights`: the bytes of the weights, tensor by tensor, from the model-files records.
- `arithmetic`: the estimate itself (per device and part, at load and at full context), the fit verdict, fitting.
- `local`: models on disk, priced from the loader's own plan (`loaders/plan.py`).
- `hub`: models on the Hub, from their listing and headers only.
- `__main__`: ``python -m webui.estimate PATH | REPO[:BRANCH]`` prints the JSON.
"""

from loaders.files import ModelShape
from loaders.files.quant_config import gptq_config
from loaders.files.safetensors_header import read_safetensors_header
from webui.estimate.arithmetic import (
    GIB,
    MIB,
    Estimate,
    Fit,
    check_fits,
    estimate,
    fit_context,
    fit_gpu_layers,
)
from webui.estimate.hub import FileEstimate, estimate_remote, fetch_gguf_header, per_file, remote_model_files
from webui.estimate.local import (
    best_context,
    best_gpu_layers,
    estimate_gguf_header,
    estimate_local,
    estimate_plan,
    gguf_shape_weights,
    local_shape_weights,
)
from webui.estimate.weights import (
    WeightsInfo,
    WeightTensor,
    gptq_tensors,
    held_on_cpu,
    loading_bytes,
    size_tensors,
    weights_of,
)

__all__ = [
    "GIB", "MIB", "Estimate", "FileEstimate", "Fit", "ModelShape", "WeightTensor", "WeightsInfo", "best_context",
    "best_gpu_layers", "check_fits", "estimate", "estimate_gguf_header", "estimate_local", "estimate_plan",
    "estimate_remote", "fetch_gguf_header", "fit_context", "fit_gpu_layers", "gguf_shape_weights", "gptq_config",
    "gptq_tensors", "held_on_cpu", "loading_bytes", "local_shape_weights", "per_file", "read_safetensors_header",
    "remote_model_files", "size_tensors", "weights_of",
]  # fmt: skip
