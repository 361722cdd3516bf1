"""Building RAM / RAM++ / Tag2Text: released configs, preprocessing, loaders for the zoo.

Public API:
    ``released_config(arch, image_size=384) -> RamConfig``  from the shipped official files
    ``preprocess(images, image_size) -> Tensor [B, 3, S, S]``  official ``get_transform``
    ``load_pretrained(card, location, device) -> model``    zoo loader (official .pth, strict)
    ``build_tiny(card, seed) -> model``                     seeded tiny random model (CPU)
    ``build_from_golden(folder) -> model``                  a golden fixture's model, loaded strictly
    ``load_checkpoint_into(model, path)``                   safe read + official key handling + strict
    ``load_local(path, arch=None, device)``                 local official file, arch guessed from keys
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ImageLoadError, MissingWeightsError
from .ram import RamConfig, build_model
from .ram_checkpoint import MODEL_NAMES, load_official_state_dict
from .swin import SwinConfig

logger = logging.getLogger(__name__)

ARCHS = ("ram", "ram_plus", "tag2text")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: Official constructor default threshold (RAM/RAM++ then overwrite it per class from a file).
DEFAULT_THRESHOLD = 0.68
#: Tag2Text's hard-coded per-class thresholds: 2701 "person", 2828 "man", 1167 "woman".
TAG2TEXT_FIXED_THRESHOLDS = {2701: 0.7, 2828: 0.7, 1167: 0.7}
#: Structural constant of the RAM++ constructor (descriptions per class in ``label_embed``).
RAM_PLUS_DES_PER_CLASS = 51


def data_file(name: str) -> str:
    """Text of a shipped recognize-anything data file (``ram_grounded/data/recognize_anything``)."""
    return (resources.files("ram_grounded") / "data" / "recognize_anything" / name).read_text(encoding="utf-8")


def read_lines(text: str) -> list[str]:
    """Official ``f.read().splitlines()`` (raw names, trailing spaces kept)."""
    return text.splitlines()


def read_thresholds(text: str) -> list[float]:
    """Per-class thresholds, one float per line (blank lines ignored)."""
    return [float(s.strip()) for s in text.splitlines() if s.strip()]


def ram_class_threshold(num_class: int, per_class: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> list[float]:
    """RAM/RAM++: ``threshold`` everywhere, then overwritten line by line from the per-class file."""
    if len(per_class) > num_class:
        raise ConfigError(f"threshold file has {len(per_class)} values for {num_class} tags",
                          hint="give one threshold per tag (or fewer)")
    values = [float(threshold)] * num_class
    values[: len(per_class)] = [float(v) for v in per_class]
    return values


def tag2text_class_threshold(num_class: int, threshold: float = DEFAULT_THRESHOLD) -> list[float]:
    """Tag2Text: ``threshold`` everywhere except the hard-coded 0.7 classes (when present)."""
    values = [float(threshold)] * num_class
    for idx, val in TAG2TEXT_FIXED_THRESHOLDS.items():
        if idx < num_class:
            values[idx] = val
    return values


def tag2text_delete_tag_index() -> list[int]:
    """Default classes Tag2Text never reports (numerals that disturb captions)."""
    return list(json.loads(data_file("tag2text_delete_tag_index.json"))["indices"])


def released_config(arch: str, image_size: int = 384) -> RamConfig:
    """Configuration of a released model, from the shipped official config and tag files."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown RAM-family model {arch!r}", hint=f"use one of {', '.join(ARCHS)}")
    if image_size not in (224, 384):
        raise ConfigError(f"image_size {image_size} is not supported", hint="the official models use 224 or 384")
    swin_name = "L" if arch in ("ram", "ram_plus") else "B"
    swin = SwinConfig.from_dict(json.loads(data_file(f"configs/swin/config_swin{swin_name}_{image_size}.json")))
    med = json.loads(data_file("configs/med_config.json"))
    q2l = json.loads(data_file("configs/q2l_config.json"))
    if arch == "tag2text":
        tags = read_lines(data_file("tag2text_ori_tag_list.txt"))
        return RamConfig("tag2text", swin, q2l, med, tuple(tags), None,
                         tuple(tag2text_class_threshold(len(tags))), tuple(tag2text_delete_tag_index()))
    tags = read_lines(data_file("ram_tag_list.txt"))
    zh = read_lines(data_file("ram_tag_list_chinese.txt"))
    thr = ram_class_threshold(len(tags), read_thresholds(data_file("ram_tag_list_threshold.txt")))
    return RamConfig(arch, swin, q2l, med if arch == "ram" else None, tuple(tags), tuple(zh), tuple(thr),
                     des_per_class=RAM_PLUS_DES_PER_CLASS)


# ------------------------------------------------------------------ preprocessing
def to_pil_rgb(image: Any) -> Image.Image:
    """PIL RGB image from a PIL image or a uint8 array (HxW, HxWx3, HxWx4; alpha dropped as PIL does)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageLoadError(f"expected a uint8 HxW[xC] image array, got {arr.dtype} {arr.shape}",
                             hint="pass RGB uint8 HxWx3 pixels (ram_grounded.io.load_image gives them)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def preprocess(images: Sequence[Any], image_size: int) -> torch.Tensor:
    """Official ``get_transform(image_size)`` on each image, stacked: float32 [B, 3, S, S].

    convert('RGB') -> PIL bilinear resize to (S, S) (no aspect ratio, no crop) -> /255 ->
    normalise with the ImageNet mean/std, in the same float32 operation order as torchvision.
    """
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    out = []
    for image in images:
        pil = to_pil_rgb(image).resize((image_size, image_size), Image.BILINEAR)
        x = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        out.append(x.to(torch.float32).div(255).sub(mean).div(std))
    if not out:
        return torch.empty(0, 3, image_size, image_size)
    return torch.stack(out)


# ------------------------------------------------------------------ loading
def load_checkpoint_into(model: torch.nn.Module, path: str | Path) -> None:
    """Read ``path`` safely (safetensors / weights_only) and load it strictly the official way."""
    from ..zoo import load_state_dict

    state_dict = load_state_dict(path)
    load_official_state_dict(model, state_dict, model.arch, source=str(path))


def _release_tokenizer(card: Any) -> Any:
    """bert-base-uncased + [DEC]/[ENC] for Tag2Text captions; None (with a warning) if unavailable."""
    from .. import zoo

    name = (getattr(card, "extra", None) or {}).get("tokenizer", "bert-base-uncased")
    try:
        return zoo.load_model(name)
    except MissingWeightsError as exc:
        logger.warning("Tag2Text tokenizer %s unavailable (%s); tagging works, captioning will not", name, exc)
        return None


def load_pretrained(card: Any, location: str | Path, device: Any = "cpu") -> torch.nn.Module:
    """Zoo loader: the released configuration of ``card.arch`` with the official file at ``location``."""
    arch = card.arch
    config = released_config(arch, int((getattr(card, "extra", None) or {}).get("image_size", 384)))
    model = build_model(config, init_weights=False)
    logger.info("loading %s from %s", MODEL_NAMES[arch], location)
    load_checkpoint_into(model, location)
    if arch == "tag2text":
        model.tokenizer = _release_tokenizer(card)
    return model.eval().to(device)


def load_local(path: str | Path, arch: str | None = None, device: Any = "cpu") -> torch.nn.Module:
    """A released-configuration model from a local official file; ``arch`` guessed from its keys if None."""
    from ..zoo import default_card, load_state_dict
    from .ram_checkpoint import identify_checkpoint, load_official_state_dict

    state_dict = load_state_dict(path)
    found = identify_checkpoint(list(state_dict))
    arch = arch or found
    if arch not in ARCHS:
        name = MODEL_NAMES.get(found or "", "an unknown model")
        raise ConfigError(f"{path} is not a RAM / RAM++ / Tag2Text checkpoint (it looks like {name})",
                          hint="give an official ram/ram_plus/tag2text .pth, or set the arch")
    model = build_model(released_config(arch), init_weights=False)
    load_official_state_dict(model, state_dict, arch, source=str(path))
    del state_dict
    if arch == "tag2text":
        model.tokenizer = _release_tokenizer(default_card(arch))
    return model.eval().to(device)


# ------------------------------------------------------------------ tiny models
TINY_SWIN = {"image_res": 224, "window_size": 7, "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8]}
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0,
             "add_cross_attention": True}
TINY_DES_PER_CLASS = 2


def tiny_config(arch: str, vocab_size: int) -> RamConfig:
    """Released tag lists and thresholds with tiny Swin/BERT sizes (tests, dry runs)."""
    full = released_config(arch, 224)
    med = {**TINY_BERT, "vocab_size": vocab_size, "encoder_width": TINY_BERT["hidden_size"]}
    q2l = {**TINY_BERT, "num_attention_heads": 4, "vocab_size": vocab_size}
    return full.evolve(swin=SwinConfig.from_dict(TINY_SWIN), q2l_config=q2l,
                          med_config=med if full.med_config is not None else None,
                          des_per_class=TINY_DES_PER_CLASS)


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights: matrices N(0,1)/sqrt(fan_in), norms ~1, biases small."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # shared parameters appear once
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("LayerNorm.weight") or (name.endswith(".weight") and ".norm" in name):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:])) if "label_embed" not in name else 1
                p.copy_(noise / fan_in ** 0.5)
            else:
                p.copy_(0.1 * noise)


def _calibrate_tiny_thresholds(model: torch.nn.Module, seed: int, fired: int = 8) -> None:
    """Set the tiny model's per-class thresholds so that about ``fired`` tags pass on any image.

    Random tiny weights would otherwise report nothing, or hundreds of tags (their logits
    vary more between images than between classes), which makes dry runs uninformative and
    slow downstream. The ``fired`` classes with the highest mean logit over a few synthetic
    images get a threshold 2 logits below it, every other class one 2.5 logits above it.
    (The RAM/RAM++ head has one shared output bias, so the thresholds are what can vary.)
    """
    gen = torch.Generator().manual_seed(seed)
    size = model.image_size
    ramp = torch.linspace(-2, 2, size).expand(1, 3, size, size)
    pixels = torch.cat([torch.randn(3, 3, size, size, generator=gen), ramp, ramp.transpose(2, 3), ramp * 0])
    with torch.no_grad():
        logits = model(pixels).mean(0)
        offset = torch.full_like(logits, 2.5)
        offset[torch.topk(logits, min(fired, logits.numel())).indices] = -2.0
        model.class_threshold.copy_(torch.sigmoid(logits + offset))


def build_tiny(card: Any, seed: int = 0) -> torch.nn.Module:
    """Tiny random-weight model of ``card.arch`` with the shipped tag lists (CPU, eval mode)."""
    from .tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(card, seed)
    model = build_model(tiny_config(card.arch, len(tokenizer)))
    randomize_(model, seed)
    _calibrate_tiny_thresholds(model.eval(), seed)
    if card.arch == "tag2text":
        model.tokenizer = tokenizer
    return model.eval()


# ------------------------------------------------------------------ golden fixtures
def golden_config(folder: str | Path) -> RamConfig:
    """The model configuration a golden folder describes (``config.json`` + its tag files)."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = cfg["model"]
    kwargs = cfg.get("constructor_kwargs", {})
    threshold = float(kwargs.get("threshold", DEFAULT_THRESHOLD))
    tags = read_lines((folder / "tag_list.txt").read_text(encoding="utf-8"))
    swin = SwinConfig.from_dict(cfg["swin_config"])
    delete = tuple(int(i) for i in kwargs.get("delete_tag_index", []))
    if arch == "tag2text":
        return RamConfig(arch, swin, cfg["q2l_config"], cfg["med_config"], tuple(tags), None,
                         tuple(tag2text_class_threshold(len(tags), threshold)), delete,
                         prompt=kwargs.get("prompt", "a picture of "))
    zh = read_lines((folder / "tag_list_chinese.txt").read_text(encoding="utf-8"))
    per_class = read_thresholds((folder / "tag_list_threshold.txt").read_text(encoding="utf-8"))
    return RamConfig(arch, swin, cfg["q2l_config"], cfg["med_config"] if arch == "ram" else None, tuple(tags),
                     tuple(zh), tuple(ram_class_threshold(len(tags), per_class, threshold)), delete,
                     des_per_class=int(cfg.get("des_per_class", RAM_PLUS_DES_PER_CLASS)))


def build_from_golden(folder: str | Path) -> torch.nn.Module:
    """Model of a golden folder with its ``checkpoint.pth`` loaded strictly (tokenizer from vocab.txt)."""
    from .tokenizer import tokenizer_from_vocab

    folder = Path(folder)
    model = build_model(golden_config(folder), init_weights=False)
    load_checkpoint_into(model, folder / "checkpoint.pth")
    if model.arch == "tag2text":
        model.tokenizer = tokenizer_from_vocab(folder / "vocab.txt")
    return model.eval()
