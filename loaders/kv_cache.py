"""`SlotCache`: a preallocated KV cache of `slots` rows, one sequence per row, each at its own length.

It is a Transformers `Cache` (the models call `past_key_values.update(k, v, layer_idx)` as with any cache), built
from Transformers' own cache-layer API. Transformers' `StaticLayer` keeps one write position for the whole batch, so
rows of different lengths (continuous batching) and a row that keeps an old sequence for prefix reuse do not fit it;
`SlotLayer` writes each row at its own positions instead. Per layer: keys and values of shape
[slots, kv_heads, context + 1, head_dim]; the last position is a scratch column that padding rows (CUDA-graph
batches wider than the live requests) write into, so they never disturb a kept sequence.

Before each forward the caller sets `cache.step` (a `Step`: which rows take part, where each new token goes, how
many positions attention sees). Attention reads the view `keys[rows, :, :window]`, never a copy; positions a row has
not written are hidden by the mask `causal_mask` builds. On the CPU the cache is allocated empty and zeroed only as
far as a window has reached, so RAM grows with use (masked positions must hold finite numbers: 0 * NaN is NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kernels import cpu_attention

ZERO_CHUNK = 256  # positions zeroed at a time on the CPU as windows grow


@dataclass
class Step:
    """Where one forward reads and writes. `write_at` [rows, q]: the cache position of each new token (a padding row
    writes the scratch column); `window`: attention sees positions [0, window); `offset`: the first new token's
    position when one row runs (Transformers' own mask logic reads it when no mask is given)."""

    first_row: int
    n_rows: int
    write_at: torch.Tensor
    window: int
    offset: int = 0
    _on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(row index [rows, 1], write positions [rows, q]) on `device` (layers of a split model sit on two)."""
        if device not in self._on:
            write_at = self.write_at.to(device)
            rows = torch.arange(self.n_rows, device=device)[:, None]
            self._on[device] = (rows, write_at)
        return self._on[device]


class SlotLayer(CacheLayerMixin):
    """One decoder layer's keys and values for every slot."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: SlotCache) -> None:
        super().__init__()
        self.owner = owner
        self.zeroed: list[int] = []  # per row: positions [0, zeroed[row]) hold finite values (CPU: grown lazily)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        slots, length = self.owner.slots, self.owner.length
        make = torch.empty if self.device.type == "cpu" else torch.zeros
        self.keys = make(slots, key_states.shape[1], length, key_states.shape[-1], dtype=self.dtype, device=self.device)
        self.values = make(slots, value_states.shape[1], length, value_states.shape[-1], dtype=self.dtype,
                           device=self.device)  # fmt: skip
        if self.device.type == "cpu":
            self.keys[:, :, -1].zero_()  # the scratch column
            self.values[:, :, -1].zero_()
        self.zeroed = [0 if self.device.type == "cpu" else length] * slots
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new keys/values [rows, heads, q, dim] at the step's positions; the rows' visible window."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        step = self.owner.step
        rows = slice(step.first_row, step.first_row + step.n_rows)
        if self.device.type == "cpu":
            self._zero_to(rows, step.window)
        row_index, write_at = step.indices(self.device)
        keys, values = self.keys[rows], self.values[rows]
        keys[row_index, :, write_at] = key_states.transpose(1, 2)  # [rows, q, heads, dim] at (row, position)
        values[row_index, :, write_at] = value_states.transpose(1, 2)
        return keys[:, :, : step.window], values[:, :, : step.window]

    def _zero_to(self, rows: slice, window: int) -> None:
        """Zero positions up to `window` in the rows of this step only: the pages of rows no request has used stay
        untouched."""
        for row in range(rows.start, rows.stop):
            self._zero_row(row, window)

    def _zero_row(self, row: int, window: int) -> None:
        """Make positions [0, window) of `row` finite (zeroed, rounded up to a chunk, where never written). Data is
        only ever written below `zeroed[row]`, so this never erases any."""
        if self.zeroed[row] >= window:
            return
        stop = min(-(-window // ZERO_CHUNK) * ZERO_CHUNK, self.owner.length - 1)
        self.keys[row, :, self.zeroed[row] : stop].zero_()
        self.values[row, :, self.zeroed[row] : stop].zero_()
        self.zeroed[row] = stop

    def move(self, source: int, target: int, length: int) -> None:
        """Copy positions [0, length) of row `source` into row `target`."""
        if self.is_initialized and length and source != target:
            self._zero_row(target, length)
            self.keys[target, :, :length] = self.keys[source, :, :length]
            self.values[target, :, :length] = self.values[source, :, :length]

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None:
        """Exchange the sequences of rows `a` and `b` (their first `length_a` / `length_b` positions)."""
        if not self.is_initialized or a == b:
            return
        self._zero_row(a, length_b)
        self._zero_row(b, length_a)
        for cache in (self.keys, self.values):
            kept = cache[a, :, :length_a].clone()
            cache[a, :, :length_b] = cache[b, :, :length_b]
            cache[b, :, :length_a] = kept

    def nbytes(self) -> int:
        return 0 if not self.is_initialized else self.keys.nbytes + self.values.nbytes

    # Transformers asks these of any cache layer; a slot cache answers for the current step.
    def get_seq_length(self) -> int:
        return self.owner.step.offset if self.owner.step is not None else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return (self.owner.step.window if self.owner.step is not None else query_length), 0

    def get_max_length(self) -> int:
        return self.owner.length - 1


class SlotCache(Cache):
    """Keys and values of `slots` sequences of up to `context` tokens each, for every decoder layer."""

    def __init__(self, n_layers: int, slots: int, context: int) -> None:
        self.slots = slots
        self.length = context + 1  # + the scratch column
        self.step: Step | None = None
        super().__init__(layers=[SlotLayer(self) for _ in range(n_layers)])

    @property
    def scratch(self) -> int:
        return self.length - 1

    def move(self, source: int, target: int, length: int) -> None:
        for layer in self.layers:
            layer.move(source, target, length)

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None:
        for layer in self.layers:
            layer.swap(a, b, length_a, length_b)

    def nbytes_by_device(self) -> dict[torch.device, int]:
        sizes: dict[torch.device, int] = {}
        for layer in self.layers:
            if layer.is_initialized:
                sizes[layer.device] = sizes.get(layer.device, 0) + layer.nbytes()
        return sizes


def causal_mask(
    positions: torch.Tensor, window: int, *, sliding: int | None = None, additive: torch.dtype | None = None
) -> torch.Tensor:
    """[rows, 1, q, window]: query at position p sees keys 0..p (and only the last `sliding` of them).
    Boolean (SDPA), or 0 / the dtype's minimum added to the scores when `additive` names a dtype (eager attention)."""
    keys = torch.arange(window, device=positions.device)
    allowed = keys <= positions[:, :, None]  # [rows, q, window]
    if sliding is not None:
        allowed &= keys > positions[:, :, None] - sliding
    allowed = allowed[:, None]
    if additive is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=additive, device=positions.device).masked_fill_(
        ~allowed, torch.finfo(additive).min)  # fmt: skip


def attention_layout(config: object, context: int) -> tuple[bool, int | None]:
    """(whether a slot cache can serve this model, the sliding window every layer shares or None).

    Slot caches serve models whose attention layers are all full attention, or all sliding with one window, run by
    SDPA, eager attention or Corral's CPU SDPA (`kernels.cpu_attention`; all take a 4-D mask).
    Hybrids (Gemma's mixed layers, linear attention), flash
    attention and flex attention keep Transformers' own dynamic cache."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    get_text = getattr(config, "get_text_config", None)
    if get_text is None or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", cpu_attention.NAME):
        return False, None
    try:
        types, kwargs = get_layer_types_and_kwargs(get_text(decoder=True))
    except (AttributeError, TypeError, ValueError):  # configs Transformers cannot describe per layer
        return False, None
    if types and all(kind == "full_attention" for kind in types):
        return True, None
    windows = {kw.get("sliding_window") for kw in kwargs}
    if types and all(kind == "sliding_attention" for kind in types) and len(windows) == 1:
        window = windows.pop()
        return True, (window if window and window < context else None)
    return False, None
