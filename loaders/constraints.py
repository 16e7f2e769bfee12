"""Structured output: a `ConstraintSpec` (JSON object, JSON schema, GBNF grammar) turned into what a backend enforces.

The PyTorch backends mask logits with `llguidance` (chosen over xgrammar and outlines-core by `bench/
grammar_engines.py`: the lowest per-token cost on SmolLM2's 49152-token vocabulary, ~10 ms compiles, GBNF and
Lark grammars, used by vLLM, SGLang and llama.cpp): `GrammarCompiler` (one per loaded model: the tokenizer's
token bytes, built once, ~1 s) starts one `TokenConstraint` per request, which masks the next-token logits,
advances on the chosen token and says when the grammar is complete. llama.cpp runs its own grammar sampler:
`gbnf(spec)` is the grammar text it gets. Both read the same JSON conventions: whitespace is at most one space
where JSON allows it (llama.cpp's converter writes `space ::= " "?`), so a small model cannot wander off into
endless blank lines and the reply always ends.

`check(spec)` compiles a spec without a tokenizer, so a bad schema or grammar is refused before a request waits.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from loaders.base import ConstraintSpec, ModelTokenizer
from loaders.errors import ConstraintError

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


def gbnf(spec: ConstraintSpec) -> str:
    """llama.cpp's grammar text for `spec` (its own JSON-schema converter for the JSON kinds)."""
    if spec.kind == "grammar":
        return spec.text
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(ANY_OBJECT if spec.kind == "json_object" else spec.text)
    except (ValueError, KeyError, TypeError, NotImplementedError, RecursionError, AssertionError) as error:
        raise ConstraintError(f"llama.cpp cannot turn the {_what(spec)} into a grammar: {error}") from error


def _what(spec: ConstraintSpec) -> str:
    return "grammar" if spec.kind == "grammar" else "JSON schema"


class TokenConstraint:
    """One request's grammar state on a PyTorch backend: `mask` the logits, `advance` on the chosen token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab = vocab_size  # tokens the grammar engine knows; logits beyond are never allowed
        self._bitmask = torch.empty((vocab_size + 31) // 32, dtype=torch.int32)
        self._shifts: torch.Tensor | None = None

    @property
    def finished(self) -> bool:
        """The grammar is complete: nothing but the end of the reply may follow."""
        return self._matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [vocab] with every token the grammar forbids at -inf (in place)."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        self._raise_on_error()
        if self._shifts is None or self._shifts.device != logits.device:
            self._shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        words = self._bitmask.to(logits.device, non_blocking=True)
        allowed = ((words.unsqueeze(-1) >> self._shifts) & 1).bool().view(-1)  # [32 * words]
        known = min(self._vocab, logits.shape[0])
        logits[:known].masked_fill_(~allowed[:known], float("-inf"))
        logits[known:] = float("-inf")
        return logits

    def advance(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._raise_on_error()

    def _raise_on_error(self) -> None:
        if self._matcher.is_error():
            raise ConstraintError(f"The grammar engine stopped: {self._matcher.get_error()}")


class GrammarCompiler:
    """Starts `TokenConstraint`s for one loaded model's tokenizer (its token bytes are read on first use)."""

    def __init__(self, tokenizer: ModelTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ll_tokenizer: Any = None

    def start(self, spec: ConstraintSpec) -> TokenConstraint:
        import llguidance

        tokenizer = self._engine_tokenizer()
        matcher = llguidance.LLMatcher(tokenizer, llguidance_grammar(spec), log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"The {_what(spec)} cannot be enforced: {matcher.get_error()}")
        return TokenConstraint(matcher, tokenizer.vocab_size)

    def _engine_tokenizer(self) -> Any:
        if self._ll_tokenizer is None:
            import llguidance.hf

            hf = getattr(self._tokenizer, "hf", None)
            eos = list(self._tokenizer.eos_token_ids)
            try:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(hf, eos_token=eos or None)
            except (ValueError, TypeError) as error:
                raise ConstraintError("Structured output needs a model with a fast (tokenizer.json) tokenizer; "
                                      f"this one cannot drive the grammar engine ({error}).") from error
        return self._ll_tokenizer


def spec_from_schema(schema: dict[str, Any]) -> ConstraintSpec:
    """A "json_schema" spec of a schema object (compact JSON; property order kept: it is the order of the reply)."""
    return ConstraintSpec("json_schema", json.dumps(schema, separators=(",", ":")))
