"""From tagging logits to tags: thresholds, deleted classes, official tag strings.

Official rule: class c fires iff float32 ``sigmoid(logit) > class_threshold[c]`` (strict),
then the columns in ``delete_tag_index`` are cleared. Fired tags are listed in class-index
order and joined with ``' | '`` (Chinese names keep their raw whitespace).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Separator of the official tag strings.
TAG_SEPARATOR = " | "


def select_tags(
    probs: torch.Tensor,
    class_threshold: torch.Tensor,
    delete_index: Sequence[int] = (),
    threshold: float | None = None,
) -> torch.Tensor:
    """Boolean [B, C]: which classes fire.

    ``threshold`` (if given) replaces every per-class value (unlike the official
    ``generate_tag(threshold=...)``, which ignores its argument); ``delete_index`` classes
    never fire.
    """
    thr = class_threshold.to(probs.device, probs.dtype)
    if threshold is not None:
        thr = torch.full_like(thr, float(threshold))
    fired = probs > thr
    if len(delete_index):
        fired[:, list(delete_index)] = False
    return fired


@dataclass
class TagPrediction:
    """Tagging result for a batch: logits, probabilities, fired mask and the tag names."""

    logits: torch.Tensor  # [B, C] float32, CPU
    probs: torch.Tensor  # [B, C]
    fired: torch.Tensor  # [B, C] bool, after deleted classes
    tag_list: Sequence[str]
    tag_list_chinese: Sequence[str] | None = None

    def __len__(self) -> int:
        return int(self.fired.shape[0])

    def indices(self, b: int) -> list[int]:
        """Fired class indices of image ``b`` in class order."""
        return torch.nonzero(self.fired[b], as_tuple=False).flatten().tolist()

    def tags(self, b: int) -> list[tuple[str, float, str | None]]:
        """``(name, probability, chinese name or None)`` for every fired class of image ``b``."""
        zh = self.tag_list_chinese
        return [(self.tag_list[i], float(self.probs[b, i]), zh[i] if zh is not None else None)
                for i in self.indices(b)]

    def tag_string(self, b: int) -> str:
        """Official English string, e.g. ``'dog | grass'`` (empty when nothing fired)."""
        return TAG_SEPARATOR.join(self.tag_list[i] for i in self.indices(b))

    def tag_string_chinese(self, b: int) -> str:
        """Official Chinese string (raw names, trailing spaces kept)."""
        if self.tag_list_chinese is None:
            raise ValueError("this model has no Chinese tag list")
        return TAG_SEPARATOR.join(self.tag_list_chinese[i] for i in self.indices(b))

    def tag_strings(self) -> list[str]:
        return [self.tag_string(b) for b in range(len(self))]

    def tag_strings_chinese(self) -> list[str]:
        return [self.tag_string_chinese(b) for b in range(len(self))]


def make_prediction(
    logits: torch.Tensor,
    class_threshold: torch.Tensor,
    tag_list: Sequence[str],
    tag_list_chinese: Sequence[str] | None = None,
    delete_index: Sequence[int] = (),
    threshold: float | None = None,
) -> TagPrediction:
    """Sigmoid, threshold and package the logits of one batch."""
    logits = logits.detach().float()
    probs = torch.sigmoid(logits)
    fired = select_tags(probs, class_threshold, delete_index, threshold)
    return TagPrediction(logits.cpu(), probs.cpu(), fired.cpu(), tag_list, tag_list_chinese)


def indices_for_names(names: Sequence[str], tag_list: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class indices of the given tag names (case-insensitive, first match) and the unknown names."""
    lookup: dict[str, int] = {}
    for i, t in enumerate(tag_list):
        lookup.setdefault(t.strip().lower(), i)
    found = [lookup[n.strip().lower()] for n in names if n.strip().lower() in lookup]
    unknown = [n for n in names if n.strip().lower() not in lookup]
    return found, unknown
