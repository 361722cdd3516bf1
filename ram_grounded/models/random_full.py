"""Released-size models with random weights, for ``ram-grounded bench`` (no download).

:func:`build_random_full(card, seed)` builds every zoo card at its released configuration
(same layers, widths, image sizes and vocabularies, hence the same compute and memory as
the published weights) from the public constructors the model modules already use:
``ram_family.released_config``, the original Grounding DINO configs, segment-anything's
builders, transformers' default configs. Outputs are meaningless; only speed and memory
are. Tokenizers are built offline from a word-level vocabulary of bert-base-uncased's size
and special-token ids, so a prompt tokenizes into about as many tokens as with the real one.
"""

from __future__ import annotations

import logging
import string
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: bert-base-uncased's vocabulary size and the ids transformers / the RAM code rely on
BERT_VOCAB_SIZE = 30522
BERT_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
#: transformers SAM vision sizes of the released ViT-B/L/H
SAM_VISION = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "huge": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
}


@lru_cache(maxsize=1)
def bert_sized_vocab() -> tuple[str, ...]:
    """A WordPiece vocabulary with bert-base-uncased's size and special ids: the tag words
    (one token each, as most are in the real vocabulary), characters, ``##`` pieces, [unused]."""
    from .tokenizer import _tag_words  # the shipped tag lists' words

    slots: list[str | None] = [None] * BERT_VOCAB_SIZE
    for token, idx in BERT_FIXED_IDS.items():
        slots[idx] = token
    pieces = [c for c in string.punctuation + string.digits + string.ascii_lowercase if c not in ".?"]
    pieces += ["##" + c for c in string.digits + string.ascii_lowercase] + ["##s", "##es", "##ing", "##ed"]
    pieces += "a an the of picture in on with and is are at to near what photo".split() + _tag_words()
    free = (i for i in range(104, BERT_VOCAB_SIZE) if slots[i] is None)
    seen = set(BERT_FIXED_IDS)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            slots[next(free)] = piece
    return tuple(tok if tok is not None else f"[unused{i}]" for i, tok in enumerate(slots))


def bert_sized_tokenizer() -> Any:
    """Offline ``BertTokenizer`` over :func:`bert_sized_vocab` (Grounding DINO, BLIP, GIT)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={t: i for i, t in enumerate(bert_sized_vocab())}, do_lower_case=True)


def ram_tokenizer() -> Any:
    """The RAM-family tokenizer (``[DEC]`` / ``[ENC]`` added) over :func:`bert_sized_vocab`."""
    from .tokenizer import tokenizer_from_vocab

    with tempfile.TemporaryDirectory(prefix="ram_grounded_vocab_") as d:
        path = Path(d) / "vocab.txt"
        path.write_text("\n".join(bert_sized_vocab()), encoding="utf-8")
        return tokenizer_from_vocab(path)


# ------------------------------------------------------------------ per family
def _ram(card: Any) -> torch.nn.Module:
    from .ram import build_model
    from .ram_family import released_config

    image_size = int((getattr(card, "extra", None) or {}).get("image_size", 384))
    model = build_model(released_config(card.arch, image_size))
    if card.arch == "tag2text":
        model.tokenizer = ram_tokenizer()
    return model.eval()


def _groundingdino(card: Any) -> Any:
    from transformers import GroundingDinoForObjectDetection

    from .groundingdino import _bundle, original_image_processor
    from .groundingdino_convert import ORIGINAL_CONFIGS, config_from_original

    extra = getattr(card, "extra", None) or {}
    variant = extra.get("variant") or ("swinb_cogcoor" if "base" in card.name or "swinb" in card.name else "swint_ogc")
    config = config_from_original({**ORIGINAL_CONFIGS[variant], **extra.get("original_config", {})})
    model = GroundingDinoForObjectDetection(config)
    # the hub models use the original transform (shorter side 800, longer at most 1333)
    return _bundle(model, bert_sized_tokenizer(), original_image_processor(), f"random:{card.name}", "cpu")


def _sam_official(card: Any) -> Any:
    from .sam import OfficialSamPredictor, build_official_sam

    variant = (getattr(card, "extra", None) or {}).get("variant") or card.name.removeprefix("sam_")
    return OfficialSamPredictor(build_official_sam(variant), model_id=f"random:{card.name}").eval()


def _sam_hf(card: Any) -> Any:
    from transformers import SamConfig, SamHQConfig, SamHQModel, SamImageProcessor, SamModel

    from .sam import HFSamPredictor

    size = card.name.rsplit("-", 1)[-1]
    if size not in SAM_VISION:
        raise ConfigError(f"no released SAM size in {card.name!r}", hint="use sam-vit-base|large|huge")
    vision = dict(SAM_VISION[size])
    if card.arch == "sam-hq-hf":
        model = SamHQModel(SamHQConfig(vision_config=vision, mask_decoder_config={"vit_dim": vision["hidden_size"]}))
    else:
        model = SamModel(SamConfig(vision_config=vision))
    return HFSamPredictor(model.eval(), SamImageProcessor(), model_id=f"random:{card.name}")


def _hf(card: Any) -> Any:
    import transformers as tf

    from .hf import HfBundle, _tiny_clip_tokenizer

    if card.arch == "hf-blip-itm":
        tok = bert_sized_tokenizer()
        model = tf.BlipForImageTextRetrieval(tf.BlipConfig())  # defaults = BLIP base, 384 px
        proc = tf.BlipProcessor(image_processor=tf.BlipImageProcessor(size={"height": 384, "width": 384}),
                                tokenizer=tok)
    elif card.arch == "hf-git":
        tok = bert_sized_tokenizer()
        model = tf.GitForCausalLM(tf.GitConfig(bos_token_id=101, eos_token_id=102, pad_token_id=0))  # GIT base
        proc = tf.GitProcessor(image_processor=tf.CLIPImageProcessor(), tokenizer=tok)
    elif card.arch == "hf-clip":
        model = tf.CLIPModel(tf.CLIPConfig(vision_config={"patch_size": 16}))  # ViT-B/16
        # byte-level tokens without merges: longer texts than the real BPE, the text tower is cheap
        proc = tf.CLIPProcessor(image_processor=tf.CLIPImageProcessor(), tokenizer=_tiny_clip_tokenizer())
    else:
        raise ConfigError(f"no released-size builder for {card.arch!r}", hint="use a known zoo model")
    return HfBundle(model=model.eval(), processor=proc, name=card.name, arch=card.arch)


_BUILDERS = {
    "ram": _ram, "ram_plus": _ram, "tag2text": _ram,
    "tokenizer": lambda card: ram_tokenizer(),
    "groundingdino": _groundingdino,
    "sam": _sam_official, "sam-hf": _sam_hf, "sam-hq-hf": _sam_hf,
    "hf-blip-itm": _hf, "hf-git": _hf, "hf-clip": _hf,
}


def build_random_full(card: Any, seed: int = 0) -> Any:
    """``card``'s model at its released size with seeded random weights (CPU, eval mode)."""
    builder = _BUILDERS.get(card.arch)
    if builder is None:
        raise ConfigError(f"no released-size random builder for model kind {card.arch!r}",
                          hint=f"known kinds: {', '.join(sorted(_BUILDERS))}")
    logger.info("building %s at its released size with random weights", card.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(card)
