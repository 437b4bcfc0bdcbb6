"""The project's own transforms of the preprocessing lists in the bundle configs, where MONAI has none.

The preprocessing itself is a ``Compose`` list in ``train.json`` and ``inference.json`` (key ``preprocessing``):
load the slice (``LoadImaged`` with :class:`SliceReader`, key ``image_reader``), channel first, the intensity step
(key ``intensity``: a list the data-set presets in ``configs/`` replace: OCT's ``intensity_range`` with
:class:`RequireRanged`, MRI's percentiles, a CT window from :func:`ct_window`, PET's SUV range), resize to
``image_size``, grey -> 3 channels, float32. ``hdhkd_monai.launcher.preprocessing`` builds it in Python.

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

Where an intensity step maps the data's own range to [0, 1] (OCT's ``intensity_range``, the display-image presets),
a value outside that range is an error naming the file (:class:`RequireRanged`), not a silent clip; windows (a CT
window, PET's ``suv_max``) clip, which is what a window is for.

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
from monai.transforms import Compose, MapTransform
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
        purpose: wording for that error (e.g. "a CT window expects HU values").
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
                                          "PET or MR) is already windowed: use a display-image preset "
                                          "(configs/chest_ct_png.json) for it")
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


def ct_window(window: str | Sequence[float]) -> tuple[float, float]:
    """The (lower, upper) HU bounds of a CT window: ``"lung"`` (W1500/L-600), ``"mediastinal"`` (W350/L50) or an
    explicit pair; for ``ScaleIntensityRanged``'s ``a_min``/``a_max`` in ``configs/chest_ct.json``."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"window must be one of {sorted(CT_WINDOWS)} or a (lower, upper) pair; got {window!r}")
        return CT_WINDOWS[window]
    low, high = window
    return float(low), float(high)


def preprocessing_fingerprint(pipeline: Compose) -> list:
    """What ``pipeline`` makes of a fixed probe slice (a ramp over -1500..1500, the range of HU, SUV and [0, 1]
    values): its output shape and two weighted means, rounded to 4 decimals. Pipelines that differ in size, channel
    layout, window or intensity scaling give different fingerprints, so a model can be checked against the
    preprocessing it was trained with (``model.pt`` stores it; see ``NamedCheckpointLoader``)."""
    rows, cols = 48, 40  # not square, so a transposed layout shows
    ramp = np.linspace(-1500, 1500, rows * cols, dtype=np.float32).reshape(rows, cols)
    # The ramp lies outside every pipeline's expected range: its checks are left out (they change no value).
    unchecked = Compose([t for t in pipeline.flatten().transforms if not isinstance(t, RequireRanged)])
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
