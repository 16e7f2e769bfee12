"""Per-loader settings: pure dataclasses, importable without torch, shared by detection, the UI, the YAML and the CLI.

A field's name is its key in `models/config*.yaml` and its flag on the command line (`--n-gpu-layers`).
Fields that detection reads from the files (GPTQ bits, group size...) are plain fields too: detection fills them,
the UI shows them read-only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from loaders.errors import SettingsError

MAX_PARALLEL = 64  # `parallel`: the most requests one model decodes at once (each slot holds a KV cache)


@dataclass
class TransformersSettings:
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 ; auto = bf16 on GPU or bf16-capable CPU, else fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_memory_gib: dict[str, float] | None = None  # {"0": 20, "cpu": 60} -> accelerate-style max_memory
    trust_remote_code: bool = False
    rope_freq_base: float = 0.0  # 0 = the model's own (CodeLlama: 1e6)
    compress_pos_emb: float = 1.0  # linear RoPE scaling factor; 1 = none
    context_length: int = 0  # 0 = the model's max_position_embeddings
    parallel: int = 0  # requests decoded at once, each with its own KV cache; 0 = chosen from free memory
    # bitsandbytes quantization at load (text-generation-webui's names): weights of the Linear layers in 8 or 4 bits
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    quant_type: str = "nf4"  # 4-bit: nf4 | fp4
    use_double_quant: bool = False  # 4-bit: quantize the quantization constants too (~0.4 bit per weight less)
    compute_dtype: str = "auto"  # 4-bit: the dtype matmuls run in; auto = the load's dtype


@dataclass
class GPTQSettings:
    bits: int = 4
    group_size: int = 128  # -1 = one group per column
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"  # gptq (v1, zeros stored minus one) | gptq_v2
    weights_file: str = ""  # "" = found automatically (model.safetensors, shards, model_file_base_name)
    device: str = "auto"
    dtype: str = "auto"
    # auto: integer kernels on the CPU where they apply, other layers dequantized once if RAM allows, else per call;
    # on: every layer dequantized once (most RAM); off: every layer dequantized per call (least RAM, slowest)
    dequantize_cache: str = "auto"
    context_length: int = 0
    parallel: int = 0


@dataclass
class LlamaCppSettings:
    file: str = ""  # which .gguf in the folder; "" = the only one / the Q4_K_M one
    n_ctx: int = 4096  # per request: each of the `parallel` slots has a context this long
    parallel: int = 0
    n_gpu_layers: int = 0
    threads: int = 0  # 0 = physical cores
    n_batch: int = 512
    rope_freq_base: float = 0.0  # 0 = from the file
    rope_freq_scale: float = 0.0  # 0 = from the file
    use_mmap: bool = True
    use_mlock: bool = False


@dataclass
class NativeGGUFSettings:
    file: str = ""
    n_ctx: int = 4096
    parallel: int = 0
    n_gpu_layers: int = 0
    dtype: str = "auto"  # activations: auto | float32 | float16 | bfloat16
    dequantize_cache: str = "auto"  # as GPTQSettings.dequantize_cache, for the layers on the CPU


@dataclass
class RemoteSettings:
    url: str = ""  # http://host:port of the server
    api_key: str = ""  # sent as a Bearer token; "" = none
    model: str = ""  # the server's model id; "" = the first it lists
    kind: str = "openai"  # openai (OpenAI-compatible /v1/completions) | tgi (Text Generation Inference)


SETTINGS_CLASSES: dict[str, type] = {
    "transformers": TransformersSettings,
    "gptq": GPTQSettings,
    "llama.cpp": LlamaCppSettings,
    "gguf": NativeGGUFSettings,
    "remote": RemoteSettings,
}

LoaderSettings = TransformersSettings | GPTQSettings | LlamaCppSettings | NativeGGUFSettings | RemoteSettings


def settings_for(loader: str, values: dict[str, Any] | None = None) -> LoaderSettings:
    """The settings object of `loader` with `values` applied; unknown keys are ignored (other loaders own them)."""
    try:
        cls = SETTINGS_CLASSES[loader]
    except KeyError:
        raise SettingsError(f"Unknown loader {loader!r}; known: {', '.join(SETTINGS_CLASSES)}.") from None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in names})


def parallel_problem(value: object) -> str | None:
    """Why `value` cannot be a `parallel` setting (None when it can): a whole number, 0 (auto) to MAX_PARALLEL."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PARALLEL:
        return f"parallel must be a whole number from 0 (chosen from free memory) to {MAX_PARALLEL}, not {value!r}"
    return None


def settings_to_dict(settings: LoaderSettings) -> dict[str, Any]:
    return asdict(settings)
