"""The data items an engine runs on: one split of a datalist, or the images of a folder or a file list.

Items are MONAI dictionaries (``{"image": path, ...}``); relative ``image``/``mask`` paths in a datalist JSON are
resolved against the JSON's folder. Empty or missing inputs raise ``BadInputError`` naming the file or folder.
:class:`EnsureMaskd` lets items with and without a mask share a batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from hdhkd_monai.data.datalist import IMAGE_SUFFIXES, natural_key
from hdhkd_monai.data.errors import BadInputError

__all__ = ["EnsureMaskd", "datalist_split", "image_items"]

_PATH_KEYS = ("image", "mask")


def datalist_split(datalist: str | Path, split: str) -> list[dict]:
    """Items of ``split`` ("training", "validation", "test") of a datalist JSON, with absolute paths.

    Raises ``BadInputError`` naming the file when it is missing, not a datalist, or the split is absent or empty.
    """
    path = Path(datalist)
    if not path.is_file():
        raise BadInputError(path, "datalist file not found")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(path, f"not a datalist JSON ({e})") from e
    if not isinstance(content, dict) or split not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise BadInputError(path, f"no {split!r} split (found {keys})")
    items = content[split]
    if not items:
        raise BadInputError(path, f"the {split!r} split is empty")
    base = path.parent.resolve()
    return [{k: (str(base / v) if k in _PATH_KEYS and v else v) for k, v in item.items()} for item in items]


def image_items(source: str | Path, split: str = "test") -> list[dict]:
    """Items ``{"image": path}`` for inference or teacher distillation, from any of:

    - a folder: every image file below it (recursively; suffixes of ``hdhkd_monai.data.datalist.IMAGE_SUFFIXES``),
      in natural order, e.g. an ImageNet folder for the teacher;
    - a ``.json`` datalist: the items of ``split`` (labels and classes kept);
    - any other file: a list of image paths, one a line (relative to the list's folder; ``#`` starts a comment).

    Raises ``BadInputError`` naming the folder or file when it does not exist or yields no images.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(
            (p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
            key=natural_key,
        )
        if not files:
            raise BadInputError(source, f"no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
        return [{"image": str(p.resolve())} for p in files]
    if not source.is_file():
        raise BadInputError(source, "no such folder or file")
    if source.suffix.lower() == ".json":
        return datalist_split(source, split)
    lines = [line.split("#", 1)[0].strip() for line in source.read_text().splitlines()]
    paths = [source.parent / line for line in lines if line]
    if not paths:
        raise BadInputError(source, "the image list is empty")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BadInputError(source, f"{len(missing)} listed image(s) not found, e.g. {missing[0]}")
    return [{"image": str(p.resolve())} for p in paths]


class EnsureMaskd(MapTransform):
    """Give every item a mask, so that batches mixing images with and without one collate.

    Datalists attach ``"mask"`` only where a mask file exists (typically abnormal test images). An item without one
    gets a [1, H, W] mask like its image: all 0 for a normal image (it holds no anomaly), all NaN for an abnormal or
    unlabelled one (its anomaly is not delineated; pixel metrics leave NaN masks out).

    Args:
        image_key, mask_key, label_key: item keys (the mask follows the loaded image's shape).
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask", label_key: str = "label") -> None:
        super().__init__(keys=[mask_key])
        self.image_key, self.mask_key, self.label_key = image_key, mask_key, label_key

    def __call__(self, data: dict) -> dict:
        if data.get(self.mask_key) is not None:
            return data
        label = data.get(self.label_key)
        fill = 0.0 if label is not None and int(label) == 0 else float("nan")
        image = torch.as_tensor(data[self.image_key])
        # A MetaTensor like the masks read from files: MONAI's collate needs the same type across a batch.
        mask = MetaTensor(torch.full((1, *image.shape[1:]), fill, dtype=torch.float32))
        return {**data, self.mask_key: mask}
