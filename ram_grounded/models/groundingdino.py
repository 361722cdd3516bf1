"""Grounding DINO on transformers: loaders for hub ids, original checkpoints and the tiny zoo.

Every loader returns a :class:`GroundingDinoBundle` (model + tokenizer + image processor +
text length), which is all the ``grounding_dino`` stage needs. Zoo cards name these
functions: ``load_hub`` (``IDEA-Research/grounding-dino-tiny|base``), ``load_original``
(``groundingdino_swint_ogc.pth``, ``groundingdino_swinb_cogcoor.pth``) and ``build_tiny``.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    PreTrainedTokenizerBase,
    SwinConfig,
)

from ram_grounded.errors import MissingWeightsError, WeightsError, WrongCheckpointError

from .groundingdino_convert import ORIGINAL_CONFIGS, convert_original_checkpoint

logger = logging.getLogger(__name__)

#: Token ids transformers' GroundingDino hard-codes as phrase delimiters ([CLS], [SEP], ".", "?").
SPECIAL_TOKEN_IDS = {"[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}
#: The tokenizer of every released original checkpoint (its text encoder is bert-base-uncased).
ORIGINAL_TOKENIZER = "google-bert/bert-base-uncased"
_CONVERTED_SUFFIX = ".hf"  # groundingdino_swint_ogc.pth -> groundingdino_swint_ogc.pth.hf/


@dataclass
class GroundingDinoBundle:
    """What the grounding stage needs: the model, its tokenizer and image processor."""

    model: GroundingDinoForObjectDetection
    tokenizer: PreTrainedTokenizerBase
    image_processor: GroundingDinoImageProcessor
    max_text_len: int
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> GroundingDinoBundle:
        self.model.to(device)
        return self


def _card_get(card: Any, attr: str, default: Any = None) -> Any:
    return getattr(card, attr, default) if card is not None else default


def _extra(card: Any) -> dict[str, Any]:
    return dict(_card_get(card, "extra", None) or {})


def _bundle(model: GroundingDinoForObjectDetection, tokenizer: PreTrainedTokenizerBase,
            processor: GroundingDinoImageProcessor, name: str, device: str | torch.device) -> GroundingDinoBundle:
    model.eval().to(device)
    return GroundingDinoBundle(model, tokenizer, processor, int(model.config.max_text_len), name)


def original_image_processor() -> GroundingDinoImageProcessor:
    """The original ``load_image`` transform: resize shorter side to 800 (longer <= 1333), ImageNet norm."""
    return GroundingDinoImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})


# --- original checkpoints -------------------------------------------------------------------

def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``{'model': state_dict}`` (or a bare state dict) safely (weights_only=True)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file
        raise WeightsError(f"cannot read {path}: {exc}", hint="is this an original groundingdino_*.pth file?") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WrongCheckpointError(f"{path} holds no tensor state dict", hint="expected {'model': state_dict}")
    return obj


def model_from_original(
    state_dict: dict[str, torch.Tensor], original_cfg: dict[str, Any]
) -> GroundingDinoForObjectDetection:
    """Convert and load; every transformers weight must come from the checkpoint."""
    config, new_sd = convert_original_checkpoint(state_dict, original_cfg)
    model = GroundingDinoForObjectDetection(config)
    result = model.load_state_dict(new_sd, strict=False)
    # swin.layernorm belongs to SwinModel's pooled output, which the backbone never uses
    missing = [k for k in result.missing_keys if ".swin.layernorm." not in k]
    if missing or result.unexpected_keys:
        raise WrongCheckpointError(
            f"converted checkpoint does not fit GroundingDinoForObjectDetection: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}",
            hint="the original config (variant) probably does not match the checkpoint",
        )
    return model.eval()


def _converted_dir(location: Path) -> Path:
    return location.with_name(location.name + _CONVERTED_SUFFIX)


def load_original(card: Any, location: str | Path, device: str | torch.device = "cpu") -> GroundingDinoBundle:
    """Load an original ``groundingdino_*.pth`` file, converted to transformers.

    ``card.extra["variant"]`` names the original config ("swint_ogc" or "swinb_cogcoor");
    ``card.extra["original_config"]`` may override values. The converted model is saved as
    safetensors in ``<file>.hf/`` (when writable) so the conversion happens once.
    """
    location = Path(location)
    if location.is_dir():  # a transformers folder (e.g. a saved conversion), not an original file
        return load_hub(card, str(location), device)
    extra = _extra(card)
    variant = extra.get("variant") or ("swinb_cogcoor" if "swinb" in location.name else "swint_ogc")
    if variant not in ORIGINAL_CONFIGS:
        raise WrongCheckpointError(f"unknown Grounding DINO variant {variant!r}", hint=f"use one of {sorted(ORIGINAL_CONFIGS)}")
    cfg = {**ORIGINAL_CONFIGS[variant], **extra.get("original_config", {})}
    cache = _converted_dir(location)
    stamp = {"source": location.name, "size": location.stat().st_size, "variant": variant}
    model = None
    if (cache / "config.json").exists() and (cache / "source.json").exists():
        if json.loads((cache / "source.json").read_text()) == stamp:
            model = GroundingDinoForObjectDetection.from_pretrained(str(cache))
    if model is None:
        logger.info("converting %s (%s) to transformers' GroundingDino", location, variant)
        model = model_from_original(load_original_state_dict(location), cfg)
        try:
            model.save_pretrained(str(cache))  # safetensors
            (cache / "source.json").write_text(json.dumps(stamp))
        except OSError as exc:  # read-only cache: convert again next time
            logger.warning("could not save the converted model to %s: %s", cache, exc)
    tok_name = extra.get("tokenizer", ORIGINAL_TOKENIZER)
    try:
        tokenizer = BertTokenizer.from_pretrained(tok_name)
    except OSError as exc:
        raise MissingWeightsError(
            f"tokenizer {tok_name!r} is not cached", hint="run once with network access, or set HF_HOME to a cache that has it"
        ) from exc
    return _bundle(model, tokenizer, original_image_processor(), _card_get(card, "name", location.name), device)


# --- transformers hub ids -------------------------------------------------------------------

def load_hub(card: Any, location: str, device: str | torch.device = "cpu") -> GroundingDinoBundle:
    """Load ``IDEA-Research/grounding-dino-tiny|base`` (or a local transformers folder)."""
    from transformers import AutoProcessor

    revision = _card_get(card, "revision") if not Path(location).is_dir() else None
    try:
        processor = AutoProcessor.from_pretrained(location, revision=revision)
        model = GroundingDinoForObjectDetection.from_pretrained(location, revision=revision)
    except OSError as exc:
        raise MissingWeightsError(
            f"{location} is not available offline", hint="download it once with network access (HF_HOME cache)"
        ) from exc
    return _bundle(model, processor.tokenizer, processor.image_processor, _card_get(card, "name", str(location)), device)


# --- tiny random model ----------------------------------------------------------------------

def tiny_vocab() -> dict[str, int]:
    """A small WordPiece vocab that spells any ASCII word with characters and keeps the
    bert-base-uncased ids of [PAD] [UNK] [CLS] [SEP] [MASK] "." "?" (transformers hard-codes them)."""
    fixed = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
    pieces = [c for c in string.ascii_lowercase + string.digits + string.punctuation if c not in ".?"]
    pieces += ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab: dict[str, int] = dict(fixed)
    next_id = 1030
    for piece in pieces:
        vocab[piece] = next_id
        next_id += 1
    taken = set(vocab.values())
    for i in range(next_id):  # fill the gaps so ids are contiguous
        if i not in taken:
            vocab[f"[unused{i}]"] = i
    return vocab


def tiny_tokenizer() -> BertTokenizer:
    """Offline character-level BERT tokenizer for the tiny model."""
    return BertTokenizer(vocab=tiny_vocab(), do_lower_case=True)


def tiny_config(vocab_size: int) -> GroundingDinoConfig:
    """Same structure as the released models, with every size small."""
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=7,
                          image_size=224, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512)
    return GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=1,
        decoder_layers=2, encoder_n_points=2, decoder_n_points=2, num_queries=20, max_text_len=256,
        dropout=0.0, fusion_droppath=0.0,
    )


def build_tiny(card: Any = None, seed: int = 0) -> GroundingDinoBundle:
    """Seeded tiny random-weight Grounding DINO with an offline tokenizer (CPU)."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(tiny_config(len(tokenizer.get_vocab())))
        # transformers initialises some layers to zero (box deltas, attention weights); perturb
        # them so outputs depend on the image and the text, as they would with trained weights
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
    processor = GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    return _bundle(model, tokenizer, processor, _card_get(card, "name", "grounding-dino-tiny-random"), "cpu")
