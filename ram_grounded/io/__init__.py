"""Images in: paths, http(s) URLs, bytes, PIL images and arrays become RGB uint8 HxWx3.

``load_image`` decodes one source (EXIF orientation, every PIL mode, a decompression-bomb
guard, bounded downloads); ``describe_source`` names it; ``iter_sources`` expands folders,
globs and list files into the sources of a run.
"""

from ram_grounded.io.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    array_to_rgb,
    describe_source,
    load_image,
    pil_to_rgb,
)
from ram_grounded.io.sources import IMAGE_EXTENSIONS, iter_sources

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "array_to_rgb",
    "describe_source",
    "iter_sources",
    "load_image",
    "pil_to_rgb",
]
