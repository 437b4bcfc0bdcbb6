"""One MONAI dictionary pipeline per modality: load a 2-D slice, scale it to [0, 1], resize, grey -> 3 channels.

Every factory returns a :class:`monai.transforms.Compose` on the key ``"image"`` (and ``"mask"`` when an item has
one) and is meant to be called from a bundle config::

    "preprocessing": {"_target_": "hdhkd_monai.data.transforms.ct_slice", "image_size": "@image_size",
                      "window": "lung"}

Output: ``image`` float32 [3, image_size, image_size] in [0, 1] (no ImageNet normalisation; the networks take
[0, 1] input); ``mask`` float32 [1, image_size, image_size] in {0, 1}. :class:`EnsureMaskd` gives items without a
mask file one, so that they batch with those that have one.

Loading goes through :class:`SliceReader`, so every modality accepts the same files:

- PNG / JPEG / BMP / TIFF display images, converted to grey the same way whatever their colour mode (RGB, RGBA,
  palette, 16-bit) and scaled by their bit depth to [0, 1];
- ``.npy`` slices written by ``python -m hdhkd_monai.data.slices`` (float32, in the modality's units);
- single-frame DICOM files: CT in HU, PET in SUVbw, MR in its rescaled units, and every other modality (OCT
  B-scans, secondary captures) as a display image like a PNG, its stored range (``BitsStored``) mapped to [0, 1] and
  MONOCHROME1 inverted (:func:`hdhkd_monai.data.dicom.pixel_values`).

Where a pipeline maps the data's own range to [0, 1] (``oct_bscan``'s ``intensity_range``, and the display-image
settings of the others), a value outside that range is an error naming the file (:class:`RequireRanged`), not a
silent clip; windows (``ct_slice``'s HU window, ``pet_slice``'s ``suv_max``) clip, which is what a window is for.

Arrays keep image row/column order ([H, W], as PIL and numpy index them; MONAI's own PILReader transposes unless
``reverse_indexing=False``), so anomaly maps computed on the output overlay the original image directly.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RepeatChanneld,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import MetaKeys
from PIL import Image

from hdhkd_monai.data import dicom
from hdhkd_monai.errors import BadInputError

DISPLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# (lower, upper) HU bounds of the usual chest CT windows: lung W1500/L-600, mediastinal W350/L50.
CT_WINDOWS = {"lung": (-1350.0, 150.0), "mediastinal": (-125.0, 225.0)}


def pil_to_grey(image: Image.Image) -> np.ndarray:
    """A PIL image as float32 grey [H, W] in [0, 1]: 16-bit modes divided by 65535, float mode kept as stored,
    every other mode (1, L, P, RGB, RGBA, LA, CMYK, ...) through PIL's ITU-R 601 luma conversion, divided by 255.
    Alpha is ignored."""
    if image.mode.startswith("I;16") or image.mode == "I":
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


class SliceReader(ImageReader):
    """MONAI image reader for 2-D slices: display images (PIL), ``.npy`` arrays and single-frame DICOM.

    All file access happens in ``get_data``, after LoadImage has picked this reader: a missing, truncated or
    corrupt file, a shape other than [H, W] (or [1, H, W]), or non-finite values raise :class:`BadInputError`
    naming the file, instead of LoadImage quietly trying its other readers (which index PNGs transposed).

    Args:
        display_images: accept PNG/JPEG/... files. False for pipelines that window physical units (CT HU, PET SUV):
            a display image is already windowed, and windowing it again would silently give a blank image.
        purpose: wording for that error (e.g. "ct_slice(window='lung') expects HU").
    """

    def __init__(self, display_images: bool = True, purpose: str = ""):
        super().__init__()
        self.display_images = display_images
        self.purpose = purpose

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else filename
        return all(Path(n).suffix.lower() in (*DISPLAY_SUFFIXES, ".npy", ".dcm") for n in names)

    def read(self, data: Sequence[str] | str, **kwargs) -> Path:
        names = [data] if isinstance(data, (str, Path)) else list(data)
        if len(names) != 1:
            raise ValueError(f"SliceReader reads one file per key, got {names}")
        return Path(names[0])

    def get_data(self, img: Path) -> tuple[np.ndarray, dict]:
        path, suffix = img, img.suffix.lower()
        if not path.is_file():
            raise BadInputError(path, "file not found")
        try:
            if not self.display_images and (suffix in DISPLAY_SUFFIXES or dicom.holds_display_image(path)):
                raise BadInputError(path, f"{self.purpose}; this display image (PNG/JPEG, or a DICOM other than CT, "
                                          "PET or MR) is already windowed: use the display-image setting "
                                          "(window / suv_max None) for it")
            if suffix == ".npy":
                array = np.load(path, allow_pickle=False).astype(np.float32)
            elif suffix == ".dcm":
                array = dicom.read_slice(path)
            else:
                with Image.open(path) as image:
                    array = pil_to_grey(image)
        except BadInputError:
            raise
        except Exception as exc:  # truncated or corrupt files: each library raises its own type
            raise BadInputError(path, f"unreadable image ({type(exc).__name__}: {exc})") from exc
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise BadInputError(path, f"expected a 2-D slice [H, W], got shape {tuple(array.shape)}")
        if not np.isfinite(array).all():
            raise BadInputError(path, f"{int((~np.isfinite(array)).sum())} NaN or infinite pixel values")
        meta = {MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape), MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan")}
        return array, meta


def _off(value) -> bool:
    """None, or "none" as typed on a MONAI command line (which drops ``--key None`` overrides)."""
    return value is None or (isinstance(value, str) and value.lower() == "none")


class RequireRanged(MapTransform):
    """Raise :class:`BadInputError` naming the image's file when a value of ``keys`` lies outside [low, high]
    (beyond float rounding): for pipelines that map the data's own range to [0, 1], where clipping would silently
    flatten the image (an 8-bit image read as 0-255 by an OCT pipeline that expects [0, 1] turned all white).

    Args:
        keys: keys of the images to check.
        low, high: the expected range.
        advice: what to do about it, ending the error message.
    """

    def __init__(self, keys, low: float, high: float, advice: str) -> None:
        super().__init__(keys)
        self.low, self.high, self.advice = float(low), float(high), advice

    def __call__(self, data: dict) -> dict:
        slack = 1e-6 * max(1.0, self.high - self.low)
        for key in self.key_iterator(data):
            image = torch.as_tensor(data[key])
            vmin, vmax = float(image.min()), float(image.max())
            if vmin < self.low - slack or vmax > self.high + slack:
                path = getattr(data[key], "meta", {}).get("filename_or_obj", key)
                raise BadInputError(path, f"pixel values {vmin:.6g} to {vmax:.6g} lie outside [{self.low:g}, "
                                          f"{self.high:g}], the range this preprocessing expects; {self.advice}")
        return data


def _unit_range(low: float = 0.0, high: float = 1.0, advice: str | None = None) -> list:
    """Map [low, high] linearly to [0, 1]: a window, clipping outside values; or, with ``advice``, the data's own
    range, where an outside value is an error (:class:`RequireRanged`) ending with that advice."""
    check = [] if advice is None else [RequireRanged("image", low, high, advice)]
    return [*check, ScaleIntensityRanged("image", float(low), float(high), 0.0, 1.0, clip=True)]


# What to do about values outside [0, 1] in a display-image setting, per pipeline.
_DISPLAY_ADVICE = {
    "mri": "use percentiles (per-slice normalisation), or slices normalised by python -m hdhkd_monai.data.slices",
    "ct": "HU values need a window (window='lung', 'mediastinal' or (lower, upper))",
    "pet": "SUV values need suv_max",
}


def _pipeline(image_size: int, intensity: list, display_images: bool = True, purpose: str = "") -> Compose:
    size = (int(image_size), int(image_size))
    return Compose([
        LoadImaged("image", reader=SliceReader(display_images, purpose), image_only=True),
        LoadImaged("mask", reader=SliceReader(), image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(["image", "mask"], channel_dim="no_channel", allow_missing_keys=True),
        *intensity,
        Resized("image", size, mode="bilinear", anti_aliasing=True),
        Resized("mask", size, mode="nearest", allow_missing_keys=True),
        AsDiscreted("mask", threshold=0.5, allow_missing_keys=True),
        RepeatChanneld("image", repeats=3),
        EnsureTyped(["image", "mask"], dtype=torch.float32, allow_missing_keys=True),
    ])


def oct_bscan(image_size: int, intensity_range: Sequence[float] = (0.0, 1.0)) -> Compose:
    """OCT B-scans (JPEG/PNG, or ``.npy`` B-scans of volumes, already in [0, 1]).

    Args:
        image_size: output height and width.
        intensity_range: input values mapped linearly to [0, 1] (clipped); display images load in [0, 1].
    """
    low, high = intensity_range
    return _pipeline(image_size, _unit_range(low, high, f"set intensity_range to the images' range (it is "
                                                        f"({low:g}, {high:g}))"))


def mri_slice(image_size: int, percentiles: Sequence[float] | None = (0.5, 99.5)) -> Compose:
    """MRI slices: per-slice percentile normalisation to [0, 1] (clipped).

    Args:
        image_size: output height and width.
        percentiles: (lower, upper) percentiles mapped to 0 and 1. None keeps values as they are (clipped to
            [0, 1]): for slices already normalised per volume by ``hdhkd_monai.data.slices``. "none" works
            too (on the command line MONAI ignores ``None`` overrides).
    """
    if _off(percentiles):
        return _pipeline(image_size, _unit_range(advice=_DISPLAY_ADVICE["mri"]))
    lower, upper = percentiles
    return _pipeline(image_size, [ScaleIntensityRangePercentilesd("image", lower, upper, 0.0, 1.0, clip=True)])


def ct_slice(image_size: int, window: str | Sequence[float] | None = "lung") -> Compose:
    """CT slices: an HU window mapped to [0, 1].

    Args:
        image_size: output height and width.
        window: "lung" (W1500/L-600), "mediastinal" (W350/L50), an explicit (lower, upper) HU pair, or None for
            display images (PNG/JPEG exports that are windowed already; "none" on the command line). With a
            window, inputs must carry HU (``.npy`` slices, DICOM); a display image then raises an error naming it.
    """
    if _off(window):
        return _pipeline(image_size, _unit_range(advice=_DISPLAY_ADVICE["ct"]))
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"window must be one of {sorted(CT_WINDOWS)}, a (lower, upper) pair or None; "
                             f"got {window!r}")
        window = CT_WINDOWS[window]
    return _pipeline(image_size, _unit_range(*window),
                     display_images=False, purpose=f"ct_slice(window={window}) expects HU values")


def pet_slice(image_size: int, suv_max: float | None = 10.0) -> Compose:
    """PET slices: SUVbw in [0, suv_max] mapped linearly to [0, 1] (clipped), the same scale for every patient.

    Args:
        image_size: output height and width.
        suv_max: SUV mapped to 1. None (or "none") for display images (PNG/JPEG exports); with a value, inputs
            must carry SUV (``.npy`` slices, DICOM with the dose tags).
    """
    if _off(suv_max):
        return _pipeline(image_size, _unit_range(advice=_DISPLAY_ADVICE["pet"]))
    return _pipeline(image_size, _unit_range(0.0, suv_max),
                     display_images=False, purpose=f"pet_slice(suv_max={suv_max}) expects SUV values")


def preprocessing_fingerprint(pipeline: Compose) -> list:
    """What ``pipeline`` makes of a fixed probe slice (a ramp over -1500..1500, the range of HU, SUV and [0, 1]
    values): its output shape and two weighted means, rounded to 4 decimals. Pipelines that differ in size, channel
    layout, window or intensity scaling give different fingerprints, so a model can be checked against the
    preprocessing it was trained with (``model.pt`` stores it; see ``NamedCheckpointLoader``)."""
    rows, cols = 48, 40  # not square, so a transposed layout shows
    ramp = np.linspace(-1500, 1500, rows * cols, dtype=np.float32).reshape(rows, cols)
    # The ramp lies outside every pipeline's expected range: its checks are left out (they change no value).
    unchecked = Compose([t for t in pipeline.transforms if not isinstance(t, RequireRanged)])
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.npy"
        np.save(probe, ramp * np.linspace(0, 1, cols, dtype=np.float32))
        image = unchecked({"image": str(probe)})["image"].as_tensor().double()
    weights = torch.linspace(0, 1, image.shape[-1], dtype=torch.double)
    return [list(image.shape), round(float(image.mean()), 4), round(float((image * weights).mean()), 4)]


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
