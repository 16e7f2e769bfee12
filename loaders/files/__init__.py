"""The model-files layer: the one place that reads what is on disk (or on the Hub) into typed, read-only records.

- `model_files`: `read_model_files(path) -> ModelFiles` (a folder or a .gguf file, read once), model and file names
  checked by name (`model_path`, `file_in_folder`), `list_models`.
- `gguf_header`: the GGUF header parser (bounded counts), for local files and HTTP Range answers.
- `safetensors_header`: safetensors headers (bounded), tensor names / dtypes / shapes / bytes.
- `quant_config`: the GPTQ config, validated once, from quantize_config.json and config.json.
- `weights`: which files hold a Transformers / GPTQ model's weights.
- `gguf_choice`: which `.gguf` of several to use.
- `shape`: `ModelShape`, from config.json or GGUF metadata.
- `jsonfile`: size-capped JSON objects.
"""

from loaders.files.model_files import (
    ChatFacts,
    ModelFiles,
    check_name,
    file_in_folder,
    list_models,
    model_path,
    read_model_files,
)
from loaders.files.shape import ModelShape

__all__ = [
    "ChatFacts", "ModelFiles", "ModelShape", "check_name", "file_in_folder", "list_models", "model_path",
    "read_model_files",
]  # fmt: skip
