"""SAM loaders for the zoo: official ``sam_vit_*`` files, transformers hub ids, tiny models.

Every loader returns a :class:`~ram_grounded.models.sam_predictors.SamBoxPredictor`, so
the ``sam`` stage drives all of them with one ``segment_boxes`` call.

- :func:`load_official` builds the architecture with segment-anything's own builders
  (``checkpoint=None``, so they never unpickle anything), then loads the released
  ``.pth`` with ``torch.load(weights_only=True)`` and ``strict=True``.
- :func:`load_hub` uses transformers' ``SamModel`` / ``SamHQModel`` ``from_pretrained``.
- :func:`build_tiny` builds seeded random-weight models of the same structure, small.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MissingWeightsError, WrongCheckpointError
from .sam_predictors import HFSamPredictor, OfficialSamPredictor, SamBoxPredictor

logger = logging.getLogger(__name__)

__all__ = [
    "SamBoxPredictor",
    "OfficialSamPredictor",
    "HFSamPredictor",
    "load_official",
    "load_hub",
    "load_path",
    "build_tiny",
    "build_official_sam",
    "load_sam_state_dict",
]

#: image-encoder width of each released variant (how a file tells which one it is)
VARIANT_WIDTH = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768, "tiny": 32}
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"

#: sizes of the tiny models (official and transformers): 64 px input, 8 px patches
TINY = {"image_size": 64, "patch": 8, "width": 32, "depth": 2, "heads": 2, "window": 4, "prompt_dim": 32}


def build_official_sam(variant: str) -> nn.Module:
    """segment-anything's ``Sam`` for ``vit_h|vit_l|vit_b`` (random weights), or our ``tiny``."""
    if variant == "tiny":
        return _build_tiny_official()
    from segment_anything import sam_model_registry

    if variant not in ("vit_h", "vit_l", "vit_b"):
        raise ConfigError(f"unknown SAM variant {variant!r}", hint="use vit_h, vit_l or vit_b")
    return sam_model_registry[variant](checkpoint=None)  # None: the builder must not torch.load


def load_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a SAM ``.pth`` or ``.safetensors`` through the zoo's safe loader."""
    from ..zoo import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"SAM checkpoint {path} does not exist", hint="check the path or the zoo name")
    obj = load_state_dict(path)
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WrongCheckpointError(f"{path} is not a state dict of tensors", hint="pass a SAM checkpoint")
    return obj


def detect_variant(state: dict[str, torch.Tensor]) -> str | None:
    """Which SAM variant a state dict is, from its image-encoder width; None if not SAM."""
    weight = state.get(_PATCH_KEY)
    if weight is None or "mask_decoder.iou_token.weight" not in state:
        return None
    return {width: name for name, width in VARIANT_WIDTH.items()}.get(int(weight.shape[0]))


def load_official(card: Any, location: str | Path, device: str | torch.device = "cpu") -> OfficialSamPredictor:
    """Official SAM from a released ``sam_vit_*.pth`` at ``location`` (strict, weights_only)."""
    state = load_sam_state_dict(location)
    wanted = _card_variant(card, location)
    found = detect_variant(state)
    if found is None:
        raise WrongCheckpointError(f"{location} is not a segment-anything SAM checkpoint", hint="pass a sam_vit_* file")
    if wanted is not None and found != wanted:
        raise WrongCheckpointError(
            f"{location} is a SAM {found} checkpoint, but {wanted} was asked for",
            hint=f"use the sam_{found} zoo name" if found != "tiny" else "load it with extra.variant='tiny'",
        )
    sam = build_official_sam(found)
    _check_keys(sam, state, location)
    sam.load_state_dict(state, strict=True)
    name = getattr(card, "name", None) or str(location)
    logger.info("loaded official SAM %s (%s) from %s", name, found, location)
    return OfficialSamPredictor(sam, model_id=name).to(device).eval()


def load_hub(card: Any, location: str | Path, device: str | torch.device = "cpu") -> HFSamPredictor:
    """transformers ``SamModel`` (arch ``sam-hf``) or ``SamHQModel`` (``sam-hq-hf``) from a hub id or dir."""
    from transformers import PreTrainedConfig, SamHQModel, SamImageProcessor, SamModel

    arch = getattr(card, "arch", "sam-hf")
    model_cls = {"sam-hf": SamModel, "sam-hq-hf": SamHQModel}.get(arch)
    if model_cls is None:
        raise ConfigError(f"load_hub cannot build arch {arch!r}", hint="use sam-hf or sam-hq-hf")
    revision = getattr(card, "revision", None)
    expected = model_cls.config_class.model_type
    hint = "sam-hf takes facebook/sam-vit-*, sam-hq-hf takes syscv-community/sam-hq-vit-*"
    try:
        # read config.json first: a wrong model is refused before gigabytes of weights load
        config_dict, _ = PreTrainedConfig.get_config_dict(str(location), revision=revision)
        found = config_dict.get("model_type")
        if found != expected:
            raise WrongCheckpointError(f"{location} is a {found!r} model, not {expected!r}", hint=hint)
        model, info = model_cls.from_pretrained(str(location), revision=revision, output_loading_info=True)
    except OSError as exc:
        raise MissingWeightsError(
            f"cannot load {location} with transformers: {exc}",
            hint="download it once with network access (hf download <repo>) or pass a local directory",
        ) from exc
    bad = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if bad:
        raise WrongCheckpointError(
            f"{location} does not fit {model_cls.__name__}: {len(bad)} missing or mismatched weights "
            f"(e.g. {bad[:3]})",
            hint=hint,
        )
    try:
        processor = SamImageProcessor.from_pretrained(str(location), revision=revision)
    except OSError:
        size = int(model.config.vision_config.image_size)  # no preprocessor_config.json: SAM's defaults
        processor = _image_processor(size)
    name = getattr(card, "name", None) or str(location)
    return HFSamPredictor(model, processor, model_id=name).to(device).eval()


def load_path(path: str | Path, arch: str, device: str | torch.device = "cpu") -> SamBoxPredictor:
    """A local SAM checkpoint of ``arch`` (``sam`` file, ``sam-hf`` / ``sam-hq-hf`` directory).

    The variant of an official file comes from its name or, failing that, its weights.
    """
    card = SimpleNamespace(name=str(path), arch=arch, revision=None, filename=None, extra={})
    if arch == "sam":
        return load_official(card, path, device)
    return load_hub(card, path, device)


def build_tiny(card: Any, seed: int = 0) -> SamBoxPredictor:
    """Seeded tiny random-weight SAM of ``card.arch``'s structure (``sam``, ``sam-hf``, ``sam-hq-hf``)."""
    arch = getattr(card, "arch", "sam")
    name = f"tiny:{getattr(card, 'name', arch)}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "sam":
            return OfficialSamPredictor(_build_tiny_official(), model_id=name).eval()
        if arch in ("sam-hf", "sam-hq-hf"):
            model = _build_tiny_hf(hq=arch == "sam-hq-hf")
            return HFSamPredictor(model, _image_processor(TINY["image_size"]), model_id=name).eval()
    raise ConfigError(f"no tiny SAM for arch {arch!r}", hint="use sam, sam-hf or sam-hq-hf")


def _card_variant(card: Any, location: str | Path) -> str | None:
    extra = getattr(card, "extra", None) or {}
    if extra.get("variant"):
        return str(extra["variant"])
    for text in (getattr(card, "filename", None), getattr(card, "name", None), Path(str(location)).name):
        match = re.search(r"vit_([hlb])(?![a-z])", str(text or ""))
        if match:
            return f"vit_{match.group(1)}"
    return None


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], location: Any) -> None:
    """Name what does not fit before load_state_dict's long RuntimeError would."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise WrongCheckpointError(
            f"{location} does not fit SAM: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]}), {len(shapes)} with other shapes (e.g. {shapes[:3]})",
            hint="this is a SAM-HQ file: use the sam-hq-vit-* models (transformers)"
            if any("hf_token" in k for k in extra) else "pass the released sam_vit_* file for this variant",
        )


def _image_processor(size: int) -> Any:
    from transformers import SamImageProcessor

    return SamImageProcessor(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4},
        mask_pad_size={"height": size // 4, "width": size // 4},
    )


def _build_tiny_official() -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    t = TINY
    grid = t["image_size"] // t["patch"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=t["image_size"], patch_size=t["patch"], embed_dim=t["width"], depth=t["depth"],
            num_heads=t["heads"], mlp_ratio=4, out_chans=t["prompt_dim"], qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=t["window"],
            global_attn_indexes=(t["depth"] - 1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=t["prompt_dim"], image_embedding_size=(grid, grid),
            input_image_size=(t["image_size"], t["image_size"]), mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=t["prompt_dim"], mlp_dim=64, num_heads=2),
            transformer_dim=t["prompt_dim"], iou_head_depth=3, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _build_tiny_hf(hq: bool) -> nn.Module:
    from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel

    t = TINY
    vision = {
        "hidden_size": t["width"], "num_hidden_layers": t["depth"], "num_attention_heads": t["heads"],
        "image_size": t["image_size"], "patch_size": t["patch"], "window_size": t["window"],
        "global_attn_indexes": [t["depth"] - 1], "output_channels": t["prompt_dim"],
        "num_pos_feats": t["prompt_dim"] // 2, "mlp_dim": 4 * t["width"],
        "initializer_range": 0.02,  # the default 1e-10 would make the tiny encoder a constant
    }
    prompt = {"hidden_size": t["prompt_dim"], "image_size": t["image_size"], "patch_size": t["patch"],
              "mask_input_channels": 4}
    decoder: dict[str, Any] = {"hidden_size": t["prompt_dim"], "mlp_dim": 64, "num_attention_heads": 2,
                               "iou_head_hidden_dim": 32}
    if hq:
        decoder["vit_dim"] = t["width"]
        config = SamHQConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
        return SamHQModel(config).eval()
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    return SamModel(config).eval()
