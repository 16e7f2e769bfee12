"""Captured CUDA decode steps: one `torch.cuda.CUDAGraph` per (rows, window) bucket, replayed instead of the eager
forward so a decode step costs one launch, not a few hundred Python-issued kernels (gpt-fast's "reduce-overhead",
done with an explicit graph so our Triton kernels and Transformers' modules need no tracing).

A graph reads its inputs from static buffers (token ids, positions, write positions) and writes logits into a static
output. Live rows are 0..n-1 (the batcher keeps them compact); a bucket is wider than n by padding rows that take
token 0 at position 0 and write the cache's scratch column, so the rows they borrow keep their sequences. Windows
are bucketed (256, 512, ... up to the context): attention reads only as far as the longest live row needs, rounded
up. The first bucket is captured at load (warm-up time in the load message); others the first time they are needed.
Any failure to capture turns the graphs off for good: the eager forward runs instead, and the reason is logged.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from loaders.kv_cache import Step

if TYPE_CHECKING:
    from loaders.decode_step import SlotRunner

log = logging.getLogger(__name__)

FIRST_WINDOW = 256


def buckets(limit: int, first: int) -> list[int]:
    """first, 2*first, ... below `limit`, then `limit` itself."""
    sizes, size = [], first
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


def bucket(value: int, sizes: list[int]) -> int:
    return next(size for size in sizes if size >= value)


class DecodeGraphs:
    """The captured decode steps of one `SlotRunner` on one CUDA device."""

    def __init__(self, runner: SlotRunner) -> None:
        self.runner = runner
        rows, device = runner.rows, runner.device
        self.row_sizes = buckets(rows, 1)
        self.window_sizes = buckets(runner.context, min(FIRST_WINDOW, runner.context))
        self.inputs = torch.zeros(3, rows, 1, dtype=torch.long, device=device)  # ids, positions, write positions
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool: only one graph runs at a time
        self.capture_seconds = 0.0
        self.failure = ""  # why graphs were turned off

    def capture(self, rows: int, window: int) -> bool:
        """Capture the (rows, window) bucket; False (graphs off, reason logged) when it cannot be captured."""
        if self.failure:
            return False
        started = time.perf_counter()
        try:
            self.graphs[rows, window] = self._capture(rows, window)
        except Exception as error:  # noqa: BLE001 -- whatever breaks a capture, decoding goes on eagerly (logged)
            self.failure = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            self.graphs.clear()
            log.warning("CUDA graph capture failed, decoding eagerly instead: %s", self.failure)
            return False
        seconds = time.perf_counter() - started
        self.capture_seconds += seconds
        log.info("Captured the CUDA decode graph for %d rows, window %d in %.2f s", rows, window, seconds)
        return True

    def run(self, tokens: list[int], positions: list[int]) -> torch.Tensor | None:
        """Logits [n, vocab] of one decode step, or None when graphs are off (the caller runs eagerly)."""
        n = len(tokens)
        key = (bucket(n, self.row_sizes), bucket(max(positions) + 1, self.window_sizes))
        if key not in self.graphs and not self.capture(*key):
            return None
        graph, logits = self.graphs[key]
        pad = key[0] - n
        scratch = self.runner.cache.scratch
        values = [tokens + [0] * pad, positions + [0] * pad, positions + [scratch] * pad]
        self.inputs[:, : key[0], 0].copy_(torch.tensor(values, dtype=torch.long), non_blocking=False)
        graph.replay()
        return logits[:n]

    def _step(self, rows: int, window: int) -> torch.Tensor:
        ids, positions, write_at = self.inputs[0, :rows], self.inputs[1, :rows], self.inputs[2, :rows]
        step = Step(0, rows, write_at, window)
        return self.runner.forward(ids, positions, step, self.runner.mask(positions, window))

    def _capture(self, rows: int, window: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self.inputs.zero_()
        self.inputs[2].fill_(self.runner.cache.scratch)  # warm-up and capture write only the scratch column
        side = torch.cuda.Stream(self.runner.device)
        side.wait_stream(torch.cuda.current_stream(self.runner.device))
        with torch.cuda.stream(side):  # Triton compiles, cuBLAS picks its kernels, outside the capture
            for _ in range(2):
                self._step(rows, window)
        torch.cuda.current_stream(self.runner.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread-local: a request thread allocating its context meanwhile must not break the capture (nor fail)
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self._step(rows, window)
        return graph, logits


def attach(runner: SlotRunner) -> DecodeGraphs | None:
    """Graphs for `runner` when its whole model sits on one CUDA device, with the first bucket captured now."""
    devices = {t.device for t in (*runner.module.parameters(), *runner.module.buffers())}
    if runner.device.type != "cuda" or len(devices) != 1:  # a split model moves activations between devices
        return None
    graphs = DecodeGraphs(runner)
    graphs.capture(1, graphs.window_sizes[0])
    return graphs
