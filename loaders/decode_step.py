"""Forward passes of the PyTorch decode loop: a prompt into one cache row (prefill), one token for each live row
(a decode step), with the mask, positions and cache step each needs.

`SlotRunner` serves models a `SlotCache` can hold (`kv_cache.attention_layout`): `slots` rows, prefix reuse, and on
CUDA a captured decode step (`cuda_graphs.DecodeGraphs`) with the eager forward as the fallback. `DynamicRunner`
keeps Transformers' own growing `DynamicCache` for the models it cannot hold (hybrid attention layers, flash / flex
attention): one row, no reuse. `loaders/batching.py` decides what runs when; this module only runs it.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Protocol

import torch

from loaders.kv_cache import SlotCache, Step, causal_mask

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the batcher needs from a model with a KV cache."""

    rows: int  # sequences held at once
    reuses: bool  # rows keep their sequence after a request ends (prefix reuse)

    def prefill(self, row: int, ids: list[int], start: int) -> torch.Tensor:
        """Run `ids` at positions start.. of `row` (its first `start` positions are kept); last logits [vocab]."""
        ...

    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Row i (0..n-1) takes `tokens[i]` at `positions[i]`; logits [n, vocab] float32."""
        ...

    def move(self, source: int, target: int, length: int) -> None: ...

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None: ...


def keeps_last_only(module: torch.nn.Module) -> bool:
    """Whether the module's forward can skip all but the last position's logits (HF's `logits_to_keep`)."""
    return "logits_to_keep" in inspect.signature(module.forward).parameters


class SlotRunner:
    """Forward passes over a `SlotCache` of `rows` sequences of up to `context` tokens."""

    reuses = True

    def __init__(
        self, module: torch.nn.Module, *, rows: int, context: int, device: torch.device, dtype: torch.dtype,
        sliding: int | None,
    ) -> None:  # fmt: skip
        self.module = module
        self.rows = rows
        self.context = context
        self.device = device
        self.sliding = sliding
        config = module.config
        self.cache = SlotCache(config.get_text_config(decoder=True).num_hidden_layers, rows, context)
        # eager attention adds its mask to the scores; SDPA takes booleans
        self.additive = dtype if config._attn_implementation == "eager" else None
        self._keep_last = keeps_last_only(module)
        self.graphs: Any = None  # cuda_graphs.DecodeGraphs once captured

    def prefill(self, row: int, ids: list[int], start: int) -> torch.Tensor:
        n = len(ids)
        positions = torch.arange(start, start + n, device=self.device)[None]
        step = Step(row, 1, positions, start + n, offset=start)
        # A fresh row with no window to apply is plain causal attention: no mask, as Transformers' own path runs it.
        mask = None if start == 0 and self.sliding is None else self.mask(positions, start + n)
        ids_t = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.forward(ids_t, positions, step, mask, last_only=True)[0]

    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        if self.graphs is not None:
            logits = self.graphs.run(tokens, positions)
            if logits is not None:
                return logits
        n = len(tokens)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)[:, None]
        window = max(positions) + 1
        step = Step(0, n, pos, window, offset=positions[0])
        # One row sees its whole window: no mask needed, the same numbers as an unbatched decode.
        mask = None if n == 1 and self.sliding is None else self.mask(pos, window)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        return self.forward(ids, pos, step, mask)

    def mask(self, positions: torch.Tensor, window: int) -> torch.Tensor:
        return causal_mask(positions, window, sliding=self.sliding, additive=self.additive)

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, step: Step, mask: torch.Tensor | None, *,
        last_only: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """ids, positions [rows, q] -> the last position's logits [rows, vocab] float32, on the input device."""
        self.cache.step = step
        kwargs: dict[str, Any] = {"input_ids": ids, "position_ids": positions, "attention_mask": mask,
                                  "past_key_values": self.cache, "use_cache": True}  # fmt: skip
        if last_only and self._keep_last:
            kwargs["logits_to_keep"] = 1
        return self.module(**kwargs).logits[:, -1].float().to(self.device)

    def move(self, source: int, target: int, length: int) -> None:
        self.cache.move(source, target, length)

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None:
        self.cache.swap(a, b, length_a, length_b)


class DynamicRunner:
    """One sequence in a Transformers `DynamicCache`, made anew for every prompt (no reuse)."""

    rows = 1
    reuses = False

    def __init__(self, module: torch.nn.Module, *, device: torch.device) -> None:
        self.module = module
        self.device = device
        self._keep_last = keeps_last_only(module)
        self.cache: Any = None

    def prefill(self, row: int, ids: list[int], start: int) -> torch.Tensor:
        from transformers import DynamicCache, PreTrainedConfig

        config = getattr(self.module, "config", None)  # lets the cache size sliding-window layers
        self.cache = DynamicCache(config=config) if isinstance(config, PreTrainedConfig) else DynamicCache()
        kwargs: dict[str, Any] = {"input_ids": torch.tensor([ids], device=self.device), "past_key_values": self.cache,
                                  "use_cache": True}  # fmt: skip
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        return self.module(**kwargs).logits[0, -1].float().to(self.device)

    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        ids = torch.tensor([tokens], device=self.device)
        return self.module(input_ids=ids, past_key_values=self.cache, use_cache=True).logits[:, -1].float() \
            .to(self.device)  # fmt: skip

    def move(self, source: int, target: int, length: int) -> None:
        pass  # one row: nothing to move

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None:
        pass
