"""Model code: our own RAM / RAM++ / Tag2Text modules, converters and builders for the others.

- :mod:`.swin`, :mod:`.bert`, :mod:`.ram`, :mod:`.ram_family` — the RAM family, checkpoint-exact
- :mod:`.captioning`, :mod:`.beam_search`, :mod:`.tokenizer` — Tag2Text captions
- :mod:`.groundingdino` — Grounding DINO on transformers, original checkpoints converted
- :mod:`.sam` — SAM (segment-anything) and transformers SAM / SAM-HQ behind one interface
- :mod:`.hf` — BLIP ITM, GIT and CLIP bundles
"""
