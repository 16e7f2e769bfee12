"""Next-token selection for the PyTorch backends: penalties, then greedy or temperature + truncation samplers.

One logits vector in, one token id out; `next_tokens` does a batch of rows, each with its own parameters, and leaves
the ids on the device (the caller reads them all at once: one host sync per step). Order as in
`transformers.generate`: repetition penalty (HF semantics), presence / frequency penalties (OpenAI semantics), EOS
ban, the grammar mask of a structured-output request (`select_next`), then temperature, top_k, top_p, min_p,
typical_p. Log-probabilities are read after the mask.
Every step is a vectorized tensor operation; truncation samplers work on a sorted candidate list (the top_k
survivors when top_k is on, else the head that holds every top_p / min_p survivor), so a sampled token costs one
`topk` (or, at worst, one `sort`) of the vocabulary, not one per sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from loaders.base import GenerationParams, TokenLogprob

if TYPE_CHECKING:
    from loaders.constraints import TokenConstraint

NEG_INF = float("-inf")


def sample_next(
    logits: Tensor,
    context_ids: Tensor,
    params: GenerationParams,
    generator: torch.Generator | None,
    *,
    eos_ids: tuple[int, ...] = (),
) -> int:
    """The next token id. `logits`: [vocab] float32; `context_ids`: [n] long, prompt and reply so far."""
    return int(next_token(logits, context_ids, params, generator, eos_ids=eos_ids))


def next_token(
    logits: Tensor,
    context_ids: Tensor,
    params: GenerationParams,
    generator: torch.Generator | None,
    *,
    eos_ids: tuple[int, ...] = (),
) -> Tensor:
    """As `sample_next`, as a 0-d long tensor on the logits' device: nothing waits for the device."""
    logits = adjust_logits(logits, context_ids, params, eos_ids=eos_ids)
    if _is_greedy(params):
        return torch.argmax(logits)
    probs, ids = candidates(logits, params)
    return ids[_draw(probs, generator)]


def next_tokens(
    logits: Tensor,
    contexts: Sequence[Tensor],
    params: Sequence[GenerationParams],
    generators: Sequence[torch.Generator | None],
    *,
    eos_ids: tuple[int, ...] = (),
) -> Tensor:
    """One token per row of `logits` [rows, vocab], each row with its own context, samplers and generator: [rows]
    long on the logits' device. Rows that are plain greedy share one argmax; the others go one by one."""
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    plain = [i for i, p in enumerate(params) if _is_greedy(p) and not _adjusts(p, eos_ids)]
    if len(plain) == len(params):
        return torch.argmax(logits, dim=-1, out=out)
    if plain:
        out[plain] = torch.argmax(logits[plain], dim=-1)
    for i in (i for i in range(len(params)) if i not in plain):
        out[i] = next_token(logits[i], contexts[i], params[i], generators[i], eos_ids=eos_ids)
    return out


def _adjusts(params: GenerationParams, eos_ids: tuple[int, ...]) -> bool:
    """Whether `adjust_logits` can change anything for `params`."""
    return (params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty)
            or (params.ban_eos_token and bool(eos_ids)))  # fmt: skip


def _draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """Index of one draw from `probs`. On the CPU `multinomial`; elsewhere the exponential race
    (argmax of p / Exp(1), the same distribution), which, unlike `multinomial`, never waits for the device."""
    if probs.device.type == "cpu":
        return torch.multinomial(probs, 1, generator=generator)[0]
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / race)


def select_next(
    logits: Tensor,
    context_ids: Tensor,
    params: GenerationParams,
    generator: torch.Generator | None,
    *,
    eos_ids: tuple[int, ...] = (),
    constraint: TokenConstraint | None = None,
) -> tuple[int, TokenLogprob | None]:
    """`sample_next` with a grammar (`constraint` masks the logits after the penalties and advances on the pick)
    and, when `params.logprobs` is set, the pick's log-probability from those same processed logits."""
    logits = adjust_logits(logits, context_ids, params, eos_ids=eos_ids)
    if constraint is not None:
        logits = constraint.mask(logits)
    if _is_greedy(params):
        token = int(torch.argmax(logits))
    else:
        probs, ids = candidates(logits, params)
        token = int(ids[_draw(probs, generator)])
    if constraint is not None:
        constraint.advance(token)
    return token, None if params.logprobs is None else token_logprob(logits, token, params.logprobs)


def token_logprob(logits: Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under `logits` [vocab] and the `top` most likely (token, logprob) pairs."""
    log_probs = torch.log_softmax(logits, dim=0)
    best = torch.topk(log_probs, min(top, log_probs.shape[0])) if top > 0 else None
    pairs = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    return TokenLogprob(token, float(log_probs[token]), pairs)


def token_distribution(
    logits: Tensor, context_ids: Tensor, params: GenerationParams, *, eos_ids: tuple[int, ...] = ()
) -> Tensor:
    """The probabilities `sample_next` draws from, over the whole vocabulary ([vocab], zeros where cut).
    Greedy gives a one-hot vector on the argmax."""
    logits = adjust_logits(logits, context_ids, params, eos_ids=eos_ids)
    out = torch.zeros_like(logits)
    if _is_greedy(params):
        out[torch.argmax(logits)] = 1.0
        return out
    probs, ids = candidates(logits, params)
    return out.scatter_(0, ids, probs)


def adjust_logits(
    logits: Tensor, context_ids: Tensor, params: GenerationParams, *, eos_ids: tuple[int, ...] = ()
) -> Tensor:
    """Penalties and the EOS ban; returns `logits` itself when nothing applies, else a new tensor."""
    window = context_ids
    if params.repetition_penalty_range > 0:
        window = context_ids[-params.repetition_penalty_range :]
    if params.repetition_penalty != 1.0 and window.numel():
        logits = repetition_penalty(logits, window, params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and window.numel():
        logits = presence_frequency_penalty(logits, window, params.presence_penalty, params.frequency_penalty)
    if params.ban_eos_token and eos_ids:
        logits = logits.clone()
        logits[list(eos_ids)] = NEG_INF
    return logits


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF semantics: a seen token's logit is divided by `penalty` if positive, multiplied if negative."""
    scores = logits.gather(0, seen)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(0, seen, scores)


def presence_frequency_penalty(logits: Tensor, seen: Tensor, presence: float, frequency: float) -> Tensor:
    """OpenAI semantics: logit -= count * frequency + (count > 0) * presence."""
    counts = torch.zeros_like(logits).scatter_add_(0, seen, torch.ones_like(seen, dtype=logits.dtype))
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def candidates(logits: Tensor, params: GenerationParams) -> tuple[Tensor, Tensor]:
    """Temperature and truncation samplers. Returns (probs [m], token ids [m]) of the surviving tokens,
    most likely first; `probs` sums to 1."""
    scores = logits / params.temperature if params.temperature != 1.0 else logits
    vocab = scores.shape[0]
    log_norm = None  # log of the whole vocabulary's softmax denominator, when `scores` is only its head
    if 0 < params.top_k < vocab:
        scores, ids = torch.topk(scores, params.top_k)  # sorted, largest first; top_p renormalizes over these
    elif params.top_p < 1.0 or params.typical_p < 1.0 or params.min_p > 0.0:
        scores, ids, log_norm = _sorted_head(scores, params)
    else:
        return torch.softmax(scores, dim=0), torch.arange(vocab, device=scores.device)
    if params.top_p < 1.0:
        scores = _top_p(scores, params.top_p, log_norm)
    if params.min_p > 0.0:
        scores = _min_p(scores, params.min_p)
    if params.typical_p < 1.0:
        scores = _typical(scores, params.typical_p)
    return torch.softmax(scores, dim=0), ids


HEAD = 256  # a full sort of a 50k vocabulary costs ~4 ms on a CPU core; topk(256) a fraction of that


def _sorted_head(scores: Tensor, params: GenerationParams) -> tuple[Tensor, Tensor, Tensor | None]:
    """The scores sorted descending: only the first HEAD when they provably hold every top_p / min_p survivor
    (the tokens after them would be cut anyway), else all of them."""
    # Deciding whether the head suffices reads a value: a host sync, worth it on the CPU only (GPUs sort fast).
    if (params.top_p < 1.0 or params.min_p > 0.0) and scores.shape[0] > HEAD and scores.device.type == "cpu":
        head, ids = torch.topk(scores, HEAD)
        log_norm = torch.logsumexp(scores, dim=0)
        probs = torch.exp(head - log_norm)
        if params.top_p < 1.0 and probs.sum() >= params.top_p:
            return head, ids, log_norm
        if params.top_p >= 1.0 and probs[-1] < params.min_p * probs[0]:
            return head, ids, log_norm
    sorted_scores, ids = torch.sort(scores, descending=True)
    return sorted_scores, ids, None


def _top_p(sorted_scores: Tensor, top_p: float, log_norm: Tensor | None = None) -> Tensor:
    """Keep the smallest head of the (descending) list whose probability reaches `top_p`; at least one token.
    `log_norm`: the softmax denominator (log) when the list is the head of a longer one."""
    if log_norm is None:
        probs = torch.softmax(sorted_scores, dim=0)
    else:
        probs = torch.exp(sorted_scores - log_norm)
    before = torch.cumsum(probs, dim=0) - probs  # mass of the strictly more likely tokens
    drop = before >= top_p
    drop[0] = False
    return sorted_scores.masked_fill(drop, NEG_INF)


def _min_p(sorted_scores: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below `min_p` times the most likely one's."""
    probs = torch.softmax(sorted_scores, dim=0)
    return sorted_scores.masked_fill(probs < min_p * probs[0], NEG_INF)


def _typical(scores: Tensor, mass: float) -> Tensor:
    """Locally typical sampling (Meister et al.), as HF's TypicalLogitsWarper: keep the tokens whose surprisal is
    closest to the entropy until their probability reaches `mass`."""
    log_probs = torch.log_softmax(scores, dim=0)
    probs = log_probs.exp()
    entropy = -(log_probs * probs).nansum()
    distance = (-log_probs - entropy).abs()  # inf for tokens already cut
    order_distance, order = torch.sort(distance)
    cumulative = probs[order].cumsum(dim=0)
    last = (cumulative < mass).sum().clamp(max=scores.shape[0] - 1)  # a 0-d tensor: no device sync
    drop_sorted = order_distance > order_distance[last]
    drop_sorted[0] = False
    drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def _is_greedy(params: GenerationParams) -> bool:
    return not params.do_sample or params.temperature <= 0.0
