"""Label Studio's brush RLE (``BrushLabels`` ``value.rle``), by label-studio-sdk's own codec.

Used by the Label Studio exporter and the Label Studio ML backend alike, so both write
exactly the bytes Label Studio's converter writes. Only the SDK's ``converter/brush.py``
file is loaded (it needs numpy and Pillow): importing ``label_studio_sdk.converter`` would
pull in its whole exporter (pandas, nltk, lxml, ...), and the SDK's pins conflict with ours,
so it is installed with ``pip install --no-deps label-studio-sdk`` (see the README).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from types import ModuleType

import numpy as np

from ..errors import ConfigError

SDK_INSTALL = "pip install --no-deps 'label-studio-sdk==2.1.2'"


@functools.lru_cache(maxsize=1)
def _sdk_brush() -> ModuleType:
    """label-studio-sdk's ``converter/brush.py``.

    Loaded from its file because importing ``label_studio_sdk.converter`` pulls in the
    whole exporter (pandas, nltk, lxml, ...) for one numpy function.
    """
    spec = importlib.util.find_spec("label_studio_sdk")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("BrushLabels need label-studio-sdk (its brush RLE encoder)",
                          hint=SDK_INSTALL)
    for folder in spec.submodule_search_locations:
        path = f"{folder}/converter/brush.py"
        brush_spec = importlib.util.spec_from_file_location("_ram_grounded_ls_brush", path)
        if brush_spec is None or brush_spec.loader is None:
            continue
        try:
            module = importlib.util.module_from_spec(brush_spec)
            brush_spec.loader.exec_module(module)
        except FileNotFoundError:
            continue
        sys.modules.setdefault("_ram_grounded_ls_brush", module)
        return module
    raise ConfigError("label-studio-sdk has no converter/brush.py", hint=SDK_INSTALL)


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Bool HxW mask -> Label Studio brush RLE (label-studio-sdk's encoder)."""
    return [int(v) for v in _sdk_brush().mask2rle(mask.astype(np.uint8) * 255)]


def brush_rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`mask_to_brush_rle` (label-studio-sdk's decoder), bool HxW."""
    flat = _sdk_brush().decode_rle(rle)
    return np.reshape(flat, (height, width, 4))[:, :, 3] > 0
