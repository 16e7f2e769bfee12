"""Sentence embeddings: one vector per text, the mean of the model's last hidden state over the text's tokens,
L2-normalised (so a dot product is the cosine similarity).

"Last hidden state" is what the model's final layer norm outputs, the input of its LM head: transformers'
`base_model(...).last_hidden_state`, and what llama.cpp pools with `pooling_type=MEAN` in embedding mode. Two
sources share the rule:

- the loaded chat model (`embed_causal_lm` for the PyTorch backends; `LlamaCppEmbedder` beside a llama.cpp model,
  a second context on the same file in embedding mode, opened on first use);
- a dedicated embedding model folder (`load_embedding_model`): a Transformers folder (an encoder such as a
  sentence-transformers model, or any decoder) through `AutoModel`, or a GGUF through llama.cpp. Mean pooling is
  used whatever the folder's own pooling config says, so every source means the same thing.

Texts are embedded one at a time (no padding, so no pad token is needed and no batch pays for its longest text);
a text longer than the model's context is refused, not silently cut.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from loaders.base import ModelTokenizer
from loaders.errors import GenerationError, ModelFormatError

EMBEDDING_CONTEXT = 2048  # the largest text a llama.cpp embedding context takes (its batch holds a whole text)


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int  # tokens read, all texts together


@runtime_checkable
class Embedder(Protocol):
    """Something that embeds texts: a dedicated embedding model, or the part of a loaded model that does."""

    def embed(self, texts: Sequence[str]) -> Embeddings:
        ...


def normalised(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _too_long(index: int, tokens: int, limit: int) -> GenerationError:
    return GenerationError(f"Input {index} is {tokens} tokens long; this embedding model takes at most {limit}. "
                           "Split it into shorter pieces.")


# --- PyTorch ----------------------------------------------------------------------------------------------------


def embed_causal_lm(
    module: Any, tokenizer: ModelTokenizer, texts: Sequence[str], *, context: int, device: Any
) -> Embeddings:
    """Embeddings from a loaded PyTorch causal LM (its `base_model`: the decoder without the LM head)."""
    ids = [tokenizer.encode(text, add_bos=True) for text in texts]
    return _embed_ids(module.base_model, ids, context=context, device=device)


def _embed_ids(base: Any, ids: list[list[int]], *, context: int, device: Any) -> Embeddings:
    import torch

    vectors = []
    for index, text_ids in enumerate(ids):
        if context > 0 and len(text_ids) > context:
            raise _too_long(index, len(text_ids), context)
        with torch.inference_mode():
            hidden = base(input_ids=torch.tensor([text_ids or [0]], device=device)).last_hidden_state  # [1, n, d]
            mean = torch.nn.functional.normalize(hidden[0].float().mean(dim=0), dim=0)
        vectors.append(mean.cpu().tolist())
    return Embeddings(vectors, sum(len(t) for t in ids))


class TorchEmbeddingModel:
    """A Transformers folder loaded with `AutoModel` for embeddings only."""

    def __init__(self, name: str, module: Any, tokenizer: Any, context: int) -> None:
        self.name, self.module, self.tokenizer, self.context_length = name, module, tokenizer, context
        self.dimensions = int(module.config.hidden_size)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name: str, folder: Path, *, context: int, trust_remote_code: bool = False) -> TorchEmbeddingModel:
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            module = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code).eval()
        except (OSError, ValueError, KeyError) as error:
            raise ModelFormatError(f"This folder cannot be loaded as an embedding model: {error}",
                                   path=folder) from error
        return cls(name, module, tokenizer, context)

    def embed(self, texts: Sequence[str]) -> Embeddings:
        # The tokenizer's own special tokens ([CLS]/[SEP] for an encoder, BOS for a decoder): what it was trained on.
        ids = [self.tokenizer(text)["input_ids"] for text in texts]
        with self._lock:
            return _embed_ids(self.module.base_model, ids, context=self.context_length, device=self.module.device)

    def unload(self) -> None:
        self.module = None


# --- llama.cpp --------------------------------------------------------------------------------------------------


@dataclass
class LlamaCppEmbedder:
    """A GGUF in llama.cpp's embedding mode (mean pooling): a dedicated embedding model, or the embedding context
    beside a loaded llama.cpp chat model (the weights are shared through the file's memory map)."""

    name: str
    path: Path
    n_gpu_layers: int = 0
    threads: int | None = None
    context_length: int = EMBEDDING_CONTEXT
    _llm: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dimensions(self) -> int:
        return int(self.open().n_embd())

    def embed(self, texts: Sequence[str]) -> Embeddings:
        with self._lock:
            llm = self.open()
            ids = [llm.tokenize(text.encode("utf-8")) for text in texts]  # as `Llama.embed` reads them
            for index, text_ids in enumerate(ids):
                if len(text_ids) > self.context_length:
                    raise _too_long(index, len(text_ids), self.context_length)
            vectors = [normalised(vector) for vector in llm.embed(list(texts), truncate=False)]
        return Embeddings(vectors, sum(len(t) for t in ids))

    def open(self) -> Any:
        """The embedding context (opened now if it is not yet)."""
        if self._llm is None:
            import llama_cpp

            self._llm = llama_cpp.Llama(
                model_path=str(self.path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=self.context_length, n_batch=self.context_length, n_ubatch=self.context_length,
                n_gpu_layers=self.n_gpu_layers, n_threads=self.threads, n_threads_batch=self.threads, verbose=False,
            )  # fmt: skip
        return self._llm

    def unload(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None


# --- a dedicated embedding model ---------------------------------------------------------------------------------


def load_embedding_model(
    name: str, files: Any, *, trust_remote_code: bool = False
) -> TorchEmbeddingModel | LlamaCppEmbedder:
    """The embedding model of a folder read by `loaders.files.read_model_files` (a GGUF runs in llama.cpp)."""
    context = min(files.shape.context_max or EMBEDDING_CONTEXT, EMBEDDING_CONTEXT)
    if files.format == "gguf":
        embedder = LlamaCppEmbedder(name, files.gguf_path, context_length=context)
        embedder.open()  # now: a bad file fails the load, not the first request
        return embedder
    return TorchEmbeddingModel.load(name, files.folder, context=context, trust_remote_code=trust_remote_code)
