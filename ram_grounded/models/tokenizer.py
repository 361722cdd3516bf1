"""The RAM-family tokenizer: bert-base-uncased WordPiece plus the official ``[DEC]`` / ``[ENC]``.

Mirrors the official ``init_tokenizer()``: a slow ``BertTokenizer`` (do_lower_case=True), then
``[DEC]`` added as bos token (id ``len(vocab)``) and ``[ENC]`` as additional special token
(id ``len(vocab) + 1``); ``tokenizer.enc_token_id`` is set as in the official code.

Public API:
    ``load_tokenizer(card, location, device=None)``  zoo loader; ``location`` = dir or vocab.txt path
    ``tokenizer_from_vocab(path)``                   same from a vocab.txt path or its directory
    ``build_tiny_tokenizer(card=None, seed=0)``      small in-memory vocab covering any text
    ``decode_caption(tokenizer, ids)``               official caption text of one id sequence
"""

from __future__ import annotations

import logging
import string
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, MissingWeightsError

logger = logging.getLogger(__name__)

SPECIAL_FIRST = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# words of the caption prompt and common caption glue, so tiny captions read like text
_CAPTION_WORDS = "the of picture in on with and is are at an to near".split()


def _slow_bert_tokenizer_class() -> type:
    """The slow (pure Python) BertTokenizer, which the official code used (transformers 4.x name)."""
    try:  # transformers >= 5 renamed the slow class
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        return BertTokenizerLegacy
    except ImportError:
        from transformers import BertTokenizer

        return BertTokenizer


def tokenizer_from_vocab(path: str | Path) -> Any:
    """Official RAM tokenizer from a ``vocab.txt`` file (or a directory that holds one)."""
    p = Path(path)
    vocab = p / "vocab.txt" if p.is_dir() else p
    if not vocab.is_file():
        raise MissingWeightsError(
            f"no vocab.txt at {path}", hint="point to the bert-base-uncased folder or its vocab.txt"
        )
    tok = _slow_bert_tokenizer_class()(vocab_file=str(vocab), do_lower_case=True)
    n = len(tok)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    if (tok.bos_token_id, tok.enc_token_id) != (n, n + 1):
        raise ConfigError(
            f"{vocab} already contains [DEC]/[ENC]; ids would differ from the official tokenizer",
            hint="use the plain bert-base-uncased vocab.txt",
        )
    return tok


def load_tokenizer(card: Any, location: str | Path, device: Any = None) -> Any:
    """Zoo loader signature: ``location`` is a local directory or file holding ``vocab.txt``."""
    del card, device  # a tokenizer has no device; the card adds nothing beyond the location
    return tokenizer_from_vocab(location)


def _tag_words() -> list[str]:
    """Lower-cased words of the shipped tag lists (so tiny models can spell every tag)."""
    words: set[str] = set()
    root = resources.files("ram_grounded") / "data" / "recognize_anything"
    for name in ("ram_tag_list.txt", "tag2text_ori_tag_list.txt"):
        try:
            text = (root / name).read_text(encoding="utf-8")
        except (FileNotFoundError, OSError):
            logger.warning("tag list %s not shipped; tiny vocab without tag words", name)
            continue
        for line in text.splitlines():
            words.update(w for w in line.lower().split() if w.isascii() and w.isalpha())
    return sorted(words)


def tiny_vocab(seed: int = 0, max_words: int = 2000) -> list[str]:
    """Vocabulary list: specials, punctuation, digits, letters, ``##`` pieces, tag words.

    Single characters and ``##`` characters make any lower-case ASCII text tokenizable; ``seed``
    picks which tag words are kept when there are more than ``max_words``.
    """
    import random

    chars = list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    vocab = SPECIAL_FIRST + chars + ["##" + c for c in string.digits + string.ascii_lowercase]
    vocab += ["##s", "##es", "##ing", "##ed", "##er"]
    vocab += _CAPTION_WORDS
    words = _tag_words()
    if len(words) > max_words:
        words = sorted(random.Random(seed).sample(words, max_words))
    seen = set(vocab)
    vocab += [w for w in words if w not in seen]
    return vocab


def build_tiny_tokenizer(card: Any = None, seed: int = 0) -> Any:
    """A small RAM-style tokenizer (temp vocab file), for tiny random-weight models."""
    del card
    vocab = tiny_vocab(seed)
    with tempfile.TemporaryDirectory(prefix="ram_grounded_vocab_") as d:
        path = Path(d) / "vocab.txt"
        path.write_text("\n".join(vocab), encoding="utf-8")
        return tokenizer_from_vocab(path)


def decode_caption(tokenizer: Any, ids: Sequence[int], prompt: str = "a picture of ") -> str:
    """Official caption text: decode without special tokens, clean up spaces, cut the prompt."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return text[len(prompt) :]
