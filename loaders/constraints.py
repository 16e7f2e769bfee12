"""Structured output: a `ConstraintSpec` (JSON object, JSON schema, GBNF grammar) turned into a per-request mask.

Every local backend enforces it with one grammar engine, `llguidance` (the engine of OpenAI's structured outputs,
also used by vLLM, SGLang and llama.cpp's own LLGUIDANCE build): `bench/grammar_engines.py` measured the lowest
per-token cost among llguidance, xgrammar and outlines-core on SmolLM2's 49152-token vocabulary (and millisecond
compiles), and `bench/structured.py` measured llama.cpp's own GBNF sampler at 13 times llguidance's CPU cost per
token on a JSON schema (+6.6 ms against +0.5 ms). One engine also means one set of JSON conventions:
whitespace is at most one space where JSON allows it (as llama.cpp's converter writes `space ::= " "?`), so a small
model cannot wander off into endless blank lines, and property order is the schema's.

A `GrammarCompiler` (one per loaded model: the vocabulary's token bytes, read once, ~0.5-1.5 s, from the transformers
tokenizer or from llama.cpp's vocabulary) starts one `TokenConstraint` per request, which masks the next-token
logits (a torch tensor, or a numpy array on llama.cpp), advances on the chosen token and says when the grammar is
complete. `check(spec)` compiles a spec without a tokenizer, so a bad schema or grammar is refused before a request
waits; `constraint_spec` builds a checked spec from what the API or the Parameters tab is given.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loaders.base import ConstraintSpec, ModelTokenizer
from loaders.errors import ConstraintError

if TYPE_CHECKING:
    import torch

JSON_OPTIONS = {"whitespace_pattern": r" ?"}  # as llama.cpp's `space ::= " "?`
ANY_OBJECT = '{"type": "object"}'  # "json_object": any JSON object, through the schema path of each engine
MAX_SPEC_CHARS = 200_000  # a schema or grammar longer than this is refused (the API's body limit is larger)


def llguidance_grammar(spec: ConstraintSpec) -> str:
    """The llguidance grammar of `spec` (not yet checked)."""
    import llguidance

    if spec.kind == "grammar":
        return llguidance.grammar_from("gbnf", spec.text)  # GBNF, or Lark: llguidance reads both
    schema = ANY_OBJECT if spec.kind == "json_object" else spec.text
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def check(spec: ConstraintSpec) -> None:
    """Raise `ConstraintError` (what is wrong) if `spec` does not compile."""
    import llguidance

    if len(spec.text) > MAX_SPEC_CHARS:
        raise ConstraintError(f"The {_what(spec)} is {len(spec.text)} characters long; at most {MAX_SPEC_CHARS}.")
    try:
        error = llguidance.LLMatcher.validate_grammar(llguidance_grammar(spec))
    except ValueError as exc:  # not JSON, or GBNF that does not convert
        error = str(exc)
    if error:
        raise ConstraintError(f"The {_what(spec)} cannot be enforced: {error}")


def _what(spec: ConstraintSpec) -> str:
    return "grammar" if spec.kind == "grammar" else "JSON schema"


class TokenConstraint:
    """One request's grammar state: `mask` the logits, `advance` on the chosen token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    @property
    def finished(self) -> bool:
        """The grammar is complete: nothing but the end of the reply may follow."""
        return self._matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [vocab] with every token the grammar forbids at -inf (in place)."""
        import torch  # here, not at the top: llama.cpp masks numpy arrays and never needs torch

        forbidden = torch.from_numpy(~self.allowed(logits.shape[0]))  # numpy unpacks the bits fastest on a CPU
        return logits.masked_fill_(forbidden.to(logits.device, non_blocking=True), float("-inf"))

    def allowed(self, vocab: int) -> np.ndarray:
        """Which of `vocab` tokens the grammar allows next: bool [vocab] (tokens it does not know: never)."""
        self._fill()
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little").view(np.bool_)
        return bits[:vocab] if vocab <= bits.shape[0] else np.pad(bits, (0, vocab - bits.shape[0]))

    def advance(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._raise_on_error()

    def _fill(self) -> None:
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        self._raise_on_error()

    def _raise_on_error(self) -> None:
        if self._matcher.is_error():
            raise ConstraintError(f"The grammar engine stopped: {self._matcher.get_error()}")


class GrammarCompiler:
    """Starts `TokenConstraint`s for one loaded model's vocabulary (read on first use by `read_vocabulary`)."""

    def __init__(self, read_vocabulary: Callable[[], Any]) -> None:
        self._read = read_vocabulary
        self._engine_tokenizer: Any = None

    @classmethod
    def for_tokenizer(cls, tokenizer: ModelTokenizer) -> GrammarCompiler:
        """For a model whose tokenizer wraps a transformers one (`.hf`: the Transformers, GPTQ, native GGUF loaders)."""

        def read() -> Any:
            import llguidance.hf

            eos = list(tokenizer.eos_token_ids)
            try:
                return llguidance.hf.from_tokenizer(getattr(tokenizer, "hf", None), eos_token=eos or None)
            except (ValueError, TypeError) as error:
                raise ConstraintError("Structured output needs a model with a fast (tokenizer.json) tokenizer; "
                                      f"this one cannot drive the grammar engine ({error}).") from error

        return cls(read)

    @classmethod
    def for_llama_vocab(cls, vocab: Any, eos_ids: Sequence[int]) -> GrammarCompiler:
        """For a model in llama.cpp (`vocab`: its `llama_vocab` pointer)."""

        def read() -> Any:
            import llguidance.llamacpp

            with warnings.catch_warnings():  # it calls a deprecated llama.cpp function once per token (49152 warnings)
                warnings.simplefilter("ignore", DeprecationWarning)
                return llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=list(eos_ids) or None)

        return cls(read)

    def start(self, spec: ConstraintSpec) -> TokenConstraint:
        import llguidance

        if self._engine_tokenizer is None:
            self._engine_tokenizer = self._read()
        matcher = llguidance.LLMatcher(self._engine_tokenizer, llguidance_grammar(spec), log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"The {_what(spec)} cannot be enforced: {matcher.get_error()}")
        return TokenConstraint(matcher, self._engine_tokenizer.vocab_size)


def spec_from_schema(schema: dict[str, Any]) -> ConstraintSpec:
    """A "json_schema" spec of a schema object (compact JSON; property order kept: it is the order of the reply)."""
    return ConstraintSpec("json_schema", json.dumps(schema, separators=(",", ":")))


def constraint_spec(kind: str, source: str | dict[str, Any] = "") -> ConstraintSpec:
    """The checked spec of `kind` ("json_object", "json_schema" or "grammar") from what an API request or the
    Parameters tab gives: a JSON schema as an object or as JSON text, a GBNF grammar (`source` is unused for
    "json_object"). `ConstraintError` says what is wrong. The API and the UI both build their constraint here."""
    if kind == "json_object":
        spec = ConstraintSpec("json_object")
    elif kind == "json_schema":
        spec = spec_from_schema(source if isinstance(source, dict) else _schema_of_text(source))
    elif kind == "grammar":
        if not isinstance(source, str) or not source.strip():
            raise ConstraintError("The grammar is empty: write a GBNF grammar (root ::= ...).")
        spec = ConstraintSpec("grammar", source)
    else:
        raise ConstraintError(f"Unknown reply format {kind!r}: use json_object, json_schema or grammar.")
    check(spec)
    return spec


def _schema_of_text(text: str) -> dict[str, Any]:
    """The schema object written in `text` (size bounded before it is parsed)."""
    if not text.strip():
        raise ConstraintError('The JSON schema is empty: write one (e.g. {"type": "object"}).')
    if len(text) > MAX_SPEC_CHARS:
        raise ConstraintError(f"The JSON schema is {len(text)} characters long; at most {MAX_SPEC_CHARS}.")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise ConstraintError(f"The JSON schema is not valid JSON: {error.msg} at {where}.") from None
    except RecursionError:
        raise ConstraintError("The JSON schema is nested too deeply.") from None
    if not isinstance(schema, dict):
        raise ConstraintError("The JSON schema must be a JSON object: {...}.")
    return schema
