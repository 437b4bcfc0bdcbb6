"""Image size bounds, checked from the file before any pixel is decoded where the format allows.

- At least ``min_side`` pixels on each side (:data:`MIN_IMAGE_SIDE`, the networks' input multiple and deepest
  feature stride, 16): a smaller image holds less than one cell of the coarsest feature grid, and scaling it up to
  the network's size invents what it scores. :class:`ImageTooSmallError`.
- At most ``max_pixels`` pixels (:data:`MAX_IMAGE_PIXELS`, 4096 x 4096): maps and overlays are written at the
  input's own size, so a bigger image costs memory and time in proportion (a 6000 x 6000 PNG took 96 s, 5.9 GB and a
  106 MB map). :class:`ImageTooLargeError` names the option that scores a downscaled copy instead
  (:func:`downscaled_copy`), which bounds memory for any input.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hdhkd_monai.errors import ImageTooLargeError, ImageTooSmallError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "ImageBounds",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "downscaled_copy",
    "header_shape",
]

#: Smallest side (pixels) of an image the workflows take: the networks' input multiple and deepest stride.
MIN_IMAGE_SIDE = 16
#: Largest image (pixels) the workflows take unless told otherwise: 4096 x 4096.
MAX_IMAGE_PIXELS = 4096 * 4096
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")




@dataclass(frozen=True)
class ImageBounds:
    """The sizes a workflow accepts; ``check`` raises the named errors above for a ``(rows, cols)`` shape."""

    min_side: int = MIN_IMAGE_SIDE
    max_pixels: int = MAX_IMAGE_PIXELS

    def check(self, path: str | Path, shape: tuple[int, int]) -> None:
        if min(shape) < self.min_side:
            raise ImageTooSmallError(path, f"{shape[0]}x{shape[1]} pixels; the network needs at least "
                                           f"{self.min_side} on each side (min_image_side); leave it out")
        if math.prod(shape) > self.max_pixels:
            raise ImageTooLargeError(path, f"{shape[0]}x{shape[1]} = {math.prod(shape):,} pixels, more than "
                                           f"max_image_pixels={self.max_pixels:,}; raise max_image_pixels or set "
                                           "downscale_large to true to score a downscaled copy")

    def fits(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``shape`` scaled down (aspect kept) to at most ``max_pixels`` pixels."""
        factor = min(1.0, math.sqrt(self.max_pixels / math.prod(shape)))
        return tuple(max(1, int(s * factor)) for s in shape)


def header_shape(path: str | Path) -> tuple[int, int] | None:
    """``(rows, cols)`` of a display image from its header alone (no decode), or None for other formats and for
    files PIL cannot open (the decoder then names the fault)."""
    if Path(path).suffix.lower() not in _PIL_SUFFIXES:
        return None
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except Exception:  # not an image, truncated header, decompression bomb: the full read says which
        return None


def downscaled_copy(path: str | Path, target: str | Path, bounds: ImageBounds) -> Path:
    """A 16-bit PNG of image ``path`` scaled down to ``bounds.fits`` (PIL's reducing draft first, so a JPEG is not
    decoded at full size); its grey values are those the reader gives (:func:`~hdhkd_monai.data.transforms.pil_to_grey`)."""
    from hdhkd_monai.data.transforms import pil_to_grey  # imported on use: it loads MONAI's transforms

    target = Path(target).with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        rows, cols = bounds.fits((image.size[1], image.size[0]))
        image.draft(image.mode, (cols, rows))
        grey = pil_to_grey(image)
    small = Image.fromarray(grey).resize((cols, rows), Image.BILINEAR)
    Image.fromarray(np.round(np.clip(np.asarray(small), 0, 1) * 65535).astype(np.uint16)).save(target)
    return target
