"""The BLIP "med" BERT used by RAM, RAM++ and Tag2Text, with the official state_dict key names.

Public API (all modules are plain ``nn.Module``; key names equal the official ``ram/models/bert.py``):

``BertConfig.from_dict(d, **overrides)`` / ``BertConfig.from_json_file(path, **overrides)``
    Sizes from a med/q2l config dict (unknown keys are ignored). Fields: ``vocab_size``,
    ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
    ``max_position_embeddings``, ``layer_norm_eps``, ``encoder_width``, ``add_cross_attention``,
    ``pad_token_id``, ``hidden_act``. Tag2Text/RAM override ``encoder_width=vision_width`` for the
    tag encoder and the tagging head, exactly as the official constructors do.

``BertModel(config, add_pooling_layer=False, tagging=False)``
    ``tagging=True`` builds the RAM/Tag2Text ``tagging_head``: no ``embeddings`` and no per-layer
    ``attention`` (self-attention) -- only ``encoder.layer.{i}.{crossattention,intermediate,output}``.
    ``forward(input_ids=None, attention_mask=None, encoder_embeds=None, encoder_hidden_states=None,
    encoder_attention_mask=None, past_key_values=None, use_cache=False, is_decoder=False,
    mode="multimodal") -> BertOutput(last_hidden_state, past_key_values)``.
    ``mode``: ``"multimodal"`` (self-attn + cross-attn), ``"text"`` (self-attn only), ``"tagging"``
    (cross-attn only; pass the queries as ``encoder_embeds``, e.g. ``tagging_head(encoder_embeds=q,
    encoder_hidden_states=image_embeds, mode="tagging").last_hidden_state``).

``BertLMHeadModel(config)``: ``bert`` + ``cls.predictions.{transform,decoder,bias}``; the decoder
    weight is tied to ``bert.embeddings.word_embeddings.weight`` and ``decoder.bias`` is
    ``predictions.bias`` (both names appear in ``state_dict()``, as in the official checkpoints).
    ``forward(input_ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
    past_key_values=None, use_cache=False, mode="multimodal") -> LMOutput(logits, past_key_values)``
    (always causal). ``reorder_cache(past, beam_idx)`` selects cache rows for beam search.

``tie_tagging_head(tag_encoder, tagging_head)``: makes ``tag_encoder.encoder.layer[i]``'s
    cross-attention/intermediate/output parameters *be* the tagging head's (official
    ``tie_encoder_decoder_weights(tag_encoder, tagging_head, '', ' ')``); head counts stay per module.

Masks follow the official code: self-attention masks are additive ``(1 - m) * -10000.0`` (causal for
the decoder); cross-attention masks are ``(1 - m) * finfo.min``; ``None`` means attend everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

KV = tuple[Tensor, Tensor]


@dataclass
class BertConfig:
    """Sizes of one BERT (the official med_config.json / q2l_config.json fields we use)."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    encoder_width: int = 768
    add_cross_attention: bool = True
    pad_token_id: int = 0
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> "BertConfig":
        """Build from a config dict, ignoring keys this implementation does not need."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in {**d, **overrides}.items() if k in names}
        cfg = cls(**kw)
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(
                f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                f"{cfg.num_attention_heads}",
                hint="fix the med/q2l config",
            )
        if cfg.hidden_act not in ("gelu", "relu"):
            raise ConfigError(f"unsupported hidden_act {cfg.hidden_act!r}", hint="use 'gelu'")
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> "BertConfig":
        """Build from a JSON file such as the official ``configs/med_config.json``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **overrides)


def _act(name: str, x: Tensor) -> Tensor:
    # transformers' "gelu" is the exact erf form
    return F.gelu(x) if name == "gelu" else F.relu(x)


@dataclass
class BertOutput:
    """Output of :class:`BertModel`: final hidden states and (decoder) self-attention cache."""

    last_hidden_state: Tensor
    past_key_values: tuple[KV, ...] | None = None


@dataclass
class LMOutput:
    """Output of :class:`BertLMHeadModel`: vocabulary logits [B, T, V] and the cache."""

    logits: Tensor
    past_key_values: tuple[KV, ...] | None = None


class BertEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (no token-type embeddings)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # persistent: the official checkpoints carry it
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0))

    def forward(self, input_ids: Tensor, past_length: int = 0) -> Tensor:
        seq = input_ids.shape[1]
        pos = self.position_ids[:, past_length : past_length + seq]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class BertSelfAttention(nn.Module):
    """Multi-head attention projections; keys/values come from ``encoder_width`` when cross."""

    def __init__(self, config: BertConfig, is_cross_attention: bool) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        kv_width = config.encoder_width if is_cross_attention else config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None = None,
        kv_states: Tensor | None = None,
        past: KV | None = None,
    ) -> tuple[Tensor, KV]:
        """Attend from ``hidden_states`` to ``kv_states`` (cross) or to itself plus ``past``."""
        q = self._split(self.query(hidden_states))
        src = hidden_states if kv_states is None else kv_states
        k = self._split(self.key(src))
        v = self._split(self.value(src))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        if mask is not None:
            scores = scores + mask
        ctx = torch.matmul(scores.softmax(dim=-1), v)
        b, _, t, _ = ctx.shape
        return ctx.permute(0, 2, 1, 3).reshape(b, t, self.num_heads * self.head_size), (k, v)


class _DenseLayerNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BertSelfOutput and BertOutput."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """Attention block: ``self`` (projections) + ``output`` (dense, residual, LayerNorm)."""

    def __init__(self, config: BertConfig, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, is_cross_attention)
        self.output = _DenseLayerNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, kv_states: Tensor | None = None, past: KV | None = None
    ) -> tuple[Tensor, KV]:
        ctx, present = self.self(x, mask, kv_states, past)
        return self.output(ctx, x), present


class BertIntermediate(nn.Module):
    """FFN expansion with the config activation (GELU, erf form)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        return _act(self.act, self.dense(x))


class BertLayer(nn.Module):
    """Post-LN layer: self-attention (absent when ``tagging``), cross-attention, FFN."""

    def __init__(self, config: BertConfig, tagging: bool = False) -> None:
        super().__init__()
        if not tagging:
            self.attention = BertAttention(config)
        if config.add_cross_attention or tagging:
            self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = _DenseLayerNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(
        self,
        x: Tensor,
        self_mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        cross_mask: Tensor | None,
        past: KV | None,
        mode: str,
    ) -> tuple[Tensor, KV | None]:
        present: KV | None = None
        if mode != "tagging":
            x, present = self.attention(x, self_mask, past=past)
        if mode in ("tagging", "multimodal"):
            if encoder_hidden_states is None:
                raise ConfigError(f"mode {mode!r} needs encoder_hidden_states", hint="pass the image/tag embeddings")
            x, _ = self.crossattention(x, cross_mask, kv_states=encoder_hidden_states)
        return self.output(self.intermediate(x), x), present


class BertEncoder(nn.Module):
    """Stack of :class:`BertLayer` under the official name ``layer``."""

    def __init__(self, config: BertConfig, tagging: bool = False) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config, tagging) for _ in range(config.num_hidden_layers)])


class BertPooler(nn.Module):
    """tanh(dense(first token)); only built with ``add_pooling_layer=True``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


def _self_mask(mask: Tensor, seq_len: int, is_decoder: bool, dtype: torch.dtype) -> Tensor:
    """Official ``get_extended_attention_mask``: [B, 1, T|1, S] additive, -10000 where masked."""
    if mask.dim() == 3:
        ext = mask[:, None, :, :]
    elif is_decoder:
        b, total = mask.shape
        ids = torch.arange(seq_len, device=mask.device)
        causal = (ids[None, None, :] <= ids[None, :, None]).expand(b, seq_len, seq_len).to(mask.dtype)
        if total > seq_len:  # cached prefix: every query sees it
            prefix = torch.ones(b, seq_len, total - seq_len, device=mask.device, dtype=mask.dtype)
            causal = torch.cat([prefix, causal], dim=-1)
        ext = causal[:, None, :, :] * mask[:, None, None, :]
    else:
        ext = mask[:, None, None, :]
    return (1.0 - ext.to(dtype)) * -10000.0


def _cross_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """transformers' ``invert_attention_mask``; None (all ones) adds exactly zero, so it is skipped."""
    if mask is None:
        return None
    ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    return (1.0 - ext.to(dtype)) * torch.finfo(dtype).min


class BertModel(nn.Module):
    """BERT encoder/decoder; ``tagging=True`` gives the embedding-free, self-attention-free tagging head."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = False, tagging: bool = False) -> None:
        super().__init__()
        self.config = config
        self.tagging = tagging
        if not tagging:
            self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, tagging)
        if add_pooling_layer:
            self.pooler = BertPooler(config)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        encoder_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        past_key_values: tuple[KV, ...] | None = None,
        use_cache: bool = False,
        is_decoder: bool = False,
        mode: str = "multimodal",
    ) -> BertOutput:
        """Run the stack on token ids (through the embeddings) or on ready ``encoder_embeds``."""
        if mode not in ("multimodal", "text", "tagging"):
            raise ConfigError(f"unknown BERT mode {mode!r}", hint="use 'multimodal', 'text' or 'tagging'")
        if self.tagging and mode != "tagging":
            raise ConfigError("a tagging head only runs in mode='tagging'", hint="pass mode='tagging'")
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if encoder_embeds is not None:
            x = encoder_embeds
        elif input_ids is not None:
            x = self.embeddings(input_ids, past_len)
        else:
            raise ConfigError("BertModel needs input_ids or encoder_embeds", hint="pass one of them")
        b, t = x.shape[:2]
        self_mask: Tensor | None = None
        if mode != "tagging":
            if attention_mask is None:
                attention_mask = torch.ones(b, t + past_len, device=x.device)
            self_mask = _self_mask(attention_mask, t, is_decoder, x.dtype)
        cross_mask = _cross_mask(encoder_attention_mask, x.dtype)
        presents: list[KV] = []
        for i, layer in enumerate(self.encoder.layer):
            past = past_key_values[i] if past_key_values is not None else None
            x, present = layer(x, self_mask, encoder_hidden_states, cross_mask, past, mode)
            if present is not None:
                presents.append(present)
        use_cache = use_cache and is_decoder and mode != "tagging"
        return BertOutput(x, tuple(presents) if use_cache else None)


class BertPredictionHeadTransform(nn.Module):
    """dense -> activation -> LayerNorm before the vocabulary projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(_act(self.act, self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """``transform`` + ``decoder`` (tied to word embeddings by the owner) + output-only ``bias``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # official: the same parameter under two names

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    """Container named ``cls`` in the official model, holding ``predictions``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)


class BertLMHeadModel(nn.Module):
    """Causal text decoder (Tag2Text ``text_decoder``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        past_key_values: tuple[KV, ...] | None = None,
        use_cache: bool = False,
        mode: str = "multimodal",
    ) -> LMOutput:
        """Logits for every position of ``input_ids`` (only the new ones when a cache is given)."""
        out = self.bert(
            input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            is_decoder=True,
            mode=mode,
        )
        return LMOutput(self.cls(out.last_hidden_state), out.past_key_values)

    @staticmethod
    def reorder_cache(past: tuple[KV, ...], beam_idx: Tensor) -> tuple[KV, ...]:
        """Keep the cache rows of the selected beams (official ``_reorder_cache``)."""
        return tuple((k.index_select(0, beam_idx), v.index_select(0, beam_idx)) for k, v in past)


def tie_tagging_head(tag_encoder: BertModel, tagging_head: BertModel) -> None:
    """Share the tagging head's layer parameters with the lowest tag-encoder layers (official tie)."""
    if len(tagging_head.encoder.layer) > len(tag_encoder.encoder.layer):
        raise ConfigError(
            "the tagging head has more layers than the tag encoder",
            hint="q2l num_hidden_layers must not exceed med num_hidden_layers",
        )
    for src, dst in zip(tagging_head.encoder.layer, tag_encoder.encoder.layer):
        for name in ("crossattention", "intermediate", "output"):
            src_mod, dst_mod = getattr(src, name), getattr(dst, name)
            src_named = dict(src_mod.named_modules())
            for mod_name, mod in dst_mod.named_modules():
                if isinstance(mod, (nn.Linear, nn.LayerNorm)):
                    other = src_named[mod_name]
                    if other.weight.shape != mod.weight.shape:
                        raise ConfigError(
                            f"cannot tie {name}.{mod_name}: shapes {tuple(other.weight.shape)} vs "
                            f"{tuple(mod.weight.shape)}",
                            hint="q2l and med configs need equal hidden/intermediate sizes",
                        )
                    mod.weight = other.weight
                    mod.bias = other.bias
