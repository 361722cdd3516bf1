"""Beam search rules of transformers 4.25.1 on hand-made next-token tables.

Each table gives next-token probabilities from the last token of a row; the expected outputs
follow from the rules by hand (traced in the comments), and each test also checks that the rule
it is about changes the answer (so the test can tell the rules apart).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ram_grounded.models.beam_search import beam_search

PAD, EOS, P, A, B, D, E, X, R = range(9)
FILLERS = list(range(9, 15))
V = 15
FLOOR = 1e-9  # probability of every token a table does not mention

Table = Callable[[tuple[int, ...]], dict[int, float]]


def table_step(table: Table, calls: list | None = None):
    """Step function: log-probabilities from ``table`` for each row (no cache)."""

    def step(ids: torch.Tensor, cache):
        if calls is not None:
            calls.append(tuple(ids.shape))
        rows = []
        for row in ids.tolist():
            logits = torch.full((V,), math.log(FLOOR))
            for tok, p in table(tuple(row)).items():
                logits[tok] = math.log(p)
            rows.append(logits)
        return torch.stack(rows), None

    return step


def _run(table: Table, prompt: list[list[int]], **kw) -> torch.Tensor:
    kw.setdefault("min_length", 0)
    return beam_search(table_step(table), torch.tensor(prompt), eos_token_id=EOS, pad_token_id=PAD, **kw)


def _filler_spread(total: float, n: int) -> dict[int, float]:
    return {f: total / n for f in FILLERS[:n]}


def test_hypothesis_score_is_normalised_by_the_full_length_including_prompt() -> None:
    # P -> A (.497) then EOS (.95): hyp [P P P A], sum -0.750
    # P -> B (.223) -> D -> E -> EOS (each .999): hyp [P P P B D E], sum -1.503
    def table(row):
        last = row[-1]
        if last == P:
            return {A: 0.497, B: 0.223, **_filler_spread(0.28, 4)}
        if last == A:
            return {EOS: 0.95, **_filler_spread(0.05, 4)}
        if last in (B, D, E):
            return {{B: D, D: E, E: EOS}[last]: 0.999, **_filler_spread(0.001, 4)}
        return {EOS: 0.6, FILLERS[0]: 0.4}

    out = _run(table, [[P, P, P]], num_beams=2, max_length=12)
    assert out.tolist() == [[P, P, P, A, EOS]]
    s_a = math.log(0.497) + math.log(0.95)
    s_b = math.log(0.223) + 3 * math.log(0.999)
    assert s_a / 4 > s_b / 6  # full length (4.25.1): A wins
    assert s_b / 3 > s_a / 1  # generated length only (transformers 5.x): B would win


def test_min_length_counts_the_prompt_and_eos_is_appended() -> None:
    def table(row):
        return {EOS: 0.6, A: 0.2, B: 0.2}

    out = _run(table, [[P, P, P]], num_beams=2, max_length=20, min_length=6)
    # EOS is forbidden while the length (prompt included) is < 6, so the best hypothesis
    # has 6 tokens and the returned row is those 6 plus the EOS (7, not 3 + 6 + 1)
    assert out.shape == (1, 7)
    assert out[0, 6].item() == EOS
    assert EOS not in out[0, :6].tolist()
    assert out[0, :3].tolist() == [P, P, P]


def test_early_stop_check_of_4_25_1() -> None:
    # Two hypotheses finish early ([P P A] -1.291/3 and [P P A X] -1.597/4); a running beam
    # R R R... has a low cumulative score (-2.53) but near-zero cost per token, so it would
    # win if the search went on to max_length (-2.54/20 = -0.13). 4.25.1 stops at length 5
    # because worst kept (-0.430) >= best candidate -2.529 / 5.
    def table(row):
        last = row[-1]
        if last == P:
            return {A: 0.5, R: 0.08, **_filler_spread(0.42, 6)}
        if last == A:
            return {EOS: 0.55, X: 0.45}
        if last == X:
            return {EOS: 0.9, **_filler_spread(0.1, 4)}
        if last == R:
            return {R: 0.999, **_filler_spread(0.001, 2)}
        return {EOS: 0.6, FILLERS[0]: 0.4}

    out = _run(table, [[P, P]], num_beams=2, max_length=20)
    assert out.tolist() == [[P, P, A, X, EOS]]
    long_r = (math.log(0.08) + 17 * math.log(0.999)) / 20
    assert long_r > (math.log(0.5) + math.log(0.45) + math.log(0.9)) / 4  # the check matters


def test_batch_rows_are_right_padded_and_full_rows_get_no_eos() -> None:
    def table(row):
        if row[0] == P:  # image 0 wants to stop
            return {EOS: 0.6, A: 0.2, B: 0.2}
        return {A: 0.5, B: 0.5}  # image 1 never stops

    calls: list = []
    out = beam_search(table_step(table, calls), torch.tensor([[P, P], [A, A]]), eos_token_id=EOS,
                      pad_token_id=PAD, num_beams=3, max_length=8, min_length=4)
    assert calls[0] == (6, 2)  # batch * num_beams rows, prompt length
    assert out.shape == (2, 8)
    assert out[0, 4].item() == EOS and out[0, 5:].tolist() == [PAD] * 3
    assert EOS not in out[1].tolist() and PAD not in out[1].tolist()
    assert out[:, :2].tolist() == [[P, P], [A, A]]


def test_cache_is_reordered_with_the_selected_beams() -> None:
    """A cache holding each row's history must stay aligned with the rows after reordering."""
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(V, V, generator=g) * 3

    def step(ids, cache):
        if cache is not None:
            assert torch.equal(cache, ids[:, :-1]), "cache rows out of sync with beams"
        return weights[ids[:, -1]] + 0.1 * ids.shape[1], ids.clone()

    def step_no_cache(ids, cache):
        return weights[ids[:, -1]] + 0.1 * ids.shape[1], None

    prompt = torch.tensor([[P, A], [B, D]])
    kw = dict(eos_token_id=EOS, pad_token_id=PAD, num_beams=3, max_length=12, min_length=5)
    with_cache = beam_search(step, prompt, reorder_cache=lambda c, idx: c.index_select(0, idx), **kw)
    assert torch.equal(with_cache, beam_search(step_no_cache, prompt, **kw))
