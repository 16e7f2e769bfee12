"""One thread for all of a PyTorch model's computation: its load, warm-up, every batch step, embeddings, adapters.

torch's CPU kernels use GNU OpenMP, which gives each thread that starts parallel work its own pool of worker
threads, kept until that thread exits. Once the pools of a process hold more threads than there are CPUs, libgomp
throttles its spin-wait (to ~100 iterations), so each of the thousands of small parallel regions of a decode step
puts its workers to sleep and wakes them again. On a 2-CPU machine GPTQ decode fell from 45–67 to 19–32 tok/s as
soon as a second thread had run torch work (the request threads that step the batch, the persistent thread that
loaded the model) — `GOMP_SPINCOUNT` and `OMP_WAIT_POLICY` do not lift the throttle. Running all of a model's work on
one thread keeps one pool. A call made on the thread itself runs at once (re-entrant).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ComputeThread:
    """A single worker thread; `run` calls a function on it and returns its result (or raises its error)."""

    def __init__(self, name: str) -> None:
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._started)

    def _started(self) -> None:
        self._thread = threading.current_thread()

    def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Let the thread end once its current call returns (its OpenMP pool goes with it)."""
        self._executor.shutdown(wait=False)
