"""The one application state: folders, stores, the loaded model and the download jobs.

Built once by `app.py` from the command-line flags and passed explicitly to the UI builders, the CLI and the
services. Nothing model-related lives at module level anywhere else. Stores are created lazily so start-up stays
fast and a broken store file surfaces as a message where it is used, not as a crash at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from webui.config import AppConfig
from webui.model_gate import ModelGate

if TYPE_CHECKING:
    from webui.download import DownloadManager
    from webui.embeddings import EmbeddingService
    from webui.generation import GenerationService
    from webui.history import HistoryStore
    from webui.model_service import ModelService
    from webui.model_switch import ModelSwitcher
    from webui.presets import PresetStore
    from webui.prompt_record import PromptLog
    from webui.settings import SettingsStore
    from webui.templates import TemplateRegistry


@dataclass
class AppState:
    config: AppConfig = field(default_factory=AppConfig)
    # Load / unload alone; up to the model's `slots` generations at once, first come first served beyond that.
    model_gate: ModelGate = field(default_factory=ModelGate)

    @cached_property
    def templates(self) -> TemplateRegistry:
        from webui.templates import TemplateRegistry

        return TemplateRegistry(self.config.templates_dir, models_dir=self.config.models_dir)

    @cached_property
    def presets(self) -> PresetStore:
        from webui.presets import PresetStore

        return PresetStore(self.config.presets_dir)

    @cached_property
    def history(self) -> HistoryStore:
        from webui.history import HistoryStore

        return HistoryStore(self.config.user_data_dir / "chats")

    @cached_property
    def settings(self) -> SettingsStore:
        from webui.settings import SettingsStore

        return SettingsStore(self.config.models_dir, templates_dir=self.config.templates_dir)

    @cached_property
    def downloads(self) -> DownloadManager:
        from webui.download import DownloadManager

        return DownloadManager(self.config.models_dir, loras_dir=self.config.loras_dir)

    @cached_property
    def models(self) -> ModelService:
        from webui.model_service import ModelService

        return ModelService(self.config, self.settings, self.model_gate)

    @cached_property
    def prompts(self) -> PromptLog:
        """The last request's exact prompt per chat / Notebook session, for the Prompt view."""
        from webui.prompt_record import PromptLog

        return PromptLog(lambda: self.models.current, self.model_gate)

    @cached_property
    def generation(self) -> GenerationService:
        from webui.generation import GenerationService

        return GenerationService(self.model_gate, lambda: self.models.current_info)

    @cached_property
    def model_switch(self) -> ModelSwitcher:
        """Which model an API request runs on (models on demand, the idle unload): `webui/model_switch.py`."""
        from webui.model_switch import ModelSwitcher

        return ModelSwitcher(self.models, self.generation, self.model_gate, allow_loads=self.config.api_load_models,
                             idle_unload_seconds=60 * self.config.idle_unload_minutes,
                             load_wait_seconds=self.config.load_wait_seconds)

    @cached_property
    def embeddings(self) -> EmbeddingService:
        """`/v1/embeddings`: the loaded model, or the embedding model (`webui/embeddings.py`)."""
        from webui.embeddings import EmbeddingService

        return EmbeddingService(self.config, self.models, self.model_gate)
