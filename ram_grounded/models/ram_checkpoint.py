"""Loading official RAM / RAM++ / Tag2Text checkpoints into our modules, strictly.

The official loaders (``load_checkpoint_swinbase/swinlarge``) do three things before a
``strict=False`` load, and so do we before a ``strict=True`` one:

1. keys containing ``vision_multi`` are renamed to ``tagging_head`` (older releases);
2. Swin ``relative_position_index`` / ``attn_mask`` buffers are dropped -- we then put the
   model's own recomputed buffers in their place (they depend only on the sizes);
3. every ``relative_position_bias_table`` whose size differs from ``(2*window-1)^2`` is
   interpolated (:func:`interpolate_relative_position_bias`).

Also: a ``module.`` prefix (DataParallel) is removed; BERT ``position_ids`` buffers missing
from a file are recomputed; a tied parameter stored under only one of its names fills the
other. Any other missing or unexpected key is an error. A file of another model fails with
:class:`WrongCheckpointError` naming the model it belongs to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError, WrongCheckpointError

logger = logging.getLogger(__name__)

#: Human names of what :func:`identify_checkpoint` can recognise.
MODEL_NAMES = {
    "ram": "RAM (Recognize Anything)",
    "ram_plus": "RAM++ (Recognize Anything Plus)",
    "tag2text": "Tag2Text",
    "groundingdino": "Grounding DINO",
    "sam": "Segment Anything (SAM)",
}


def identify_checkpoint(keys: Mapping[str, object] | list[str]) -> str | None:
    """Which model a state dict belongs to, from its key names; None if unknown."""
    ks = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    has = set(ks).__contains__

    def any_prefix(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in ks)

    if any_prefix("backbone.0.", "transformer.", "model.backbone.", "feat_map."):
        return "groundingdino"
    if any_prefix("image_encoder.", "prompt_encoder.", "mask_decoder.", "vision_encoder."):
        return "sam"
    if has("reweight_scale"):
        return "ram_plus"
    if has("fc.W") or has("label_embed.weight"):
        return "tag2text"
    if has("label_embed") and any_prefix("visual_encoder."):
        return "ram_plus" if not any_prefix("tag_encoder.", "text_decoder.") else "ram"
    return None


def check_checkpoint_kind(state_dict: Mapping[str, object], arch: str, source: str = "checkpoint") -> None:
    """Raise :class:`WrongCheckpointError` if ``state_dict`` clearly belongs to another model."""
    kind = identify_checkpoint(list(state_dict))
    if kind is not None and kind != arch:
        raise WrongCheckpointError(
            f"{source} is a {MODEL_NAMES[kind]} checkpoint, not {MODEL_NAMES.get(arch, arch)}",
            hint=f"load it as '{kind}', or give a {MODEL_NAMES.get(arch, arch)} checkpoint",
        )


def _bias_table_grid(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Official source/target coordinates: a geometric progression stretches the source grid."""
    def geometric_sum(r: float, n: int) -> float:
        return (1.0 - r ** n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_sum(q, src_size // 2) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    src = np.array([-d for d in reversed(dis)] + [0.0] + dis)
    t = dst_size // 2.0
    return src, np.arange(-t, t + 0.1, 1.0)


def interpolate_relative_position_bias(table: torch.Tensor, dst_num_pos: int) -> torch.Tensor:
    """Resize a ``[(2w-1)^2, heads]`` bias table to ``dst_num_pos`` rows as the official loader does.

    Official: per head, SciPy ``interp2d(kind='cubic')`` over the geometric source grid, which
    for gridded data is FITPACK's interpolating bicubic spline (``regrid``, s=0); SciPy >= 1.14
    removed ``interp2d``, so we call the same spline through ``RectBivariateSpline``. Without
    SciPy, torch bicubic resampling on a uniform grid is used (close, not identical; logged).
    Tables already of the right size are returned unchanged.
    """
    src_num, heads = table.shape
    src_size, dst_size = int(src_num ** 0.5), int(dst_num_pos ** 0.5)
    if src_size == dst_size:
        return table
    logger.info("interpolating relative_position_bias_table %dx%d -> %dx%d", src_size, src_size, dst_size, dst_size)
    try:
        from scipy.interpolate import RectBivariateSpline
    except ImportError:
        logger.warning("SciPy missing: bias-table interpolation uses torch bicubic (not the official spline)")
        grid = table.float().t().reshape(1, heads, src_size, src_size)
        out = torch.nn.functional.interpolate(grid, size=(dst_size, dst_size), mode="bicubic", align_corners=True)
        return out.reshape(heads, -1).t().contiguous().to(table.dtype)
    src, dst = _bias_table_grid(src_size, dst_size)
    cols = []
    for h in range(heads):
        z = table[:, h].reshape(src_size, src_size).float().numpy().astype(np.float64)
        # interp2d(x, y, z)(dx, dy) == RectBivariateSpline(x, y, z.T)(dx, dy).T (z rows follow y)
        vals = RectBivariateSpline(src, src, z.T, kx=3, ky=3, s=0)(dst, dst).T
        cols.append(torch.tensor(vals, dtype=torch.float32).reshape(-1, 1))
    return torch.cat(cols, dim=-1).to(table.dtype)


def _is_recomputable_buffer(key: str) -> bool:
    return "relative_position_index" in key or "attn_mask" in key or key.endswith("embeddings.position_ids")


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the official loader's key handling, then fill recomputable buffers from ``model``."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if "relative_position_bias_table" in key:
            if key in own:
                value = interpolate_relative_position_bias(value, own[key].shape[0])
        elif "relative_position_index" in key or "attn_mask" in key:
            continue  # the official loader deletes these; ours are recomputed from the sizes
        elif "vision_multi" in key:
            key = key.replace("vision_multi", "tagging_head")
        out[key] = value
    for key, value in own.items():
        if key not in out and _is_recomputable_buffer(key):
            out[key] = value
    # A tied parameter saved under one name only: give its aliases the same tensor.
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    for names in aliases.values():
        present = [n for n in names if n in out]
        if present:
            for n in names:
                out.setdefault(n, out[present[0]])
    return out


def load_official_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str,
                             source: str = "checkpoint") -> None:
    """Check the kind, convert like the official loader, then ``load_state_dict(strict=True)``."""
    check_checkpoint_kind(state_dict, arch, source)
    converted = convert_official_state_dict(state_dict, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(converted) if tuple(own[k].shape) != tuple(converted[k].shape))
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
        if wrong_shape:
            parts.append("shape mismatch: " + show([f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}"
                                                    for k in wrong_shape]))
        raise WeightsError(f"{source} does not fit the {MODEL_NAMES.get(arch, arch)} model: " + "; ".join(parts),
                           hint="check that the file and the model configuration (image size, tag list) match")
    model.load_state_dict(converted, strict=True)
