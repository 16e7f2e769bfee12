"""Embeddings service: which model embeds a request's texts, and the dedicated embedding model's life.

Two sources (the rule itself, mean-pooled normalised last hidden state, is `loaders/embedding.py`):

- the dedicated embedding model, loaded for that purpose only (`--embedding-model NAME`, or POST
  /v1/internal/embedding-model/load): any model folder, typically a sentence-transformers encoder or an embedding
  GGUF; it stays loaded beside the chat model and answers requests that name it, or that name no model;
- the loaded chat model, for requests that name it (or no model, when no embedding model is loaded). It embeds
  through the model gate, so it cannot be unloaded halfway; a remote engine has no embeddings to give.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from loaders.embedding import Embeddings, LlamaCppEmbedder, TorchEmbeddingModel, load_embedding_model
from loaders.errors import CorralError, GenerationError, ModelNotLoadedError
from loaders.files import read_model_files
from webui.config import AppConfig
from webui.model_gate import ModelGate

if TYPE_CHECKING:
    from webui.model_service import ModelService

log = logging.getLogger(__name__)

MAX_INPUTS = 2048  # texts per request, as OpenAI's endpoint


class EmbeddingService:
    def __init__(self, config: AppConfig, models: ModelService, gate: ModelGate) -> None:
        self._config, self._models, self._gate = config, models, gate
        self._dedicated: TorchEmbeddingModel | LlamaCppEmbedder | None = None
        self._dedicated_lock = threading.Lock()

    @property
    def dedicated(self) -> str | None:
        """The name of the dedicated embedding model, if one is loaded."""
        model = self._dedicated
        return model.name if model is not None else None

    def load(self, name: str) -> int:
        """Load `name` as the dedicated embedding model (replacing the previous one); its vector size."""
        files = read_model_files(self._models.path_of(name))
        with self._dedicated_lock:
            model = load_embedding_model(name, files, trust_remote_code=self._config.trust_remote_code)
            previous, self._dedicated = self._dedicated, model
        if previous is not None:
            previous.unload()
        log.info("Loaded %s as the embedding model (%d dimensions)", name, model.dimensions)
        return model.dimensions

    def unload(self) -> None:
        with self._dedicated_lock:
            previous, self._dedicated = self._dedicated, None
        if previous is not None:
            previous.unload()

    def embed(self, model: str, texts: list[str]) -> tuple[str, Embeddings]:
        """(the model that answered, the embeddings of `texts`) for a request naming `model` ("" = the default)."""
        if len(texts) > MAX_INPUTS:
            raise CorralError(f"At most {MAX_INPUTS} inputs per request; this one has {len(texts)}.")
        dedicated = self._dedicated
        if dedicated is not None and model in ("", dedicated.name):
            return dedicated.name, dedicated.embed(texts)
        with self._gate.peek(None):  # beside the running generations; a load or an unload waits for it
            info = self._models.current_info
            if info is None:
                raise ModelNotLoadedError("No model is loaded to embed with: load one, or an embedding model "
                                          "(--embedding-model NAME or POST /v1/internal/embedding-model/load).")
            if model and model != info.view.name:
                loaded = ", ".join(n for n in (info.view.name, self.dedicated) if n)
                raise GenerationError(f"The model '{model}' is not loaded for embeddings (loaded: {loaded}). Load it "
                                      "with POST /v1/internal/embedding-model/load.")
            embed = getattr(info.model, "embed", None)
            if embed is None:
                raise GenerationError(f"{info.view.name} runs on a remote engine, which gives no embeddings here. "
                                      "Load an embedding model (--embedding-model NAME).")
            return info.view.name, embed(texts)
