"""GIT (transformers ``GitForCausalLM``): image captioning and visual question answering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, StageError
from ..record import Record
from ..registry import register_stage
from .base import ModelStage
from .matching import writable


@dataclass(eq=False)
class _GitStage(ModelStage):
    """Shared GIT plumbing: lazy load, batched generation, mean token log-probability."""

    model: str = "git-base-coco"
    max_new_tokens: int = 30   # longest generated text, in tokens
    num_beams: int = 1         # 1 = greedy

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ConfigError(f"stage {self.name!r}: max_new_tokens and num_beams must be >= 1",
                              hint="e.g. max_new_tokens: 30, num_beams: 1")
        self._bundle: Any = None

    def load(self) -> None:
        from ..zoo import load_model

        self._bundle = load_model(self.model, device=self.torch_device, arch="hf-git")

    def generate(self, images: list[np.ndarray], prefix: list[int] | None = None) -> tuple[list[str], list[float]]:
        """Text after ``prefix`` (token ids, same for every image) and its mean token log-prob, per image."""
        import torch

        self.ensure_loaded()
        bundle, device = self._bundle, self.torch_device
        pixel_values = bundle.image_processor(images=writable(images), return_tensors="pt",
                                               input_data_format="channels_last")["pixel_values"].to(device)
        kwargs: dict[str, Any] = {}
        if prefix is not None:
            kwargs["input_ids"] = torch.tensor([prefix] * len(images), dtype=torch.long, device=device)
        with torch.inference_mode():
            out = bundle.model.generate(pixel_values=pixel_values, max_new_tokens=self.max_new_tokens,
                                        num_beams=self.num_beams, do_sample=False,
                                        return_dict_in_generate=True, output_scores=True, **kwargs)
        start = 1 if prefix is None else len(prefix)  # generation starts after the prompt (or BOS)
        new_tokens = out.sequences[:, start:]
        texts = [t.strip() for t in bundle.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return texts, self._mean_logprob(out, new_tokens)

    def _mean_logprob(self, out: Any, new_tokens: Any) -> list[float]:
        if self.num_beams > 1:  # beam search already scores whole sequences (length-normalised)
            return [float(s) for s in out.sequences_scores.float().cpu()]
        import torch

        steps = self._bundle.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        eos = self._bundle.model.generation_config.eos_token_id
        eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=new_tokens.device)
        is_eos = torch.isin(new_tokens, eos_ids).long()
        # tokens up to and including the first EOS count; padding after it does not
        valid = (is_eos.cumsum(dim=1) - is_eos) == 0
        steps = steps[:, : new_tokens.shape[1]].float()
        total = torch.where(valid, steps, torch.zeros_like(steps)).sum(dim=1)
        return [float(v) for v in (total / valid.sum(dim=1).clamp(min=1)).cpu()]

    def _images(self, records: list[Record]) -> list[np.ndarray]:
        for record in records:
            if record.image is None:
                raise StageError(f"{record.source}: no image", hint=f"load the image before {self.name}")
        return [r.image for r in records]

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "tiny": bool(getattr(self._bundle, "tiny", False)),
                "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, **extra}


@register_stage
@dataclass(eq=False)
class GitCaptioner(_GitStage):
    """GIT image captioning: writes ``caption`` (and its mean token log-prob in ``checks["caption_logprob"]``).

    A caption already on the record (e.g. from Tag2Text) is replaced; the old one is kept in
    ``meta["git_caption"]["previous_caption"]``. One ``generate`` call per batch.
    """

    name: ClassVar[str] = "git_caption"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"caption", "checks", "meta"})

    model: str = "git-base-coco"

    def process(self, records: list[Record]) -> list[Record]:
        if not records:
            return records
        captions, scores = self.generate(self._images(records))
        for record, caption, score in zip(records, captions, scores):
            info = self._meta()
            if record.caption is not None and record.caption != caption:
                info["previous_caption"] = record.caption
            record.caption = caption
            record.checks["caption_logprob"] = score
            record.meta[self.name] = info
        return records


@register_stage
@dataclass(eq=False)
class GitVqa(_GitStage):
    """GIT visual question answering: writes ``checks[answer_key] = {question, answer, logprob}``.

    The question of a record is ``record.meta[question_key]`` when that is a non-empty string,
    else the stage's ``question``. With ``question: null`` every record must carry one (the
    stage then reads ``meta``: declare ``inputs: [meta]`` in the pipeline). Records are
    grouped by question and each group answered in one ``generate`` call (GIT has no
    position ids for left padding, so different questions are not padded into one batch).
    """

    name: ClassVar[str] = "git_vqa"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"checks", "meta"})

    model: str = "git-base-vqav2"
    max_new_tokens: int = 20
    question: str | None = "what is in the picture?"  # default question
    question_key: str = "question"                     # record.meta key that overrides it
    answer_key: str = "vqa"                            # checks key the answer goes under

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.question is not None and not self.question.strip():
            raise ConfigError("stage 'git_vqa': question is empty", hint="give a question, or null to read meta")
        if self.question is None:
            self.reads = frozenset({"image", "meta"})

    def question_for(self, record: Record) -> str:
        """The question this record is asked (record's own first, then the stage's)."""
        own = record.meta.get(self.question_key)
        if isinstance(own, str) and own.strip():
            return own.strip()
        if self.question is None:
            raise StageError(f"{record.source}: no question in meta[{self.question_key!r}]",
                             hint=f"set record.meta[{self.question_key!r}] or the stage's 'question'")
        return self.question

    def process(self, records: list[Record]) -> list[Record]:
        images = self._images(records)
        groups: dict[str, list[int]] = {}
        for i, record in enumerate(records):  # every question is known before any compute
            groups.setdefault(self.question_for(record), []).append(i)
        for question, members in groups.items():
            self.ensure_loaded()
            tokenizer = self._bundle.tokenizer
            # GIT VQA prompt: [CLS] + question tokens, no [SEP]; the answer is the continuation
            prefix = [tokenizer.cls_token_id] + tokenizer(question, add_special_tokens=False)["input_ids"]
            answers, scores = self.generate([images[i] for i in members], prefix)
            for i, answer, score in zip(members, answers, scores):
                records[i].checks[self.answer_key] = {"question": question, "answer": answer, "logprob": score}
                records[i].meta[self.name] = self._meta(question_key=self.question_key, answer_key=self.answer_key)
        return records
