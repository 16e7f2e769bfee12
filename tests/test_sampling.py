"""Samplers on synthetic logits, checked against transformers' own logits processors where it has one."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from loaders.base import GenerationParams
from loaders.sampling import adjust_logits, sample_next, token_distribution

VOCAB = 1000
NO_FILTERS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "min_p": 0.0}


def params(**values: object) -> GenerationParams:
    return GenerationParams(**{**NO_FILTERS, **values})


@pytest.fixture()
def logits() -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)) * 3


def support(probs: torch.Tensor) -> set[int]:
    return set(torch.nonzero(probs > 0).flatten().tolist())


def hf_support(logits: torch.Tensor, *warpers: object) -> set[int]:
    scores = logits[None].clone()
    for warper in warpers:
        scores = warper(torch.zeros(1, 0, dtype=torch.long), scores)
    return set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist())


EMPTY = torch.zeros(0, dtype=torch.long)


def test_greedy_is_argmax_whatever_the_samplers(logits: torch.Tensor) -> None:
    greedy = params(do_sample=False, temperature=1.5, top_k=5, top_p=0.5)
    assert sample_next(logits, EMPTY, greedy, None) == int(logits.argmax())
    assert support(token_distribution(logits, EMPTY, greedy)) == {int(logits.argmax())}


def test_top_k_keeps_the_k_largest(logits: torch.Tensor) -> None:
    probs = token_distribution(logits, EMPTY, params(top_k=7))
    assert support(probs) == set(torch.topk(logits, 7).indices.tolist())
    assert torch.isclose(probs.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(logits: torch.Tensor, top_p: float) -> None:
    ours = support(token_distribution(logits, EMPTY, params(top_p=top_p)))
    assert ours == hf_support(logits, TopPLogitsWarper(top_p))


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert support(token_distribution(logits, EMPTY, params(top_p=0.7))) == {0, 1}
    assert support(token_distribution(logits, EMPTY, params(top_p=0.85))) == {0, 1, 2}
    assert support(token_distribution(logits, EMPTY, params(top_p=0.01))) == {0}


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5])
def test_min_p_matches_transformers(logits: torch.Tensor, min_p: float) -> None:
    ours = support(token_distribution(logits, EMPTY, params(min_p=min_p)))
    assert ours == hf_support(logits, MinPLogitsWarper(min_p))
    probs = torch.softmax(logits, 0)
    assert ours == set(torch.nonzero(probs >= min_p * probs.max()).flatten().tolist())


@pytest.mark.parametrize("typical_p", [0.2, 0.6, 0.95])
def test_typical_p_matches_transformers(logits: torch.Tensor, typical_p: float) -> None:
    ours = support(token_distribution(logits, EMPTY, params(typical_p=typical_p)))
    assert ours == hf_support(logits, TypicalLogitsWarper(typical_p))
    assert 1 <= len(ours) < VOCAB


def test_chain_in_transformers_order(logits: torch.Tensor) -> None:
    chosen = params(temperature=0.7, top_k=50, top_p=0.8, min_p=0.05, typical_p=0.9)
    probs = token_distribution(logits, EMPTY, chosen)
    reference = hf_support(
        logits, TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8),
        MinPLogitsWarper(0.05), TypicalLogitsWarper(0.9),
    )
    assert support(probs) == reference
    hf_scores = torch.tensor([float("-inf")] * VOCAB)
    kept = sorted(reference)
    hf_scores[kept] = logits[kept] / 0.7
    assert torch.allclose(probs, torch.softmax(hf_scores, 0), atol=1e-6)


def test_repetition_penalty_matches_transformers(logits: torch.Tensor) -> None:
    context = torch.tensor([3, 5, 5, 9, 700])
    ours = adjust_logits(logits, context, params(repetition_penalty=1.3, repetition_penalty_range=0))
    reference = RepetitionPenaltyLogitsProcessor(1.3)(context[None], logits[None].clone())[0]
    assert torch.equal(ours, reference)
    changed = set(torch.nonzero(ours != logits).flatten().tolist())
    assert changed == {3, 5, 9, 700}


def test_repetition_penalty_range_counts_only_the_last_tokens(logits: torch.Tensor) -> None:
    context = torch.tensor([3, 5, 9, 700])
    ours = adjust_logits(logits, context, params(repetition_penalty=1.3, repetition_penalty_range=2))
    assert set(torch.nonzero(ours != logits).flatten().tolist()) == {9, 700}


def test_presence_and_frequency_penalties() -> None:
    logits = torch.zeros(10)
    context = torch.tensor([1, 2, 2, 2, 7])
    ours = adjust_logits(logits, context, params(presence_penalty=0.5, frequency_penalty=0.25,
                                                 repetition_penalty_range=0))
    expected = torch.zeros(10)
    expected[1] = -0.5 - 0.25
    expected[2] = -0.5 - 0.75
    expected[7] = -0.5 - 0.25
    assert torch.equal(ours, expected)


def test_penalties_apply_to_greedy_too() -> None:
    logits = torch.tensor([1.0, 5.0, 4.0])
    context = torch.tensor([1])
    assert sample_next(logits, context, params(do_sample=False), None) == 1
    assert sample_next(logits, context, params(do_sample=False, repetition_penalty=1.5), None) == 2


def test_ban_eos_removes_eos_even_when_most_likely() -> None:
    logits = torch.tensor([0.0, 9.0, 1.0, 2.0])
    banned = params(do_sample=False, ban_eos_token=True)
    assert sample_next(logits, EMPTY, banned, None, eos_ids=(1,)) == 3
    assert token_distribution(logits, EMPTY, params(ban_eos_token=True), eos_ids=(1,))[1] == 0
    assert sample_next(logits, EMPTY, params(do_sample=False), None, eos_ids=(1,)) == 1


def test_sampling_is_seeded_and_stays_in_the_support(logits: torch.Tensor) -> None:
    chosen = params(top_k=3)

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [sample_next(logits, EMPTY, chosen, generator) for _ in range(200)]

    first = draws(1)
    assert first == draws(1)
    assert first != draws(2)
    assert set(first) == set(torch.topk(logits, 3).indices.tolist())


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])  # flat (full sort) to peaked (only the head is sorted)
@pytest.mark.parametrize("chosen", [{"top_p": 0.9}, {"min_p": 0.05}, {"top_p": 0.95, "min_p": 0.02, "typical_p": 0.9},
                                    {"top_p": 0.3, "temperature": 0.5}])
def test_full_vocabulary_matches_transformers(scale: float, chosen: dict[str, float]) -> None:
    logits = torch.randn(49152, generator=torch.Generator().manual_seed(1)) * scale
    warpers = [TemperatureLogitsWarper(chosen.get("temperature", 1.0))]
    warpers += [TopPLogitsWarper(chosen["top_p"])] if "top_p" in chosen else []
    warpers += [MinPLogitsWarper(chosen["min_p"])] if "min_p" in chosen else []
    warpers += [TypicalLogitsWarper(chosen["typical_p"])] if "typical_p" in chosen else []
    probs = token_distribution(logits, EMPTY, params(**chosen))
    assert support(probs) == hf_support(logits, *warpers)
    assert torch.isclose(probs.sum(), torch.tensor(1.0))
