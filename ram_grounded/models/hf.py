"""Transformers-format vision-language models (BLIP ITM, GIT, CLIP) as small bundles.

A zoo card of arch ``hf-blip-itm`` / ``hf-git`` / ``hf-clip`` loads through :func:`load_hub`
(``from_pretrained`` of the published repo at the card's revision) or, with
``RAM_GROUNDED_ZOO=tiny``, through :func:`build_tiny`: the same transformers classes built
from tiny configs with seeded random weights and a processor made in memory (a generated
WordPiece or byte-level BPE vocabulary, no hub access). Either way the stage gets an
:class:`HfBundle` (model in eval mode + processor), so stage code never branches on tiny.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingWeightsError

logger = logging.getLogger(__name__)

#: Tiny model geometry: 32x32 images in 8x8 patches, width 32, two layers.
TINY_IMAGE = 32
TINY_PATCH = 8
TINY_WIDTH = 32
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_MAX_TEXT = 64


@dataclass(eq=False)
class HfBundle:
    """A transformers model (eval mode) with its processor; ``name`` is the zoo name or path."""

    model: Any
    processor: Any
    name: str
    arch: str
    tiny: bool = False

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def to(self, device: Any) -> HfBundle:
        """Move the model to ``device`` (in place; returns self)."""
        self.model.to(device)
        return self


def _model_class(arch: str) -> Any:
    import transformers

    classes = {
        "hf-blip-itm": "BlipForImageTextRetrieval",
        "hf-git": "GitForCausalLM",
        "hf-clip": "CLIPModel",
    }
    if arch not in classes:
        raise ConfigError(f"no transformers loader for model kind {arch!r}",
                          hint=f"use one of {', '.join(classes)}")
    return getattr(transformers, classes[arch])


def load_hub(card: Any, location: str | Path, device: Any) -> HfBundle:
    """``from_pretrained`` model + processor from a hub repo id (at ``card.revision``) or a local folder."""
    from transformers import AutoProcessor

    cls = _model_class(card.arch)
    local = Path(str(location)).expanduser()
    kwargs: dict[str, Any] = {} if local.is_dir() else {"revision": card.revision}
    source = str(local) if local.is_dir() else str(location)
    try:
        model = cls.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, **kwargs)
    except OSError as exc:  # transformers reports a missing/offline repo as OSError
        raise MissingWeightsError(
            f"{card.name}: could not load {source} ({str(exc).splitlines()[0]})",
            hint=f"run `huggingface-cli download {card.repo}` on a machine with network and copy the "
                 f"Hugging Face cache, or pass a local folder saved with save_pretrained as the model",
        ) from exc
    model.eval().to(device)
    return HfBundle(model=model, processor=processor, name=card.name, arch=card.arch)


# ------------------------------------------------------------------ tiny models
def tiny_wordpiece_vocab() -> dict[str, int]:
    """BERT-style special tokens, single characters and ``##`` continuations, a few words.

    Every lowercase ASCII word tokenizes into known pieces, so distinct class names get
    distinct token ids (an all-[UNK] vocabulary would make every text the same).
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["a", "an", "the", "of", "photo", "picture", "what", "is", "in", "on", "with", "dog", "cat"]
    tokens = specials + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits] + words
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def _tiny_bert_tokenizer() -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=tiny_wordpiece_vocab(), model_max_length=TINY_MAX_TEXT)


def _tiny_clip_tokenizer() -> Any:
    """Byte-level BPE with the 256 byte symbols (alone and word-final) and no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_MAX_TEXT)


def _tiny_vision(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH, num_hidden_layers=TINY_LAYERS,
                num_attention_heads=TINY_HEADS, image_size=TINY_IMAGE, patch_size=TINY_PATCH, **extra)


def _tiny_text(vocab_size: int, **extra: Any) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH,
                num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
                max_position_embeddings=TINY_MAX_TEXT, **extra)


def _tiny_blip() -> tuple[Any, Any]:
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    tok = _tiny_bert_tokenizer()
    config = BlipConfig(
        text_config=_tiny_text(len(tok), encoder_hidden_size=TINY_WIDTH, bos_token_id=tok.cls_token_id,
                               eos_token_id=tok.sep_token_id, sep_token_id=tok.sep_token_id,
                               pad_token_id=tok.pad_token_id),
        # BLIP's vision default init range (1e-10) would make every random image embedding equal
        vision_config=_tiny_vision(initializer_range=0.02),
        projection_dim=16, image_text_hidden_size=16,
    )
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return BlipForImageTextRetrieval(config), BlipProcessor(image_processor=image_processor, tokenizer=tok)


def _tiny_git() -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tok = _tiny_bert_tokenizer()
    text = _tiny_text(len(tok))
    config = GitConfig(vision_config=_tiny_vision(), bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                       pad_token_id=tok.pad_token_id, **text)
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE},
                                         crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return GitForCausalLM(config), GitProcessor(image_processor=image_processor, tokenizer=tok)


def _tiny_clip() -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=_tiny_text(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id),
        vision_config=_tiny_vision(),
        projection_dim=16,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE},
                                         crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tok)


_TINY_BUILDERS = {"hf-blip-itm": _tiny_blip, "hf-git": _tiny_git, "hf-clip": _tiny_clip}


def build_tiny(card: Any, seed: int = 0) -> HfBundle:
    """A seeded tiny random-weight bundle with the card's model class, on CPU, offline."""
    import torch

    if card.arch not in _TINY_BUILDERS:
        raise ConfigError(f"no tiny builder for model kind {card.arch!r}",
                          hint=f"use one of {', '.join(_TINY_BUILDERS)}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model, processor = _TINY_BUILDERS[card.arch]()
    finally:  # building must not disturb the caller's random stream
        torch.random.set_rng_state(generator_state)
    model.eval()
    return HfBundle(model=model, processor=processor, name=card.name, arch=card.arch, tiny=True)
