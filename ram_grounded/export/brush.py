"""Label Studio's brush RLE (``BrushLabels`` ``value.rle``), written from the format.

The format is thi.ng's ``rle-pack`` over the RGBA bytes of the mask (row-major, four equal
channels per pixel, 255 inside): a bit stream of a 32-bit value count, a 5-bit word size
minus one (8 bits here), four 4-bit run-length field sizes minus one (3, 4, 8, 16 bits),
then runs. A run is a repeat flag (1 = one value repeated, 0 = literal values), a 2-bit
index into the field sizes, the run length minus one in that many bits, and the value(s)
in words. The stream is padded with zero bits the way Label Studio's own converter
(``label_studio_sdk.converter.brush.encode_rle``) pads it, so our bytes equal its bytes.
"""

from __future__ import annotations

import numpy as np

_WORD = 8
_SIZES = (3, 4, 8, 16)


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Bool (or 0/255 uint8) HxW mask -> Label Studio brush RLE bytes as a list of ints."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    values = np.where(np.asarray(mask).ravel() > 0, 255, 0).astype(np.uint8)
    return encode_rle(np.repeat(values, 4))


def encode_rle(values: np.ndarray) -> list[int]:
    """rle-pack encode a 1-D array of bytes (word size 8, run fields 3/4/8/16 bits)."""
    values = np.asarray(values, dtype=np.uint8).ravel()
    n = int(values.size)
    head = f"{n:032b}{_WORD - 1:05b}" + "".join(f"{s - 1:04b}" for s in _SIZES)
    parts = [head]
    if n:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate(([0], change))
        lengths = np.diff(np.concatenate((starts, [n])))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            parts.append(_run_bits(int(values[start]), length))
    bits = "".join(parts)
    bits += "0" * (8 - len(bits) % 8)  # Label Studio pads 1..8 bits (a whole byte when aligned)
    packed = np.packbits(np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0"))
    return packed.tolist()


def _run_bits(value: int, length: int) -> str:
    word = f"{value:08b}"
    if length == 1:
        return "0" + "00" + "000" + word  # a literal run of one value
    out = []
    while length > 2 ** 16:  # longer than the widest field: split
        out.append("1" + "11" + f"{2 ** 16 - 1:016b}" + word)
        length -= 2 ** 16
    for index, size in enumerate(_SIZES):
        if length <= 2 ** size:
            out.append("1" + f"{index:02b}" + f"{length - 1:0{size}b}" + word)
            return "".join(out)
    raise AssertionError("unreachable")
