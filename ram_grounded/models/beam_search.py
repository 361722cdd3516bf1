"""Beam search with the exact rules of transformers 4.25.1 ``generate(num_beams>1, do_sample=False)``.

The official Tag2Text captions were produced by that version; newer transformers normalise finished
hypotheses differently, which changes captions. The rules kept here:

* scores are ``log_softmax`` of the step logits (float32), processed (repetition penalty if != 1,
  EOS set to -inf while the current length -- prompt included -- is below ``min_length``), plus the
  float32 running beam score; the top ``2 * num_beams`` of ``num_beams * vocab`` are taken per image;
* at the first step only beam 0 is live (others start at -1e9);
* a candidate ending in EOS within the top ``num_beams`` ranks becomes a finished hypothesis with
  score ``sum_logprobs / len(hyp) ** length_penalty`` (``hyp`` = tokens before EOS, prompt included);
  at most ``num_beams`` hypotheses are kept (the worst is evicted);
* an image is done when it has ``num_beams`` hypotheses and (``early_stopping`` or the worst kept
  score >= best candidate score of this step / current length ** length_penalty); done images
  continue with pad tokens;
* the loop stops when all images are done or the length reaches ``max_length``; open beams are then
  added as hypotheses (score = running sum / max_length); the best hypothesis is returned, EOS is
  appended when it fits, rows are right-padded with ``pad_token_id`` when lengths differ.

Public API: ``beam_search(step, input_ids, eos_token_id=..., pad_token_id=..., ...)`` where
``step(input_ids, cache) -> (logits [rows, vocab], cache)`` is called on ``batch * num_beams`` rows
(each image's row repeated ``num_beams`` times, adjacent) and ``reorder_cache(cache, beam_idx)``
reorders a cache after beam selection (omit it, or return ``None`` caches, to run without a cache).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

Step = Callable[[Tensor, Any], "tuple[Tensor, Any]"]


class _Hypotheses:
    """Finished hypotheses of one image (transformers 4.25.1 ``BeamHypotheses``)."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.beams: list[tuple[float, Tensor]] = []
        self.worst_score = 1e9

    def add(self, hyp: Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / (hyp.shape[-1] ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, hyp))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        if self.early_stopping:
            return True
        return self.worst_score >= best_sum_logprobs / cur_len**self.length_penalty

    def best(self) -> Tensor:
        # stable sort on the score, last = best (ties: the later-added one), as in 4.25.1
        return sorted(self.beams, key=lambda x: x[0])[-1][1]


def _repetition_penalty(input_ids: Tensor, scores: Tensor, penalty: float) -> Tensor:
    picked = torch.gather(scores, 1, input_ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, input_ids, picked)


@torch.no_grad()
def beam_search(
    step: Step,
    input_ids: Tensor,
    *,
    eos_token_id: int,
    pad_token_id: int,
    num_beams: int = 3,
    max_length: int = 50,
    min_length: int = 10,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    repetition_penalty: float = 1.0,
    reorder_cache: Callable[[Any, Tensor], Any] | None = None,
) -> Tensor:
    """Generate one sequence per row of ``input_ids`` [B, L] (prompt included in the output)."""
    batch = input_ids.shape[0]
    device = input_ids.device
    ids = input_ids.repeat_interleave(num_beams, dim=0)
    hyps = [_Hypotheses(num_beams, length_penalty, early_stopping) for _ in range(batch)]
    done = [False] * batch
    beam_scores = torch.zeros(batch, num_beams, dtype=torch.float, device=device)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    cache: Any = None
    while True:
        cur_len = ids.shape[-1]
        logits, cache = step(ids, cache)
        scores = torch.log_softmax(logits.float(), dim=-1)
        if repetition_penalty != 1.0:
            scores = _repetition_penalty(ids, scores, repetition_penalty)
        if cur_len < min_length:
            scores[:, eos_token_id] = -float("inf")
        scores = scores + beam_scores[:, None].expand_as(scores)
        vocab = scores.shape[-1]
        top_scores, top_tokens = torch.topk(scores.view(batch, num_beams * vocab), 2 * num_beams, dim=1)
        top_beams = torch.div(top_tokens, vocab, rounding_mode="floor")
        top_tokens = top_tokens % vocab

        next_scores = torch.zeros(batch, num_beams, dtype=top_scores.dtype, device=device)
        next_tokens = torch.zeros(batch, num_beams, dtype=top_tokens.dtype, device=device)
        next_rows = torch.zeros(batch, num_beams, dtype=top_beams.dtype, device=device)
        for b in range(batch):
            if done[b]:  # finished image: keep feeding pads (row 0, as 4.25.1 does)
                next_tokens[b, :] = pad_token_id
                continue
            kept = 0
            for rank in range(2 * num_beams):
                token = int(top_tokens[b, rank])
                row = b * num_beams + int(top_beams[b, rank])
                if token == eos_token_id:
                    if rank < num_beams:
                        hyps[b].add(ids[row].clone(), top_scores[b, rank].item())
                else:
                    next_scores[b, kept] = top_scores[b, rank]
                    next_tokens[b, kept] = token
                    next_rows[b, kept] = row
                    kept += 1
                if kept == num_beams:
                    break
            done[b] = done[b] or hyps[b].is_done(top_scores[b].max().item(), cur_len)

        beam_scores = next_scores.view(-1)
        beam_idx = next_rows.view(-1)
        ids = torch.cat([ids[beam_idx, :], next_tokens.view(-1, 1)], dim=-1)
        if cache is not None and reorder_cache is not None:
            cache = reorder_cache(cache, beam_idx)
        if all(done) or ids.shape[-1] >= max_length:
            break

    return _finalize(ids, beam_scores, hyps, done, num_beams, max_length, eos_token_id, pad_token_id)


def _finalize(
    ids: Tensor,
    beam_scores: Tensor,
    hyps: list[_Hypotheses],
    done: list[bool],
    num_beams: int,
    max_length: int,
    eos_token_id: int,
    pad_token_id: int,
) -> Tensor:
    for b, h in enumerate(hyps):
        if done[b]:
            continue
        for j in range(num_beams):
            row = b * num_beams + j
            h.add(ids[row], beam_scores[row].item())
    best = [h.best() for h in hyps]
    lengths = [int(x.shape[-1]) for x in best]
    width = min(max(lengths) + 1, max_length)
    out = torch.full((len(best), width), pad_token_id, dtype=ids.dtype, device=ids.device)
    for i, hyp in enumerate(best):
        out[i, : lengths[i]] = hyp
        if lengths[i] < width:
            out[i, lengths[i]] = eos_token_id
    return out
