"""Convert original IDEA-Research Grounding DINO checkpoints to transformers' format.

The released ``groundingdino_*.pth`` files hold ``{'model': state_dict}`` for the original
code; transformers runs the same network as ``GroundingDinoForObjectDetection`` under other
key names. This module maps (1) the original config values to a ``GroundingDinoConfig`` and
(2) every original key to its transformers key(s). Nothing is guessed: a key that no rule
covers, or a documented drop that is not there, is an error, so a checkpoint of another
model fails loudly instead of loading half its weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import BertConfig, GroundingDinoConfig, SwinConfig

from ram_grounded.errors import ConfigError, WrongCheckpointError

# Swin sizes the original code hard-codes per backbone name (build_swin_transformer).
SWIN_SIZES: dict[str, dict[str, Any]] = {
    "swin_T_224_1k": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, pretrain_img_size=224),
    "swin_B_224_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7, pretrain_img_size=224),
    "swin_B_384_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, pretrain_img_size=384),
    "swin_L_224_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=7, pretrain_img_size=224),
    "swin_L_384_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, pretrain_img_size=384),
}

# bert-base-uncased, the text encoder of every released checkpoint (text_encoder_type).
BERT_BASE_UNCASED: dict[str, Any] = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
    layer_norm_eps=1e-12, pad_token_id=0,
)

# The transformer values shared by GroundingDINO_SwinT_OGC.py and GroundingDINO_SwinB_cfg.py.
_COMMON: dict[str, Any] = dict(
    position_embedding="sine", pe_temperatureH=20, pe_temperatureW=20, return_interm_indices=[1, 2, 3],
    enc_layers=6, dec_layers=6, pre_norm=False, dim_feedforward=2048, hidden_dim=256, dropout=0.0,
    nheads=8, num_queries=900, query_dim=4, num_patterns=0, num_feature_levels=4, enc_n_points=4,
    dec_n_points=4, two_stage_type="standard", two_stage_bbox_embed_share=False,
    two_stage_class_embed_share=False, transformer_activation="relu", dec_pred_bbox_embed_share=True,
    embed_init_tgt=True, max_text_len=256, text_encoder_type="bert-base-uncased", use_text_enhancer=True,
    use_fusion_layer=True, use_text_cross_attention=True, text_dropout=0.0, fusion_dropout=0.0,
    fusion_droppath=0.1, sub_sentence_present=True,
)
# Original config files of the released checkpoints (the .pth files carry no config).
ORIGINAL_CONFIGS: dict[str, dict[str, Any]] = {
    "swint_ogc": {**_COMMON, "backbone": "swin_T_224_1k"},
    "swinb_cogcoor": {**_COMMON, "backbone": "swin_B_384_22k"},
}

# Original keys that have no counterpart in transformers, by design.
_DROP_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"label_enc\.weight"),  # dn label embedding, training only
    re.compile(r"bert\.embeddings\.position_ids"),  # buffer; position ids are computed
    re.compile(r"bert\.pooler\.dense\.(weight|bias)"),  # transformers' text backbone has no pooler
    re.compile(r"backbone\.0\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index"),  # recomputed buffer
)

_SWIN = "model.backbone.conv_encoder.model."


def _require(cfg: Mapping[str, Any], key: str, expected: Any) -> None:
    if key in cfg and cfg[key] != expected:
        raise ConfigError(
            f"original config {key}={cfg[key]!r} is not supported (transformers' GroundingDino needs {expected!r})",
            hint="only the released Grounding DINO architecture can be converted",
        )


def swin_sizes(original_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Swin sizes: an explicit ``swin_backbone`` entry wins over the table keyed by ``backbone``."""
    if "swin_backbone" in original_cfg:
        sw = dict(original_cfg["swin_backbone"])
        sw.setdefault("pretrain_img_size", 224)
        return sw
    name = original_cfg.get("backbone", "swin_T_224_1k")
    if name not in SWIN_SIZES:
        raise ConfigError(f"unknown original backbone {name!r}", hint=f"use one of {sorted(SWIN_SIZES)}")
    return dict(SWIN_SIZES[name])


def config_from_original(original_cfg: Mapping[str, Any]) -> GroundingDinoConfig:
    """Map original Grounding DINO config values (SLConfig fields) to a ``GroundingDinoConfig``.

    Optional extra entries: ``swin_backbone`` (embed_dim, depths, num_heads, window_size,
    pretrain_img_size) and ``bert_config`` (BertConfig fields) replace the released sizes.
    """
    cfg = {**_COMMON, **dict(original_cfg)}
    for key, expected in [
        ("two_stage_type", "standard"), ("query_dim", 4), ("num_patterns", 0), ("pre_norm", False),
        ("use_text_enhancer", True), ("use_fusion_layer", True), ("use_text_cross_attention", True),
        ("sub_sentence_present", True), ("two_stage_class_embed_share", False),
        ("position_embedding", "sine"), ("embed_init_tgt", True),
    ]:
        _require(cfg, key, expected)
    if cfg["pe_temperatureH"] != cfg["pe_temperatureW"]:
        raise ConfigError("pe_temperatureH != pe_temperatureW", hint="transformers has one temperature")
    sw = swin_sizes(cfg)
    backbone = SwinConfig(
        embed_dim=sw["embed_dim"], depths=list(sw["depths"]), num_heads=list(sw["num_heads"]),
        window_size=sw["window_size"], image_size=sw["pretrain_img_size"], patch_size=4, num_channels=3,
        mlp_ratio=4.0, qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-5, use_absolute_embeddings=False,
        # original return_interm_indices index Swin layers from 0; transformers' stages count from 1
        # (stage 0 is the stem)
        out_indices=[i + 1 for i in cfg["return_interm_indices"]],
    )
    bert_values = dict(cfg.get("bert_config") or BERT_BASE_UNCASED)
    for k in ("architectures", "model_type", "transformers_version", "_name_or_path"):
        bert_values.pop(k, None)
    text = BertConfig(**bert_values)
    return GroundingDinoConfig(
        backbone_config=backbone, text_config=text,
        d_model=cfg["hidden_dim"], encoder_attention_heads=cfg["nheads"], decoder_attention_heads=cfg["nheads"],
        encoder_ffn_dim=cfg["dim_feedforward"], decoder_ffn_dim=cfg["dim_feedforward"],
        encoder_layers=cfg["enc_layers"], decoder_layers=cfg["dec_layers"],
        encoder_n_points=cfg["enc_n_points"], decoder_n_points=cfg["dec_n_points"],
        num_queries=cfg["num_queries"], num_feature_levels=cfg["num_feature_levels"],
        two_stage=True, two_stage_bbox_embed_share=cfg["two_stage_bbox_embed_share"],
        decoder_bbox_embed_share=cfg["dec_pred_bbox_embed_share"], embedding_init_target=True,
        query_dim=4, activation_function=cfg["transformer_activation"],
        positional_embedding_temperature=cfg["pe_temperatureH"], max_text_len=cfg["max_text_len"],
        dropout=cfg["dropout"], text_enhancer_dropout=cfg["text_dropout"],
        fusion_dropout=cfg["fusion_dropout"], fusion_droppath=cfg["fusion_droppath"],
        layer_norm_eps=1e-5, position_embedding_type="sine",
    )


# --- key rules: (pattern on the original key, function giving [(new_key, tensor), ...]) ---

Rule = tuple[re.Pattern[str], Callable[[re.Match[str], torch.Tensor], list[tuple[str, torch.Tensor]]]]


def _rename(template: str) -> Callable[[re.Match[str], torch.Tensor], list[tuple[str, torch.Tensor]]]:
    return lambda m, t: [(m.expand(template), t)]


def _split3(template: str, names: tuple[str, str, str]) -> Callable[[re.Match[str], torch.Tensor], list[tuple[str, torch.Tensor]]]:
    """Fused q/k/v rows (3*dim, ...) -> three tensors; ``{}`` in template takes the name."""

    def fn(m: re.Match[str], t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if t.shape[0] % 3:
            raise WrongCheckpointError(f"{m.string}: {tuple(t.shape)} is not a fused q/k/v tensor")
        base = m.expand(template)
        return [(base.replace("{}", n), part.clone()) for n, part in zip(names, t.chunk(3, dim=0))]

    return fn


_QKV = ("query", "key", "value")
_BLK = r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\."
_SBLK = _SWIN + r"swin.encoder.layers.\1.blocks.\2."
_ENC = r"transformer\.encoder\."
_DEC = r"transformer\.decoder\.layers\.(\d+)\."
_HDEC = r"model.decoder.layers.\1."


def _in_proj(dst: str) -> Callable[[re.Match[str], torch.Tensor], list[tuple[str, torch.Tensor]]]:
    # nn.MultiheadAttention in_proj_{weight,bias} -> query/key/value Linear {weight,bias}
    return lambda m, t: _split3(dst + r".{}." + m.group(m.lastindex), _QKV)(m, t)


_RULES: list[Rule] = [
    # Swin backbone
    (re.compile(r"backbone\.0\.patch_embed\.proj\.(weight|bias)"), _rename(_SWIN + r"swin.embeddings.patch_embeddings.projection.\1")),
    (re.compile(r"backbone\.0\.patch_embed\.norm\.(weight|bias)"), _rename(_SWIN + r"swin.embeddings.norm.\1")),
    (re.compile(_BLK + r"norm1\.(weight|bias)"), _rename(_SBLK + r"layernorm_before.\3")),
    (re.compile(_BLK + r"norm2\.(weight|bias)"), _rename(_SBLK + r"layernorm_after.\3")),
    (re.compile(_BLK + r"attn\.relative_position_bias_table"), _rename(_SBLK + "attention.relative_position_bias.relative_position_bias_table")),
    (re.compile(_BLK + r"attn\.qkv\.(weight|bias)"), _split3(_SBLK + r"attention.{}_proj.\3", ("q", "k", "v"))),
    (re.compile(_BLK + r"attn\.proj\.(weight|bias)"), _rename(_SBLK + r"attention.o_proj.\3")),
    (re.compile(_BLK + r"mlp\.(fc1|fc2)\.(weight|bias)"), _rename(_SBLK + r"mlp.\3.\4")),
    (re.compile(r"backbone\.0\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)"), _rename(_SWIN + r"swin.encoder.layers.\1.downsample.\2.\3")),
    # output norm of Swin layer i is transformers' stage i+1
    (re.compile(r"backbone\.0\.norm(\d+)\.(weight|bias)"), lambda m, t: [(f"{_SWIN}hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}", t)]),
    # text backbone and projections
    (re.compile(r"bert\.(embeddings|encoder)\.(.+)"), _rename(r"model.text_backbone.\1.\2")),
    (re.compile(r"feat_map\.(weight|bias)"), _rename(r"model.text_projection.\1")),
    (re.compile(r"input_proj\.(\d+)\.([01])\.(weight|bias)"), _rename(r"model.input_proj_vision.\1.\2.\3")),
    (re.compile(r"transformer\.level_embed"), _rename("model.level_embed")),
    (re.compile(r"transformer\.tgt_embed\.weight"), _rename("model.query_position_embeddings.weight")),
    (re.compile(r"transformer\.(enc_output|enc_output_norm)\.(weight|bias)"), _rename(r"model.\1.\2")),
    (re.compile(r"transformer\.enc_out_bbox_embed\.layers\.(\d+)\.(weight|bias)"), _rename(r"model.encoder_output_bbox_embed.layers.\1.\2")),
    # encoder: deformable image layers
    (re.compile(_ENC + r"layers\.(\d+)\.self_attn\.(\w+)\.(weight|bias)"), _rename(r"model.encoder.layers.\1.deformable_layer.self_attn.\2.\3")),
    (re.compile(_ENC + r"layers\.(\d+)\.norm1\.(weight|bias)"), _rename(r"model.encoder.layers.\1.deformable_layer.self_attn_layer_norm.\2")),
    (re.compile(_ENC + r"layers\.(\d+)\.norm2\.(weight|bias)"), _rename(r"model.encoder.layers.\1.deformable_layer.final_layer_norm.\2")),
    (re.compile(_ENC + r"layers\.(\d+)\.linear([12])\.(weight|bias)"), _rename(r"model.encoder.layers.\1.deformable_layer.fc\2.\3")),
    # encoder: text enhancer layers
    (re.compile(_ENC + r"text_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)"), _in_proj(r"model.encoder.layers.\1.text_enhancer_layer.self_attn")),
    (re.compile(_ENC + r"text_layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)"), _rename(r"model.encoder.layers.\1.text_enhancer_layer.self_attn.out_proj.\2")),
    (re.compile(_ENC + r"text_layers\.(\d+)\.linear([12])\.(weight|bias)"), _rename(r"model.encoder.layers.\1.text_enhancer_layer.fc\2.\3")),
    (re.compile(_ENC + r"text_layers\.(\d+)\.norm1\.(weight|bias)"), _rename(r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_before.\2")),
    (re.compile(_ENC + r"text_layers\.(\d+)\.norm2\.(weight|bias)"), _rename(r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_after.\2")),
    # encoder: bi-directional image/text fusion layers
    (re.compile(_ENC + r"fusion_layers\.(\d+)\.gamma_v"), _rename(r"model.encoder.layers.\1.fusion_layer.vision_param")),
    (re.compile(_ENC + r"fusion_layers\.(\d+)\.gamma_l"), _rename(r"model.encoder.layers.\1.fusion_layer.text_param")),
    (re.compile(_ENC + r"fusion_layers\.(\d+)\.layer_norm_v\.(weight|bias)"), _rename(r"model.encoder.layers.\1.fusion_layer.layer_norm_vision.\2")),
    (re.compile(_ENC + r"fusion_layers\.(\d+)\.layer_norm_l\.(weight|bias)"), _rename(r"model.encoder.layers.\1.fusion_layer.layer_norm_text.\2")),
    (re.compile(_ENC + r"fusion_layers\.(\d+)\.attn\.(values_|out_|)v_proj\.(weight|bias)"), _rename(r"model.encoder.layers.\1.fusion_layer.attn.\2vision_proj.\3")),
    (re.compile(_ENC + r"fusion_layers\.(\d+)\.attn\.(values_|out_|)l_proj\.(weight|bias)"), _rename(r"model.encoder.layers.\1.fusion_layer.attn.\2text_proj.\3")),
    # decoder layers
    (re.compile(_DEC + r"cross_attn\.(\w+)\.(weight|bias)"), _rename(_HDEC + r"encoder_attn.\2.\3")),
    (re.compile(_DEC + r"norm1\.(weight|bias)"), _rename(_HDEC + r"encoder_attn_layer_norm.\2")),
    (re.compile(_DEC + r"ca_text\.in_proj_(weight|bias)"), _in_proj(_HDEC + "encoder_attn_text")),
    (re.compile(_DEC + r"ca_text\.out_proj\.(weight|bias)"), _rename(_HDEC + r"encoder_attn_text.out_proj.\2")),
    (re.compile(_DEC + r"catext_norm\.(weight|bias)"), _rename(_HDEC + r"encoder_attn_text_layer_norm.\2")),
    (re.compile(_DEC + r"self_attn\.in_proj_(weight|bias)"), _in_proj(_HDEC + "self_attn")),
    (re.compile(_DEC + r"self_attn\.out_proj\.(weight|bias)"), _rename(_HDEC + r"self_attn.out_proj.\2")),
    (re.compile(_DEC + r"norm2\.(weight|bias)"), _rename(_HDEC + r"self_attn_layer_norm.\2")),
    (re.compile(_DEC + r"linear([12])\.(weight|bias)"), _rename(_HDEC + r"fc\2.\3")),
    (re.compile(_DEC + r"norm3\.(weight|bias)"), _rename(_HDEC + r"final_layer_norm.\2")),
    (re.compile(r"transformer\.decoder\.norm\.(weight|bias)"), _rename(r"model.decoder.layer_norm.\1")),
    (re.compile(r"transformer\.decoder\.ref_point_head\.layers\.(\d+)\.(weight|bias)"), _rename(r"model.decoder.reference_points_head.layers.\1.\2")),
    # box heads: with dec_pred_bbox_embed_share both lists are copies of one MLP (transformers ties them)
    (re.compile(r"transformer\.decoder\.bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)"), _rename(r"model.decoder.bbox_embed.\1.layers.\2.\3")),
    (re.compile(r"bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)"), _rename(r"bbox_embed.\1.layers.\2.\3")),
]


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DistributedDataParallel left in released files."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def map_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply the key rules. Returns (new state dict, dropped original keys).

    Raises :class:`WrongCheckpointError` listing every original key no rule covers.
    """
    new: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    leftovers: list[str] = []
    for key, tensor in strip_prefix(state_dict).items():
        if any(p.fullmatch(key) for p in _DROP_PATTERNS):
            dropped.append(key)
            continue
        for pattern, fn in _RULES:
            m = pattern.fullmatch(key)
            if m:
                for new_key, value in fn(m, tensor):
                    if new_key in new:
                        raise WrongCheckpointError(f"two original keys map to {new_key} (second: {key})")
                    new[new_key] = value
                break
        else:
            leftovers.append(key)
    if leftovers:
        raise WrongCheckpointError(
            f"{len(leftovers)} original Grounding DINO keys have no mapping: {leftovers[:10]}",
            hint="is this an original groundingdino_*.pth checkpoint? other variants need new mapping rules",
        )
    return new, dropped


def _check_shared_bbox_embed(new: Mapping[str, torch.Tensor], config: GroundingDinoConfig) -> None:
    """With shared box heads every copy must hold the same numbers (else the checkpoint is not what the config says)."""
    if not config.decoder_bbox_embed_share:
        return
    ref = {k[len("bbox_embed.0."):]: v for k, v in new.items() if k.startswith("bbox_embed.0.")}
    for key, value in new.items():
        m = re.fullmatch(r"(?:model\.decoder\.)?bbox_embed\.\d+\.(.+)", key)
        if not m or value.is_meta:  # meta tensors (shape-only checks) have no values to compare
            continue
        if m.group(1) not in ref or not torch.equal(ref[m.group(1)], value):
            raise WrongCheckpointError(
                f"{key} differs from bbox_embed.0 although dec_pred_bbox_embed_share is True",
                hint="set dec_pred_bbox_embed_share=False in the original config",
            )


def convert_original_checkpoint(
    state_dict: Mapping[str, torch.Tensor], original_cfg: Mapping[str, Any]
) -> tuple[GroundingDinoConfig, dict[str, torch.Tensor]]:
    """Original state dict + original config values -> (``GroundingDinoConfig``, transformers state dict).

    Every original key is mapped except the documented drops (``label_enc``, BERT's
    ``position_ids`` and pooler, Swin ``relative_position_index`` buffers); leftovers raise.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]  # type: ignore[assignment]
    config = config_from_original(original_cfg)
    new, _ = map_keys(state_dict)
    _check_shared_bbox_embed(new, config)
    return config, new
