"""The last request's exact prompt, kept for the Prompt view of the Chat and Notebook tabs.

`recording(build, log, key)` wraps a turn builder: when the request's turn comes, the turn is built as always and
its prompt text, parameters and model are kept under `key` (a chat's id, or a Notebook session). Nothing more is
done then, so a turn costs what it did. The `PromptRecord` is made when the view asks for it (`PromptLog.get`):
the token ids come from the engine's own `encode_prompt` (the BOS rule and the left truncation included), so the
view shows what the model got, not a second guess; pieces are each token decoded alone, special tokens kept, for
at most `SHOWN_TOKENS` tokens of a long prompt (the first `HEAD_TOKENS` and the last ones).

Tokens are only made with the model lock held and the same model still loaded (a tokenizer may not outlive its
model's unload); when the model is busy the record has the text alone, and the tokens come at the next look. A
model that streams text (a remote engine) has no token ids: its record says so. `PromptLog` keeps the last
`MAX_RECORDS` keys in memory; it is part of `AppState`.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from loaders.base import AnyModel, GenerationParams, LoadedModel
from loaders.errors import GenerationError
from webui.engine import encode_prompt, is_token_model
from webui.generation import Turn, TurnBuilder
from webui.model_gate import ModelGate

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

MAX_RECORDS = 64
SHOWN_TOKENS = 4096
HEAD_TOKENS = 512
LOCK_WAIT_SECONDS = 0.25  # the view waits this long for a busy model, then shows the text alone
BUSY = "The model is busy, so the tokens are not shown yet: open this view again when it is free."
GONE = "The model that ran this request is no longer loaded, so its tokens cannot be shown."
REMOTE = "This model runs on a remote engine, which turns the text into tokens itself: token ids are not available."


@dataclass(frozen=True)
class TokenView:
    """One token of the prompt: its place, id, text alone, and kind ("bos", "eos", "special" or "")."""

    index: int
    id: int
    piece: str
    kind: str = ""


@dataclass(frozen=True)
class PromptRecord:
    """The exact prompt of one request, on the model that ran it."""

    model: str
    text: str
    template: str  # the template name the chat asked for ("" for a raw prompt)
    context_length: int  # the model's (0: the engine's own limit)
    max_new_tokens: int
    truncation_length: int
    n_tokens: int | None = None  # None: no token ids (a remote engine, or not made yet)
    tokens: tuple[TokenView, ...] = ()  # all of them, or the first and last of a long prompt
    cut_tokens: int = 0  # tokens cut from the left to fit the context
    note: str = ""

    @property
    def window(self) -> int:
        """The tokens prompt and reply share: the truncation length, within the model's context."""
        return min(self.truncation_length, self.context_length) if self.context_length else self.truncation_length


@dataclass(frozen=True)
class _Pending:
    """A turn as built, before its tokens are made."""

    model: Callable[[], AnyModel | None]  # a weak reference: the log never keeps an unloaded model alive
    record: PromptRecord
    params: GenerationParams


class PromptLog:
    """The last prompt per key (chat id, Notebook session); the oldest key is dropped beyond `size`.
    `current()` is the loaded model, `gate` the model gate (loads and unloads hold it alone)."""

    def __init__(self, current: Callable[[], Any], gate: ModelGate, size: int = MAX_RECORDS) -> None:
        self._items: OrderedDict[str, PromptRecord | _Pending] = OrderedDict()
        self._current, self._gate, self._size = current, gate, size
        self._lock = threading.Lock()

    def put(self, key: str, info: LoadedInfo, turn: Turn, *, template: str = "") -> None:
        model, params = info.model, turn.params
        record = PromptRecord(model=model.name, text=turn.prompt, template=template,
                              context_length=model.context_length, max_new_tokens=params.max_new_tokens,
                              truncation_length=params.truncation_length)  # fmt: skip
        item: PromptRecord | _Pending = _Pending(_weak(model), record, params) if is_token_model(model) else (
            replace(record, note=REMOTE))  # fmt: skip
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, key: str | None) -> PromptRecord | None:
        """The record of `key`'s last request, its tokens made now if they were not yet."""
        with self._lock:
            item = self._items.get(key) if key else None
        if not isinstance(item, _Pending):
            return item
        record, done = self._tokens(item)
        if done:
            with self._lock:
                if self._items.get(key) is item:  # not replaced by a newer request meanwhile
                    self._items[key] = record
        return record

    def _tokens(self, pending: _Pending) -> tuple[PromptRecord, bool]:
        """(the record with its tokens, True) or (the text alone with why, whether that is final)."""
        model = pending.model()
        if model is None:
            return replace(pending.record, note=GONE), True
        with self._gate.peek(LOCK_WAIT_SECONDS) as admitted:
            if not admitted:
                return replace(pending.record, note=BUSY), False
            if self._current() is not model:
                return replace(pending.record, note=GONE), True
            return tokens_of(model, pending.record, pending.params), True


def recording(build: TurnBuilder, log: PromptLog, key: str, *, template: str = "") -> TurnBuilder:
    """`build`, keeping each turn it makes under `key` for the Prompt view."""

    def build_and_record(info: LoadedInfo) -> Turn:
        turn = build(info)
        log.put(key, info, turn, template=template)
        return turn

    return build_and_record


def tokens_of(model: LoadedModel, record: PromptRecord, params: GenerationParams) -> PromptRecord:
    """`record` with the token ids the engine sends for its text on `model`, and the shown tokens' pieces."""
    try:
        ids = encode_prompt(model, record.text, params)  # the engine's own encoding: what the model got
    except GenerationError as error:
        return replace(record, note=str(error))
    return replace(record, n_tokens=len(ids), tokens=_token_views(model, ids), cut_tokens=_cut(model, record, ids))


def _cut(model: LoadedModel, record: PromptRecord, ids: list[int]) -> int:
    """How many tokens the engine cut from the left; the text is encoded again only when it may have been cut."""
    if len(ids) < record.window - record.max_new_tokens:
        return 0
    bos = model.tokenizer.bos_token_id
    whole = model.tokenizer.encode(record.text, add_bos=False)
    return max(0, sum(1 for i in whole if i != bos) - sum(1 for i in ids if i != bos))


def _token_views(model: LoadedModel, ids: list[int]) -> tuple[TokenView, ...]:
    """The shown tokens: all of a prompt up to `SHOWN_TOKENS`, else the first `HEAD_TOKENS` and the last ones."""
    n = len(ids)
    shown = range(n) if n <= SHOWN_TOKENS else [*range(HEAD_TOKENS), *range(n - SHOWN_TOKENS + HEAD_TOKENS, n)]
    tokenizer = model.tokenizer
    eos = set(tokenizer.eos_token_ids)
    views = []
    for index in shown:
        token = ids[index]
        piece = tokenizer.decode([token], skip_special_tokens=False)
        if token == tokenizer.bos_token_id:
            kind = "bos"
        elif token in eos:
            kind = "eos"
        elif piece and not tokenizer.decode([token], skip_special_tokens=True):
            kind = "special"
        else:
            kind = ""
        views.append(TokenView(index, token, piece, kind))
    return tuple(views)


def _weak(model: AnyModel) -> Callable[[], AnyModel | None]:
    try:
        return weakref.ref(model)
    except TypeError:  # a model type without weak references: keep it (it frees its weights on unload anyway)
        return lambda: model
