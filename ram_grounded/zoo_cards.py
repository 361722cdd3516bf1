"""The built-in model cards (facts from the publishers; see ../shared/data/weights.md).

Revisions are pinned where the publisher's commit is known; transformers-format repos
without a recorded commit follow ``main`` (their files are checked by the hub's own hashes).
"""

from __future__ import annotations

from .zoo import ModelCard, register

_RAM = "ram_grounded.models.ram_family"
_GD = "ram_grounded.models.groundingdino"
_SAM = "ram_grounded.models.sam"
_HF = "ram_grounded.models.hf"

# ---- Recognize Anything family (Apache-2.0)
for _name, _arch, _repo, _rev, _file, _sha, _size, _desc in [
    ("ram", "ram", "xinyu1205/recognize_anything_model", "a4f945fe0720892020c28309624df3bd1f3ad3dc",
     "ram_swin_large_14m.pth", "15c729c793af28b9d107c69f85836a1356d76ea830d4714699fb62e55fcc08ed", 5625634877,
     "RAM, Swin-L 384, 4585 tags (English + Chinese)"),
    ("ram_plus", "ram_plus", "xinyu1205/recognize-anything-plus-model", "6afd703f04b23e1c18d4c7d9882c4f5f954848f8",
     "ram_plus_swin_large_14m.pth", "497c178836ba66698ca226c7895317e6e800034be986452dbd2593298d50e87d", 3010210801,
     "RAM++, Swin-L 384, 4585 tags + open-set via LLM tag descriptions"),
    ("tag2text", "tag2text", "xinyu1205/recognize_anything_model", "2dd9b40d587d367e99bd2a61215f194e1b666336",
     "tag2text_swin_14m.pth", "4ce96f0ce98f940a6680d567f66a38ccc9ca8c4e638e5f5c5c2e881a0e3502ac", 4478705095,
     "Tag2Text, Swin-B 384, 3429 tags + tag-guided captions"),
]:
    register(ModelCard(_name, _arch, f"{_RAM}:load_pretrained", f"{_RAM}:build_tiny", "Apache-2.0", _desc,
                       repo=_repo, revision=_rev, filename=_file, sha256=_sha, size=_size))

register(ModelCard("bert-base-uncased", "tokenizer", "ram_grounded.models.tokenizer:load_tokenizer",
                   "ram_grounded.models.tokenizer:build_tiny_tokenizer", "Apache-2.0",
                   "BERT WordPiece tokenizer of the RAM family (vocab only, no weights)",
                   repo="google-bert/bert-base-uncased", filename="vocab.txt"))

# ---- Grounding DINO (Apache-2.0)
register(ModelCard("groundingdino_swint_ogc", "groundingdino", f"{_GD}:load_original", f"{_GD}:build_tiny",
                   "Apache-2.0", "Grounding DINO Swin-T OGC, original release (converted on load)",
                   repo="ShilongLiu/GroundingDINO", filename="groundingdino_swint_ogc.pth",
                   sha256="3b3ca2563c77c69f651d7bd133e97139c186df06231157a64c507099c52bc799", size=693997677,
                   extra={"variant": "swint_ogc"}))
register(ModelCard("groundingdino_swinb_cogcoor", "groundingdino", f"{_GD}:load_original", f"{_GD}:build_tiny",
                   "Apache-2.0", "Grounding DINO Swin-B COGCOOR, original release (converted on load)",
                   repo="ShilongLiu/GroundingDINO", filename="groundingdino_swinb_cogcoor.pth",
                   sha256="46270f7a822e6906b655b729c90613e48929d0f2bb8b9b76fd10a856f3ac6ab7", size=938057991,
                   extra={"variant": "swinb_cogcoor"}))
for _name, _repo, _desc in [
    ("grounding-dino-tiny", "IDEA-Research/grounding-dino-tiny", "Grounding DINO Swin-T, transformers format"),
    ("grounding-dino-base", "IDEA-Research/grounding-dino-base", "Grounding DINO Swin-B, transformers format"),
]:
    register(ModelCard(_name, "groundingdino", f"{_GD}:load_hub", f"{_GD}:build_tiny", "Apache-2.0", _desc,
                       repo=_repo))

# ---- Segment Anything (Apache-2.0); Meta publishes no checksums, these are the mirrors' agreed hashes
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
for _variant, _file, _sha, _size in [
    ("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2564550879),
    ("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1249524607),
    ("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375042383),
]:
    register(ModelCard(f"sam_{_variant}", "sam", f"{_SAM}:load_official", f"{_SAM}:build_tiny", "Apache-2.0",
                       f"SAM {_variant.replace('_', '-').upper()}, official segment-anything release",
                       url=_SAM_URL + _file, sha256=_sha, size=_size, extra={"variant": _variant}))
for _size_name in ("base", "large", "huge"):
    register(ModelCard(f"sam-vit-{_size_name}", "sam-hf", f"{_SAM}:load_hub", f"{_SAM}:build_tiny", "Apache-2.0",
                       f"SAM ViT-{_size_name}, transformers SamModel", repo=f"facebook/sam-vit-{_size_name}"))
    register(ModelCard(f"sam-hq-vit-{_size_name}", "sam-hq-hf", f"{_SAM}:load_hub", f"{_SAM}:build_tiny",
                       "Apache-2.0", f"SAM-HQ ViT-{_size_name}, transformers SamHQModel",
                       repo=f"syscv-community/sam-hq-vit-{_size_name}"))

# ---- vision-language stages (transformers format)
register(ModelCard("blip-itm-base-coco", "hf-blip-itm", f"{_HF}:load_hub", f"{_HF}:build_tiny", "BSD-3-Clause",
                   "BLIP image-text matching (ITM + ITC heads)", repo="Salesforce/blip-itm-base-coco"))
register(ModelCard("git-base-coco", "hf-git", f"{_HF}:load_hub", f"{_HF}:build_tiny", "MIT",
                   "GIT base captioner", repo="microsoft/git-base-coco"))
register(ModelCard("git-base-vqav2", "hf-git", f"{_HF}:load_hub", f"{_HF}:build_tiny", "MIT",
                   "GIT base visual question answering", repo="microsoft/git-base-vqav2"))
register(ModelCard("clip-vit-base-patch16", "hf-clip", f"{_HF}:load_hub", f"{_HF}:build_tiny", "MIT",
                   "CLIP ViT-B/16 (zero-shot categories; RAM open-set text tower)",
                   repo="openai/clip-vit-base-patch16"))
