"""Tag2Text caption generation, as the official ``Tag2Text.generate`` (beam search, default args).

Works on a Tag2Text model with the official attribute names (``visual_encoder``, ``tag_encoder``,
``text_decoder``, ``tokenizer``, ``prompt``, ``class_threshold``, ``delete_tag_index``,
``tag_list``) and its ``encode_image`` / ``tag_logits`` methods.

Public API:
    ``generate_captions(model, pixel_values, tag_input=None, ...) -> CaptionOutput``
        images [B, 3, S, S]; ``tag_input`` None = the model's own tags (official default), else one
        tag string per image in the official ``'a | b'`` form (see ``user_tags_to_tag_input``).
    ``captions_from_embeds(model, image_embeds, tag_strings, ...) -> CaptionOutput``
        the text side only, from visual-encoder tokens [B, 1+L, vision_width].
    ``predicted_tag_strings(model, image_embeds)`` the official tag strings for captioning.
    ``user_tags_to_tag_input("tennis,bear cub") -> "tennis | bear cub"`` (official CLI rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .beam_search import beam_search
from .tokenizer import decode_caption

#: official tag-encoder input length (tokens, [ENC] ... [SEP] [PAD]...)
TAG_MAX_LENGTH = 40


@dataclass
class CaptionOutput:
    """Captions, the full generated ids [B, T] (prompt included, right-padded) and the tags used."""

    captions: list[str]
    ids: Tensor
    tags: list[str]


def user_tags_to_tag_input(text: str) -> str:
    """Official ``--specified-tags`` handling: commas become the ``' | '`` tag separator."""
    return text.replace(",", " | ")


def predicted_tag_strings(model: Any, image_embeds: Tensor) -> list[str]:
    """Tags the model predicts, as official ``generate(tag_input=None)`` builds them.

    Class c fires iff float32 ``sigmoid(logit) > class_threshold[c]``; ``delete_tag_index`` classes
    are dropped; names in class order joined with ``' | '``.
    """
    logits = model.tag_logits(image_embeds)
    fired = torch.sigmoid(logits) > model.class_threshold.to(logits.device)
    if model.delete_tag_index:
        fired[:, list(model.delete_tag_index)] = False
    return [" | ".join(model.tag_list[i] for i in row.nonzero().flatten().tolist()) for row in fired.cpu()]


def _decoder_step(model: Any, encoder_states: Tensor):
    """Step function for :func:`beam_search`: next-token logits with a self-attention cache."""

    def step(ids: Tensor, cache: Any) -> tuple[Tensor, Any]:
        new = ids if cache is None else ids[:, -1:]
        out = model.text_decoder(new, encoder_hidden_states=encoder_states, past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :], out.past_key_values

    return step


@torch.no_grad()
def captions_from_embeds(
    model: Any,
    image_embeds: Tensor,
    tag_strings: Sequence[str],
    *,
    num_beams: int = 3,
    max_length: int = 50,
    min_length: int = 10,
    repetition_penalty: float = 1.0,
) -> CaptionOutput:
    """Captions for visual-encoder tokens [B, 1+L, W], guided by one tag string per image."""
    tok = model.tokenizer
    if tok is None:
        raise ConfigError("this Tag2Text model has no tokenizer", hint="build it through the zoo loader")
    batch = image_embeds.shape[0]
    if len(tag_strings) != batch:
        raise ConfigError(f"{len(tag_strings)} tag strings for {batch} images", hint="pass one tag string per image")
    device = image_embeds.device
    # each image's tags and tokens repeated num_beams times, adjacent (the beam row layout)
    repeated = [t for t in tag_strings for _ in range(num_beams)]
    enc = tok(repeated, padding="max_length", truncation=True, max_length=TAG_MAX_LENGTH, return_tensors="pt")
    enc_ids = enc.input_ids.to(device)
    enc_ids[:, 0] = tok.enc_token_id
    tag_states = model.tag_encoder(
        enc_ids,
        attention_mask=enc.attention_mask.to(device),
        encoder_hidden_states=image_embeds.repeat_interleave(num_beams, dim=0),
    ).last_hidden_state

    prompt_ids = tok([model.prompt] * batch, return_tensors="pt").input_ids.to(device)
    prompt_ids[:, 0] = tok.bos_token_id
    prompt_ids = prompt_ids[:, :-1]  # drop [SEP]

    ids = beam_search(
        _decoder_step(model, tag_states),
        prompt_ids,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
        num_beams=num_beams,
        max_length=max_length,
        min_length=min_length,
        repetition_penalty=repetition_penalty,
        reorder_cache=model.text_decoder.reorder_cache,
    )
    captions = [decode_caption(tok, row.tolist(), model.prompt) for row in ids]
    return CaptionOutput(captions, ids, list(tag_strings))


@torch.no_grad()
def generate_captions(
    model: Any,
    pixel_values: Tensor,
    tag_input: Sequence[str] | None = None,
    *,
    num_beams: int = 3,
    max_length: int = 50,
    min_length: int = 10,
    repetition_penalty: float = 1.0,
) -> CaptionOutput:
    """Official Tag2Text captioning of a batch of preprocessed images [B, 3, S, S]."""
    image_embeds = model.encode_image(pixel_values)
    tags = predicted_tag_strings(model, image_embeds) if tag_input is None else list(tag_input)
    return captions_from_embeds(
        model,
        image_embeds,
        tags,
        num_beams=num_beams,
        max_length=max_length,
        min_length=min_length,
        repetition_penalty=repetition_penalty,
    )
