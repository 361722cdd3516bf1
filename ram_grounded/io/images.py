"""Load any image source as an RGB uint8 HxWx3 array, with clear errors for bad input.

Conversions (documented once, here):
- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so pixels are upright.
- Alpha is dropped, not composited (RGBA, LA, PA, P with transparency, HxWx4 arrays):
  this is what the official RAM preprocessing does with ``Image.convert("RGB")``.
- 16-bit data (PIL ``I;16*``, uint16 arrays) keeps its top byte: ``v >> 8``.
- 32-bit integer data (PIL ``I``, other integer arrays): values within 0..255 are taken
  as 8-bit, values within 0..65535 as 16-bit (``>> 8``); anything else is refused.
- Float data (PIL ``F``, float arrays) is taken as 0..1, clipped, scaled by 255 and
  rounded; NaN becomes 0.
- Grey (HxW, HxWx1, L, 1) is repeated into three channels; CMYK, YCbCr, P, etc. use PIL's
  ``convert("RGB")``.

Only the first frame of an animated or multi-page file is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ram_grounded.errors import ImageLoadError
from ram_grounded.io.http import describe_url, fetch_bytes, looks_like_url

logger = logging.getLogger(__name__)

#: Largest image accepted by default: 8192 x 8192 (64 megapixels; a decoded RGB copy is
#: already 200 MB). Below PIL's own ``Image.MAX_IMAGE_PIXELS``, so ours is what triggers.
DEFAULT_MAX_PIXELS = 8192 * 8192
#: Largest download accepted by default (bytes).
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

_warned_truncated = False  # warn once per process about PIL's global truncation switch

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


def describe_source(source: Any) -> str:
    """A short, stable, printable id for a source (used as ``Record.source``).

    A path as given, a URL (without credentials), ``<bytes sha1:... n=...>``,
    ``<array HxWxC dtype>`` (numpy shape order) or ``<PIL MODE WxH>`` (PIL size order).
    """
    if isinstance(source, str):
        return describe_url(source) if looks_like_url(source) else source
    if isinstance(source, os.PathLike):
        return os.fspath(source)  # type: ignore[return-value]
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return f"<bytes sha1:{hashlib.sha1(data).hexdigest()[:12]} n={len(data)}>"
    if isinstance(source, np.ndarray):
        return f"<array {'x'.join(map(str, source.shape))} {source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.width}x{source.height}>"
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Load ``source`` as a C-contiguous RGB uint8 array of shape (H, W, 3).

    ``source`` is a path (str or Path), an http(s) URL, encoded bytes, a PIL image or a
    numpy array (HxW, HxWx1, HxWx3, HxWx4; uint8, uint16, other integers, float, bool);
    see the module docstring for how each kind is converted.  ``max_pixels`` (None to
    disable) refuses larger images before their pixels are decoded; PIL's own guard
    (``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top and is reported the same way.
    ``timeout`` and ``max_bytes`` bound URL downloads.  An RGB uint8 contiguous array is
    returned as is (not copied).  Every failure raises :class:`ImageLoadError`.
    """
    name = describe_source(source)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:  # other shapes get their own message from array_to_rgb
            _check_pixels(name, (source.shape[1], source.shape[0]), max_pixels)
        return array_to_rgb(source, name=name)
    if isinstance(source, Image.Image):
        _check_pixels(name, source.size, max_pixels)
        return _decode(source, name, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_and_decode(io.BytesIO(bytes(source)), name, max_pixels)
    if isinstance(source, str) and looks_like_url(source):
        data = fetch_bytes(source.strip(), timeout=timeout, max_bytes=max_bytes)
        return _open_and_decode(io.BytesIO(data), name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        _check_path(path, name)
        with open(path, "rb") as fh:
            return _open_and_decode(fh, name, max_pixels)
    raise ImageLoadError(
        f"{name}: cannot load an image from a {type(source).__name__}",
        hint="pass a path, an http(s) URL, bytes, a PIL image or a numpy array",
    )


def _check_path(path: Path, name: str) -> None:
    if not path.exists():
        raise ImageLoadError(f"{name}: no such file", hint="check the path and the working directory")
    if path.is_dir():
        raise ImageLoadError(
            f"{name}: is a directory, not an image file",
            hint="use ram_grounded.io.iter_sources() (or the CLI) to expand a folder",
        )
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{name}: the file is empty (0 bytes)", hint="re-copy or re-download it")


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name}: the image is empty ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: {width}x{height} = {width * height} pixels is more than "
            f"max_pixels={max_pixels} (decompression-bomb guard)",
            hint="raise max_pixels (or pass None) if this image is trusted",
        )


def _open_and_decode(fh: Any, name: str, max_pixels: int | None) -> np.ndarray:
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files will "
                       "load as partly grey images instead of failing")
    try:
        # PIL warns past MAX_IMAGE_PIXELS and raises past twice that; make both errors.
        # catch_warnings is process-global, so threads decoding at once may see it leak
        # or miss it; harmless: our own header check below refuses such sizes anyway
        # unless max_pixels was raised above PIL's limit.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fh)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"{name}: refused by PIL's decompression-bomb guard ({exc})",
            hint="if this image is trusted, raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"{name}: not an image file PIL can read",
            hint="check that it is really an image (JPEG, PNG, BMP, GIF, TIFF, WebP)",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes can fail in many ways
        raise ImageLoadError(f"{name}: cannot read the image header ({exc})") from exc
    with image:
        _check_pixels(name, image.size, max_pixels)
        return _decode(image, name, max_pixels)


def _decode(image: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    """Fully decode (so truncation fails here), orient by EXIF, convert to RGB uint8."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError...
        raise ImageLoadError(
            f"{name}: the image data is corrupt or truncated ({exc})",
            hint="re-copy or re-download the file; it did not decode completely",
        ) from exc
    _check_pixels(name, image.size, max_pixels)
    return pil_to_rgb(image, name=name)


def pil_to_rgb(image: Image.Image, *, name: str = "<PIL>") -> np.ndarray:
    """Convert a decoded PIL image of any mode to RGB uint8 (alpha dropped, no EXIF step)."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        # PIL's convert("RGB") clips 16/32-bit values at 255; scale them ourselves instead.
        return array_to_rgb(np.asarray(image), name=name)
    try:
        if mode == "La":  # premultiplied grey+alpha: PIL converts it only to LA
            image = image.convert("LA")
        elif mode == "PA" or (mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")  # avoids PIL's palette-transparency warning
        if image.mode != "RGB":
            image = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"{name}: cannot convert PIL mode {mode} to RGB ({exc})",
                             hint="convert the image to RGB before passing it") from exc
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def array_to_rgb(array: np.ndarray, *, name: str = "<array>") -> np.ndarray:
    """Convert an HxW, HxWx1, HxWx3 or HxWx4 array to RGB uint8 (rules in the module doc)."""
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # alpha dropped, as for PIL images
    elif not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise ImageLoadError(
            f"{name}: an image array must be HxW, HxWx1, HxWx3 or HxWx4, not shape {array.shape}",
            hint="for a CHW tensor use array.transpose(1, 2, 0); for a batch pass one image at a time",
        )
    if array.size == 0:
        raise ImageLoadError(f"{name}: the array is empty (shape {array.shape})")
    rgb8 = _to_uint8(array, name)
    if rgb8.ndim == 2:
        rgb8 = rgb8[:, :, None]
    if rgb8.shape[2] == 1:
        rgb8 = np.repeat(rgb8, 3, axis=2)
    return np.ascontiguousarray(rgb8)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if kind == "b":
        return array.astype(np.uint8) * 255
    if kind == "u" and array.dtype.itemsize == 2:  # uint16 in either byte order (I;16B)
        return (array >> 8).astype(np.uint8)
    if kind == "f":
        scaled = np.clip(np.nan_to_num(array.astype(np.float64), nan=0.0), 0.0, 1.0) * 255.0
        return np.rint(scaled).astype(np.uint8)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        if low >= 0 and high <= 65535:
            return (array.astype(np.uint32) >> 8).astype(np.uint8)
        raise ImageLoadError(
            f"{name}: integer values {low}..{high} do not fit 8 or 16 bits",
            hint="rescale to uint8 (0..255) or float (0..1) before passing the array",
        )
    raise ImageLoadError(
        f"{name}: unsupported array dtype {array.dtype}",
        hint="pass uint8, uint16 or float (0..1) pixels",
    )
