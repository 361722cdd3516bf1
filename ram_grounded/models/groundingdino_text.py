"""Prompt text for Grounding DINO: class token spans, chunking, and one class per box.

A prompt is a list of class names. Each class becomes its own phrase (``cat . dog .``), so
the model's phrase masks keep classes apart, and we know exactly which token positions
belong to which class. Names are never recovered from decoded token strings (that gives
subword fragments and merged or empty labels); a box's class is the class whose own tokens
score highest for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: characters transformers treats as phrase delimiters; inside a class name they would split it
_DELIMITERS = str.maketrans({".": " ", "?": " "})


@dataclass
class TextChunk:
    """One model text input: token ids and, per class, its global index and token span."""

    input_ids: list[int]
    class_ids: list[int]              # indexes into the prompt
    spans: list[tuple[int, int]]      # [start, end) token positions of each class

    @property
    def text_length(self) -> int:
        return len(self.input_ids)


def class_token_ids(tokenizer: PreTrainedTokenizerBase, names: list[str]) -> list[list[int]]:
    """Token ids of each class name alone (no special tokens; '.'/'?' inside a name become spaces)."""
    if not names:
        return []
    cleaned = [n.translate(_DELIMITERS).strip() for n in names]
    return [list(ids) for ids in tokenizer(cleaned, add_special_tokens=False)["input_ids"]]


def build_chunks(
    token_ids: list[list[int]], max_text_len: int, cls_id: int, sep_id: int, dot_id: int
) -> tuple[list[TextChunk], list[int]]:
    """Split classes at class boundaries so each ``[CLS] a . b . ... [SEP]`` fits ``max_text_len``.

    Returns (chunks, indexes of classes that cannot be grounded because they have no tokens).
    A single class longer than a chunk is truncated (and logged), never dropped.
    """
    budget = max_text_len - 2  # [CLS] and [SEP]
    chunks: list[TextChunk] = []
    skipped: list[int] = []
    ids: list[int] = [cls_id]
    cls_idx: list[int] = []
    spans: list[tuple[int, int]] = []

    def flush() -> None:
        nonlocal ids, cls_idx, spans
        if cls_idx:
            chunks.append(TextChunk(ids + [sep_id], cls_idx, spans))
        ids, cls_idx, spans = [cls_id], [], []

    for index, toks in enumerate(token_ids):
        if not toks:
            skipped.append(index)
            continue
        if len(toks) + 1 > budget:
            logger.warning("class %d has %d tokens; truncated to fit the text length %d", index, len(toks), max_text_len)
            toks = toks[: budget - 1]
        if len(ids) - 1 + len(toks) + 1 > budget:
            flush()
        start = len(ids)
        ids.extend(toks)
        spans.append((start, len(ids)))
        ids.append(dot_id)
        cls_idx.append(index)
    flush()
    return chunks, skipped


def pad_chunks(rows: list[TextChunk], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch tensors (input_ids, attention_mask, token_type_ids) padded to the longest row."""
    length = max(r.text_length for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : row.text_length] = torch.tensor(row.input_ids, dtype=torch.long)
        attention[i, : row.text_length] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(input_ids)}


@dataclass
class Assignment:
    """Boxes kept from one model row: query indexes, their class (global index) and score."""

    queries: torch.Tensor   # [n] long
    class_ids: torch.Tensor  # [n] long, indexes into the prompt
    scores: torch.Tensor    # [n] float: sigmoid score of the chosen class's tokens
    unmatched: int          # boxes over box_threshold that no class reached text_threshold for


def assign_classes(
    logits: torch.Tensor, chunk: TextChunk, box_threshold: float, text_threshold: float
) -> Assignment:
    """One class per box from one row's logits ``[Q, >= text_length]``.

    A query is a box when its highest token probability (over the row's real tokens, as in
    the original ``predict``) exceeds ``box_threshold``. Its class is the class whose span
    holds the highest token probability; that probability is the box's score and must
    exceed ``text_threshold``, otherwise the box matches no class and is counted, not kept.
    """
    probs = logits[:, : chunk.text_length].float().sigmoid()
    box_score = probs.max(dim=-1).values
    span_scores = torch.stack([probs[:, s:e].max(dim=-1).values for s, e in chunk.spans], dim=-1)
    best_score, best = span_scores.max(dim=-1)
    is_box = box_score > box_threshold
    matched = is_box & (best_score > text_threshold)
    queries = torch.nonzero(matched).flatten()
    global_ids = torch.tensor(chunk.class_ids, dtype=torch.long, device=logits.device)
    return Assignment(queries, global_ids[best[queries]], best_score[queries], int((is_box & ~matched).sum()))
