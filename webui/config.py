"""Start-up options: `AppConfig`, built once by `app.py` from the flags and immutable for the life of the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AppConfig:
    """Start-up options (from flags); immutable for the life of the app."""

    models_dir: Path = REPO_ROOT / "models"
    loras_dir: Path = REPO_ROOT / "loras"  # --loras-dir: LoRA adapters (PEFT folders, GGUF LoRA files)
    presets_dir: Path = REPO_ROOT / "presets"
    templates_dir: Path = REPO_ROOT / "webui" / "templates"
    user_data_dir: Path = REPO_ROOT / "logs"  # chats and other things the user makes
    force_cpu: bool = False
    default_loader: str | None = None  # --loader: overrides detection for --model
    default_preset: str = "Default"
    # --trust-remote-code: let the transformers loader run a model's own Python code. Only a flag, never a page
    # or API setting, so a web page or an API client cannot turn a download into code execution.
    trust_remote_code: bool = False
    max_body_bytes: int = 8 * 1000 * 1000  # --max-body-mb: the largest API request body
    max_prompt_chars: int = 1_000_000  # --max-prompt-chars: the longest API prompt (all messages together)
    parallel: int | None = None  # --parallel: requests decoded at once, over saved settings (a load's own value wins)
    # Models on demand (webui/model_switch.py): --api-load-models lets an API request's `model` load that model;
    # --idle-unload MINUTES unloads the model after that long unused (0 = never); --load-wait SECONDS bounds how
    # long a request waits for a load under way before it is refused.
    api_load_models: bool = False
    idle_unload_minutes: float = 0.0
    load_wait_seconds: float = 300.0
    embedding_model: str | None = None  # --embedding-model: a model folder loaded for /v1/embeddings only
