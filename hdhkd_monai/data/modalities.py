"""The one registry of modalities: how a volume of each becomes slices (units, foreground, orientation).

Adding a modality is one :class:`Modality` entry in :data:`MODALITIES` (and a data-set preset in ``configs/`` that
names it and its preprocessing). May import ``data.volumes`` and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from hdhkd_monai.data.volumes import Volume
from hdhkd_monai.errors import BadInputError

__all__ = ["MODALITIES", "Modality", "modality", "mri_units", "oct_units", "physical_units"]


@dataclass(frozen=True)
class Modality:
    """How volumes of one modality are cut into slices.

    Attributes:
        slice_units: ``Volume -> array [k, rows, cols]`` in the units its slices are written in (what the preset's
            preprocessing expects: [0, 1], HU or SUV).
        foreground: threshold in those units above which a pixel counts as foreground (``min_foreground`` filter).
        orientation: axis codes volumes with an affine are reoriented to before cutting (None keeps stored order).
    """

    slice_units: Callable[[Volume], np.ndarray]
    foreground: float
    orientation: Optional[str]


def oct_units(volume: Volume) -> np.ndarray:
    """DICOM display images kept (already their stored range's fraction, like the JPEG B-scans); other integer
    volumes divided by their type's maximum (uint8 / 255); float volumes min-max scaled per volume."""
    array = volume.array
    if volume.display:
        return array
    if np.issubdtype(volume.dtype, np.integer):
        return np.clip(array / np.float32(np.iinfo(volume.dtype).max), 0, 1)
    low, high = float(array.min()), float(array.max())
    return (array - low) / np.float32(max(high - low, 1e-12))


def mri_units(volume: Volume, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Per-volume percentile normalisation over the non-zero voxels (the background would dominate otherwise),
    ``percentiles`` mapped to 0 and 1, clipped."""
    array = volume.array
    body = array[array != 0]
    low, high = np.percentile(body if body.size else array, percentiles)
    return np.clip((array - low) / np.float32(max(high - low, 1e-12)), 0, 1)


def physical_units(volume: Volume) -> np.ndarray:
    """Physical units as read (HU for CT, SUV for PET): the preset's window maps them to [0, 1]. A DICOM display
    image carries no such units: a named error."""
    if volume.display:
        raise BadInputError(volume.source, "a DICOM display image (values in [0, 1], not CT/PET units) where HU or "
                                           "SUV are expected; give the original CT/PET series")
    return volume.array


#: Modalities by name: OCT and MRI slices are written in [0, 1], CT in HU, PET in SUV.
MODALITIES = {
    "oct": Modality(oct_units, foreground=0.15, orientation=None),  # OCT affines are rarely meaningful
    "mri": Modality(mri_units, foreground=0.05, orientation="LPS"),
    "ct": Modality(physical_units, foreground=-500.0, orientation="LPS"),
    "pet": Modality(physical_units, foreground=0.1, orientation="LPS"),
}


def modality(name: str) -> Modality:
    """The registered :class:`Modality` ``name``; a ``ValueError`` lists the choices for an unknown one."""
    if name not in MODALITIES:
        raise ValueError(f"modality must be one of {tuple(MODALITIES)}, got {name!r}")
    return MODALITIES[name]
