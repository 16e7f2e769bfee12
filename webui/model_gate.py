"""Who may use the loaded model and when: up to `slots` generations at once, first come first served beyond that, and
load / unload alone.

`AppState` makes one `ModelGate`; the generation service (`webui/generation.py`) lines requests up through it and the
model service (`webui/model_service.py`) holds it `exclusive` while it loads or unloads, so no generation ever runs
on a model being swapped, and a request waiting in line is built for the model it will really run on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ModelGate:
    """Who may use the model and when: up to `slots` generations at once, admitted first come first served, and
    load / unload alone (a readers-writer lock: a waiting load keeps new generations out, so it cannot starve).

    A generation lines up (`line_up`), waits for its turn (`wait`, which also reports its place in line), runs, and
    leaves (`leave`); a line-up that ends before its turn leaves the line (`leave_line`). Nothing here is bound to a
    thread: a streaming generator may be resumed by another thread than the one that started it (Gradio does)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._running = 0
        self._owner: int | None = None  # the thread holding `exclusive`
        self._depth = 0  # how many times the owner entered `exclusive`
        self._writers = 0  # loads / unloads waiting for their turn

    def line_up(self) -> object:
        with self._cond:
            ticket = object()
            self._line.append(ticket)
            return ticket

    def wait(self, ticket: object, slots: Callable[[], int], timeout: float) -> int:
        """0 once `ticket`'s turn has come (it is running from then on); else, after `timeout` seconds or a change,
        its place in line (1 = next)."""
        with self._cond:
            if self._admit(ticket, slots):
                return 0
            self._cond.wait(timeout)
            return 0 if self._admit(ticket, slots) else self._line.index(ticket) + 1

    def _admit(self, ticket: object, slots: Callable[[], int]) -> bool:
        if self._line[0] is not ticket or self._owner is not None or self._writers or self._running >= slots():
            return False
        self._line.popleft()
        self._running += 1
        self._cond.notify_all()  # the next in line moved up
        return True

    def leave_line(self, ticket: object) -> None:
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self._cond.notify_all()

    def leave(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model alone (load, unload): waits for the running generations to end; re-entrant in one
        thread (a load unloads the previous model)."""
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:
                self._writers += 1
                try:
                    while self._owner is not None or self._running:
                        self._cond.wait()
                finally:
                    self._writers -= 1
                self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """Nothing runs, waits, loads or unloads."""
        with self._cond:
            return not (self._running or self._line or self._owner is not None or self._writers)

    @contextmanager
    def exclusive_if_idle(self) -> Iterator[bool]:
        """Hold the model alone only if it is idle now (the idle unload): yields whether it does; never waits."""
        with self._cond:
            busy = bool(self._running or self._line or self._owner is not None or self._writers)
            if not busy:
                self._owner, self._depth = threading.get_ident(), 1
        if busy:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._depth, self._owner = 0, None
                self._cond.notify_all()

    @contextmanager
    def peek(self, timeout: float | None) -> Iterator[bool]:
        """Use the model beside the running generations, outside the line (counting a prompt's tokens for the
        Prompt view, embeddings): yields True once no load or unload holds or waits for it, False after `timeout`
        seconds (None: no limit; then the caller must not touch the model)."""
        with self._cond:
            admitted = self._cond.wait_for(lambda: self._owner is None and not self._writers, timeout)
            if admitted:
                self._running += 1
        try:
            yield admitted
        finally:
            if admitted:
                self.leave()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    @property
    def running(self) -> int:
        with self._cond:
            return self._running
