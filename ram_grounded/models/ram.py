"""RAM, RAM++ and Tag2Text as plain nn.Modules with the official attribute and key names.

All three share one recipe: a Swin encoder gives image tokens, a Query2Label tagging head
(``tagging_head``, a self-attention-free BERT) lets one query per class attend to them, and
``fc`` turns each class's output into a logit. They differ in the queries:

* RAM: ``relu(wordvec_proj(label_embed))`` (CLIP text embeddings, 512-d).
* RAM++: ``des_per_class`` CLIP embeddings per class, averaged with softmax weights from
  their similarity to the normalised image token 0 (scale ``exp(reweight_scale)``).
* Tag2Text: the learned ``label_embed.weight``; ``fc`` is a per-class dot product.

``forward(pixel_values)`` runs one batch through once and returns logits [B, C]; see
:mod:`ram_grounded.models.tag_select` for thresholds and tag strings. RAM and Tag2Text also
hold the caption branch (``tag_encoder``, ``text_decoder``) so released files load strict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bert import BertConfig, BertLMHeadModel, BertModel, tie_tagging_head
from .swin import SwinConfig, SwinTransformer
from .tag_select import TagPrediction, make_prediction

#: Width of the CLIP text embeddings RAM / RAM++ use as label embeddings.
CLIP_DIM = 512


@dataclass(frozen=True)
class RamConfig:
    """Everything needed to build one model of the family (see ``ram_family`` for released ones).

    ``class_threshold`` is the final per-class threshold vector the official constructor
    produces; ``delete_tag_index`` lists classes never reported (Tag2Text default: 7 numerals).
    """

    arch: str
    swin: SwinConfig
    q2l_config: dict[str, Any]
    med_config: dict[str, Any] | None
    tag_list: tuple[str, ...]
    tag_list_chinese: tuple[str, ...] | None
    class_threshold: tuple[float, ...]
    delete_tag_index: tuple[int, ...] = ()
    des_per_class: int = 51
    prompt: str = "a picture of "

    @property
    def num_class(self) -> int:
        return len(self.tag_list)

    def evolve(self, **changes: Any) -> "RamConfig":
        """A copy with some fields replaced (e.g. another threshold vector)."""
        return replace(self, **changes)


class GroupWiseLinear(nn.Module):
    """Tag2Text's ``fc``: ``logit[c] = sum_h W[0, c, h] * x[c, h] + b[0, c]``."""

    def __init__(self, num_class: int, hidden: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(1, num_class, hidden))
        self.b = nn.Parameter(torch.zeros(1, num_class))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.W * x).sum(-1) + self.b


class _TaggerBase(nn.Module):
    """Shared parts: tag lists, thresholds (a buffer, so it follows ``.to(device)``), head call."""

    arch: str = ""

    def __init__(self, config: RamConfig) -> None:
        super().__init__()
        if len(config.class_threshold) != config.num_class:
            raise ValueError("class_threshold must have one value per tag")
        self.config = config
        self.tag_list = list(config.tag_list)
        self.tag_list_chinese = list(config.tag_list_chinese) if config.tag_list_chinese else None
        self.delete_tag_index = list(config.delete_tag_index)
        self.register_buffer("class_threshold", torch.tensor(config.class_threshold, dtype=torch.float32),
                             persistent=False)

    @property
    def num_class(self) -> int:
        return len(self.tag_list)

    @property
    def image_size(self) -> int:
        return self.config.swin.image_res

    def _head(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.tagging_head(encoder_embeds=queries, encoder_hidden_states=image_embeds,
                                 mode="tagging").last_hidden_state

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image tokens the tagging head attends to."""
        raise NotImplementedError

    def tag_logits(self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None,
                   num_class: int | None = None) -> torch.Tensor:
        """Logits [B, C] from image tokens.

        ``label_embed`` (open set) replaces the model's own label embedding; it holds
        ``num_class`` categories (RAM: one row each; RAM++: equal groups of description rows).
        """
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, label_embed: torch.Tensor | None = None,
                num_class: int | None = None) -> torch.Tensor:
        """Tagging logits [B, C] for a batch of preprocessed images (one pass)."""
        return self.tag_logits(self.encode_image(pixel_values), label_embed, num_class)

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor, threshold: float | None = None,
                class_threshold: torch.Tensor | None = None, exclude_index: tuple[int, ...] = ()) -> TagPrediction:
        """Tags for a batch: official per-class thresholds unless ``threshold`` / ``class_threshold``
        is given; ``exclude_index`` adds classes to the model's ``delete_tag_index``."""
        logits = self(pixel_values)
        thr = self.class_threshold if class_threshold is None else class_threshold
        return make_prediction(logits, thr, self.tag_list, self.tag_list_chinese,
                               [*self.delete_tag_index, *exclude_index], threshold)

    @torch.no_grad()
    def predict_openset(self, pixel_values: torch.Tensor, categories: list[str], label_embed: torch.Tensor,
                        threshold: float = 0.5) -> TagPrediction:
        """Tags among the user's ``categories`` whose label embeddings are ``label_embed``
        (official open-set path: every category thresholded at ``threshold``, default 0.5)."""
        emb = label_embed.to(self.class_threshold.device, torch.float32)
        logits = self(pixel_values, emb, len(categories))
        thr = torch.full((len(categories),), float(threshold))
        return make_prediction(logits, thr, list(categories), None, (), None)

    def generate_tag(self, pixel_values: torch.Tensor) -> tuple[list[str], list[str] | None]:
        """Official-style strings: (English tag strings, Chinese tag strings or None) per image."""
        pred = self.predict(pixel_values)
        zh = pred.tag_strings_chinese() if self.tag_list_chinese is not None else None
        return pred.tag_strings(), zh


class RAM(_TaggerBase):
    """The Recognize Anything Model (Swin-L + tagging head over CLIP label embeddings)."""

    arch = "ram"

    def __init__(self, config: RamConfig) -> None:
        super().__init__(config)
        if config.med_config is None:
            raise ValueError("RAM needs med_config")
        self.visual_encoder = SwinTransformer(config.swin)
        self.tag_encoder = BertModel(BertConfig.from_dict(config.med_config, encoder_width=CLIP_DIM))
        self.text_decoder = BertLMHeadModel(BertConfig.from_dict(config.med_config))
        q2l = BertConfig.from_dict(config.q2l_config, encoder_width=CLIP_DIM)
        self.tagging_head = BertModel(q2l, tagging=True)
        self.label_embed = nn.Parameter(torch.zeros(config.num_class, CLIP_DIM))
        self.wordvec_proj = nn.Linear(CLIP_DIM, q2l.hidden_size) if q2l.hidden_size != CLIP_DIM else nn.Identity()
        self.fc = nn.Linear(q2l.hidden_size, 1)
        tie_tagging_head(self.tag_encoder, self.tagging_head)
        self.image_proj = nn.Linear(config.swin.vision_width, CLIP_DIM)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.visual_encoder(pixel_values))

    def label_queries(self, label_embed: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class queries [C, hidden]; image independent, so computed once per batch."""
        emb = self.label_embed if label_embed is None else label_embed
        return F.relu(self.wordvec_proj(emb))

    def tag_logits(self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None,
                   num_class: int | None = None) -> torch.Tensor:
        if label_embed is not None and num_class not in (None, label_embed.shape[0]):
            raise ValueError("RAM's open-set label_embed needs exactly one row per category")
        queries = self.label_queries(label_embed)
        queries = queries.unsqueeze(0).expand(image_embeds.shape[0], -1, -1)
        return self.fc(self._head(queries, image_embeds)).squeeze(-1)


class RAMPlus(_TaggerBase):
    """RAM++: like RAM, with several description embeddings per class reweighted per image."""

    arch = "ram_plus"

    def __init__(self, config: RamConfig) -> None:
        super().__init__(config)
        self.visual_encoder = SwinTransformer(config.swin)
        q2l = BertConfig.from_dict(config.q2l_config, encoder_width=CLIP_DIM)
        self.tagging_head = BertModel(q2l, tagging=True)
        self.label_embed = nn.Parameter(torch.zeros(config.num_class * config.des_per_class, CLIP_DIM))
        self.wordvec_proj = nn.Linear(CLIP_DIM, q2l.hidden_size) if q2l.hidden_size != CLIP_DIM else nn.Identity()
        self.fc = nn.Linear(q2l.hidden_size, 1)
        self.image_proj = nn.Linear(config.swin.vision_width, CLIP_DIM)
        self.reweight_scale = nn.Parameter(torch.tensor(0.0))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.visual_encoder(pixel_values))

    def reweighted_labels(self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None,
                          num_class: int | None = None) -> torch.Tensor:
        """Per-image class embeddings [B, C, 512]: softmax-weighted sum of each class's descriptions."""
        emb = self.label_embed if label_embed is None else label_embed
        if num_class is None:
            if label_embed is not None:
                raise ValueError("an open-set label_embed for RAM++ needs num_class (its categories)")
            num_class = self.num_class
        if emb.shape[0] % num_class:
            raise ValueError(f"label_embed rows ({emb.shape[0]}) are not a multiple of {num_class} classes")
        d = emb.shape[0] // num_class
        cls = image_embeds[:, 0, :]
        cls = cls / cls.norm(dim=-1, keepdim=True)
        sims = (self.reweight_scale.exp() * cls @ emb.t()).view(cls.shape[0], num_class, d)
        weights = sims.softmax(dim=2)
        # [B, C, d] x [C, d, 512] -> [B, C, 512], batched over classes (the official loop per image
        # materialises B x C x d x 512; this sums the same products without that buffer)
        return torch.einsum("bcd,cde->bce", weights, emb.view(num_class, d, -1))

    def tag_logits(self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None,
                   num_class: int | None = None) -> torch.Tensor:
        queries = F.relu(self.wordvec_proj(self.reweighted_labels(image_embeds, label_embed, num_class)))
        return self.fc(self._head(queries, image_embeds)).squeeze(-1)


class Tag2Text(_TaggerBase):
    """Tag2Text (Swin-B): tagging with learned label queries, plus the tag-guided captioner."""

    arch = "tag2text"

    def __init__(self, config: RamConfig) -> None:
        super().__init__(config)
        if config.med_config is None:
            raise ValueError("Tag2Text needs med_config")
        width = config.swin.vision_width
        self.visual_encoder = SwinTransformer(config.swin)
        self.tag_encoder = BertModel(BertConfig.from_dict(config.med_config, encoder_width=width))
        self.text_decoder = BertLMHeadModel(BertConfig.from_dict(config.med_config))
        q2l = BertConfig.from_dict(config.q2l_config, encoder_width=width)
        self.tagging_head = BertModel(q2l, tagging=True)
        self.label_embed = nn.Embedding(config.num_class, q2l.hidden_size)
        self.fc = GroupWiseLinear(config.num_class, q2l.hidden_size)
        tie_tagging_head(self.tag_encoder, self.tagging_head)
        self.prompt = config.prompt
        #: set by the builders (``ram_family``); needed only for captioning
        self.tokenizer: Any = None

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(pixel_values)

    def tag_logits(self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None,
                   num_class: int | None = None) -> torch.Tensor:
        if label_embed is not None:
            raise ValueError("Tag2Text has no open-set mode (its label queries are learned)")
        queries = self.label_embed.weight.unsqueeze(0).expand(image_embeds.shape[0], -1, -1)
        return self.fc(self._head(queries, image_embeds))


MODEL_CLASSES: dict[str, type[_TaggerBase]] = {"ram": RAM, "ram_plus": RAMPlus, "tag2text": Tag2Text}


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Skip torch's random parameter init (seconds for Swin-L) when a checkpoint overwrites it all."""
    names = ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def build_model(config: RamConfig, init_weights: bool = True) -> _TaggerBase:
    """Instantiate the class for ``config.arch``; ``init_weights=False`` leaves parameters
    uninitialised (use only when a checkpoint is loaded next)."""
    try:
        cls = MODEL_CLASSES[config.arch]
    except KeyError:
        raise ValueError(f"unknown RAM-family arch {config.arch!r}; use one of {sorted(MODEL_CLASSES)}") from None
    if init_weights:
        return cls(config)
    with _skip_random_init():
        return cls(config)
