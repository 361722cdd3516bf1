"""Open-set label embeddings for RAM / RAM++ from the CLIP ViT-B/16 text tower.

Mirrors recognize-anything's ``ram/utils/openset_utils.py``:

* **Templates** (RAM, and RAM++ without descriptions): each category is written into the
  official 63 prompt templates (``processed_name`` + ``article``; prompts starting with
  "a"/"the" get "This is " in front), every prompt embedding is L2-normalised, the mean is
  L2-normalised again -> one row per category.
* **LLM descriptions** (RAM++): the official JSON format ``[{"category": ["desc", ...]}, ...]``;
  each description is embedded (truncated to CLIP's 77 tokens) and L2-normalised, no
  averaging -> ``des_per_class`` rows per category, grouped per category.

The official code runs OpenAI's ``clip`` package; here the same weights run through
transformers (``CLIPTextModelWithProjection``, ``openai/clip-vit-base-patch16``). Results are
cached on disk by a hash of (encoder id, method, categories/descriptions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

CLIP_MODEL = "openai/clip-vit-base-patch16"
CACHE_VERSION = 1
TextEncoder = Callable[[list[str]], torch.Tensor]

MULTIPLE_TEMPLATES = [
    "There is {article} {} in the scene.", "There is the {} in the scene.",
    "a photo of {article} {} in the scene.", "a photo of the {} in the scene.", "a photo of one {} in the scene.",
    "itap of {article} {}.", "itap of my {}.", "itap of the {}.",
    "a photo of {article} {}.", "a photo of my {}.", "a photo of the {}.", "a photo of one {}.",
    "a photo of many {}.", "a good photo of {article} {}.", "a good photo of the {}.",
    "a bad photo of {article} {}.", "a bad photo of the {}.", "a photo of a nice {}.", "a photo of the nice {}.",
    "a photo of a cool {}.", "a photo of the cool {}.", "a photo of a weird {}.", "a photo of the weird {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of a clean {}.", "a photo of the clean {}.", "a photo of a dirty {}.", "a photo of the dirty {}.",
    "a bright photo of {article} {}.", "a bright photo of the {}.", "a dark photo of {article} {}.",
    "a dark photo of the {}.", "a photo of a hard to see {}.", "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.", "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.", "a cropped photo of the {}.", "a close-up photo of {article} {}.",
    "a close-up photo of the {}.", "a jpeg corrupted photo of {article} {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.", "a blurry photo of the {}.", "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.", "a black and white photo of the {}.", "a black and white photo of {article} {}.",
    "a plastic {}.", "the plastic {}.", "a toy {}.", "the toy {}.", "a plushie {}.", "the plushie {}.",
    "a cartoon {}.", "the cartoon {}.", "an embroidered {}.", "the embroidered {}.",
    "a painting of the {}.", "a painting of a {}.",
]


def article(name: str) -> str:
    """Official rule: "an" iff the raw name starts with a lower-case vowel."""
    return "an" if name[0] in "aeiou" else "a"


def processed_name(name: str, rm_dot: bool = False) -> str:
    """Official normalisation: '_' -> ' ', '/' -> ' or ', lower case, optional trailing dots removed."""
    res = name.replace("_", " ").replace("/", " or ").lower()
    return res.rstrip(".") if rm_dot else res


def template_prompts(category: str) -> list[str]:
    """The 63 official prompts of one category."""
    texts = [t.format(processed_name(category, rm_dot=True), article=article(category)) for t in MULTIPLE_TEMPLATES]
    return ["This is " + t if t.startswith("a") or t.startswith("the") else t for t in texts]


class ClipTextEncoder:
    """CLIP text features (``text_embeds``, unnormalised) for a list of strings, in batches."""

    def __init__(self, model: Any, tokenizer: Any, device: Any = "cpu", name: str = CLIP_MODEL,
                 batch_size: int = 256) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str = CLIP_MODEL, device: Any = "cpu",
                        revision: str | None = None) -> "ClipTextEncoder":
        """Text tower only (the vision weights in the checkpoint are skipped)."""
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        model = CLIPTextModelWithProjection.from_pretrained(name_or_path, revision=revision)
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, revision=revision)
        return cls(model, tokenizer, device, name=f"{name_or_path}@{revision or 'main'}")

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        max_len = int(getattr(self.model.config, "max_position_embeddings", 77))
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                 max_length=max_len, return_tensors="pt").to(self.device)
            if hasattr(self.model, "get_text_features"):  # a full CLIPModel (e.g. the zoo's bundle)
                feats = self.model.get_text_features(**enc)
                feats = getattr(feats, "pooler_output", feats)  # transformers 5: output object
            else:  # CLIPTextModelWithProjection
                feats = self.model(**enc).text_embeds
            out.append(feats.float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @property
    def dim(self) -> int:
        """Width of the text embeddings (512 for ViT-B/16, as RAM's label embeddings)."""
        return int(self.model.config.projection_dim)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def template_label_embedding(categories: Sequence[str], encoder: TextEncoder) -> torch.Tensor:
    """[K, D]: per category, mean of L2-normalised template embeddings, re-normalised."""
    if not categories:
        return torch.empty(0, 0)
    prompts = [p for category in categories for p in template_prompts(category)]
    feats = _normalise(encoder(prompts)).view(len(categories), len(MULTIPLE_TEMPLATES), -1)
    return _normalise(feats.mean(dim=1))


def load_tag_descriptions(path: str | Path) -> list[dict[str, list[str]]]:
    """Read RAM++ LLM tag descriptions in the official JSON format (a list of one-key dicts)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read tag descriptions {path}: {exc}",
                          hint='give a JSON list like [{"cat": ["a photo of a cat.", ...]}, ...]') from exc
    return validate_descriptions(data)


def validate_descriptions(data: Any) -> list[dict[str, list[str]]]:
    """Check the official structure and that every category has the same number of descriptions."""
    if not isinstance(data, list) or not all(isinstance(d, dict) and len(d) == 1 for d in data):
        raise ConfigError("tag descriptions must be a list of one-key objects {category: [descriptions]}",
                          hint="see datasets/openimages_rare_200/openimages_rare_200_llm_tag_descriptions.json")
    counts = set()
    for item in data:
        (cat, des), = item.items()
        if not isinstance(des, list) or not des or not all(isinstance(s, str) for s in des):
            raise ConfigError(f"descriptions of {cat!r} must be a non-empty list of strings", hint="fix the JSON")
        counts.add(len(des))
    if len(counts) > 1:
        raise ConfigError(f"categories have different numbers of descriptions ({sorted(counts)})",
                          hint="RAM++ groups rows per category; give every category the same count")
    return data


def description_label_embedding(descriptions: list[dict[str, list[str]]],
                                encoder: TextEncoder) -> tuple[torch.Tensor, list[str]]:
    """[K * d, D] L2-normalised description embeddings grouped per category, and the categories."""
    categories, rows = [], []
    for item in validate_descriptions(descriptions):
        (cat, des), = item.items()
        categories.append(cat)
        rows.append(_normalise(encoder(list(des))))
    return (torch.cat(rows) if rows else torch.empty(0, 0)), categories


def default_cache_dir() -> Path:
    """``$HF_HOME/ram_grounded/openset`` (HF_HOME defaults to ~/.cache/huggingface)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "ram_grounded" / "openset"


def cache_key(encoder_name: str, method: str, payload: Any) -> str:
    """Content hash of everything that determines an embedding."""
    blob = json.dumps({"v": CACHE_VERSION, "encoder": encoder_name, "method": method, "payload": payload},
                      ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _cached(key: str, cache_dir: Path | None, compute: Callable[[], tuple[torch.Tensor, list[str]]]
            ) -> tuple[torch.Tensor, list[str]]:
    from safetensors.torch import load_file, save_file

    path = (cache_dir or default_cache_dir()) / f"{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        try:
            return load_file(str(path))["label_embed"], json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError) as exc:  # a broken cache entry is recomputed
            logger.warning("ignoring unreadable open-set cache %s: %s", path, exc)
    embed, categories = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"label_embed": embed.contiguous()}, str(tmp))
        meta_path.write_text(json.dumps(categories, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not cache open-set embedding at %s: %s", path, exc)
    return embed, categories


def build_openset_label_embedding(
    categories: Sequence[str] | None = None,
    descriptions: list[dict[str, list[str]]] | None = None,
    encoder: ClipTextEncoder | None = None,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: Any = "cpu",
) -> tuple[torch.Tensor, list[str]]:
    """Label embedding + category names for open-set tagging.

    ``descriptions`` (RAM++ LLM format) wins over ``categories``; with only categories the
    template ensemble gives one row each. ``encoder`` defaults to CLIP ViT-B/16 on ``device``.
    """
    if descriptions is None and not categories:
        raise ConfigError("open-set tagging needs categories or tag descriptions", hint="give at least one category")
    if descriptions is not None:
        method, payload = "llm_descriptions", validate_descriptions(descriptions)
    else:
        method, payload = "templates", list(categories or [])
    enc_holder: list[ClipTextEncoder] = [encoder] if encoder is not None else []

    def get_encoder() -> ClipTextEncoder:
        if not enc_holder:
            enc_holder.append(ClipTextEncoder.from_pretrained(CLIP_MODEL, device=device))
        return enc_holder[0]

    def compute() -> tuple[torch.Tensor, list[str]]:
        if descriptions is not None:
            return description_label_embedding(payload, get_encoder())
        return template_label_embedding(payload, get_encoder()), list(payload)

    name = encoder.name if encoder is not None else f"{CLIP_MODEL}@main"
    if not use_cache:
        return compute()
    return _cached(cache_key(name, method, payload), Path(cache_dir) if cache_dir else None, compute)
