"""3-D volumes of every format -> checked float32 arrays ``[k, rows, cols]`` -> normalised 2-D slices.

Formats (by suffix; a folder is a DICOM series):

- NIfTI ``.nii`` / ``.nii.gz`` (nibabel; scl_slope/inter applied);
- ITK ``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr`` (itk);
- DICOM: a folder with one file per slice, or one multi-frame ``.dcm`` (see :mod:`hdhkd_monai.data.dicom`);
- TIFF stacks ``.tif`` / ``.tiff`` (tifffile; pages are slices);
- ``.npy`` arrays.

Index order: ``[k, rows, cols]`` is numpy's (and ITK's) order for voxel index ``(i=col, j=row, k)``, so slices along
``axis=0`` are the stored images (DICOM files, multi-frame frames, TIFF pages, NIfTI ``[:, :, k]`` transposed).
``orientation="LPS"`` first reorients volumes that carry an affine (NIfTI, ITK, DICOM) so that, for axial data,
slices along ``axis=0`` look like radiology displays them (patient left on the image right, anterior at the top),
whichever format the volume came in.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations

from hdhkd_monai.data import dicom
from hdhkd_monai.errors import BadInputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".tif", ".tiff", ".dcm", ".npy")
#: Volume files inference takes directly (``slices.slice_inputs``), besides DICOM series folders; TIFF, ``.npy`` and
#: ``.dcm`` files are 2-D images there.
INFERENCE_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class Volume:
    """A loaded volume: ``array`` float32 [k, rows, cols]; ``affine`` RAS 4x4 for index (i=col, j=row, k), or
    None when the format has none; ``dtype`` of the stored values (it decides OCT scaling); ``display`` True for a
    DICOM display image, whose values are already fractions of the stored range in [0, 1]
    (:func:`hdhkd_monai.data.dicom.display_fraction`)."""

    array: np.ndarray
    affine: np.ndarray | None
    dtype: np.dtype
    source: Path
    display: bool = False


def volume_suffix(path: str | Path) -> str:
    """The format suffix of a volume file ('.nii.gz' counts as one), '' if not a volume format."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), "")


def volume_name(path: str | Path) -> str:
    """File name without its volume suffix (a folder keeps its name)."""
    path = Path(path)
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.is_file() else path.name


def is_volume(path: str | Path) -> bool:
    """True for a volume file or a folder (a DICOM series)."""
    path = Path(path)
    return not path.name.startswith(".") and (path.is_dir() or (path.is_file() and bool(volume_suffix(path))))


def _read_nifti(path: Path):
    import nibabel as nib

    image = nib.load(path)
    return np.asarray(image.get_fdata(dtype=np.float32)), image.affine, image.get_data_dtype(), True


def _read_itk(path: Path):
    import itk

    image = itk.imread(str(path))
    array = itk.array_from_image(image)  # already [k, j, i]
    direction = np.asarray(image.GetDirection(), float).reshape(image.GetImageDimension(), -1)
    lps = np.eye(4)
    if direction.shape == (3, 3):
        lps[:3, :3] = direction * np.asarray(image.GetSpacing(), float)[None, :]
        lps[:3, 3] = np.asarray(image.GetOrigin(), float)
    return array, dicom.LPS_TO_RAS @ lps, array.dtype, False


def _read_raw(path: Path, suffix: str):
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        import tifffile

        array = tifffile.imread(path)
    return array, None, array.dtype, False


def _squeeze_extra(array: np.ndarray, ijk_order: bool) -> np.ndarray:
    """Drop singleton dimensions beyond the third (e.g. NIfTI's time axis of a single volume)."""
    while array.ndim > 3 and (array.shape[-1] == 1 if ijk_order else array.shape[0] == 1):
        array = array[..., 0] if ijk_order else array[0]
    return array


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: str = "LPS") -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip the axes of ``array`` [k, j, i] so that (i, j, k) point along ``axcodes``; returns the new
    array and affine."""
    current = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(tuple(axcodes)))
    ijk = orientations.apply_orientation(array.transpose(2, 1, 0), transform)
    new_affine = affine @ orientations.inv_ornt_aff(transform, array.shape[::-1])
    return np.ascontiguousarray(ijk.transpose(2, 1, 0)), new_affine


def read_volume(path: str | Path, orientation: str | None = None, skip_bad: bool = False) -> Volume:
    """Load one volume (file or DICOM series folder) and check it.

    Args:
        path: volume file or DICOM series folder.
        orientation: axis codes such as "LPS" to reorient to (volumes without an affine are left as stored), or
            None to keep the stored index order.
        skip_bad: for a DICOM series, skip unreadable slice files (logged, counted) instead of raising.

    Raises:
        BadInputError naming the path: unreadable or truncated file, not 3-D, NaN or infinite values.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if not path.exists():
        raise BadInputError(path, "volume not found")
    display = False
    if path.is_dir() or suffix == ".dcm":
        array, affine, display = dicom.load_series(path, skip_bad) if path.is_dir() else dicom.load_multiframe(path)
        dtype = np.dtype(np.float32)
    elif not suffix:
        raise BadInputError(path, f"not a volume format (expected one of {', '.join(VOLUME_SUFFIXES)} or a folder)")
    else:
        try:
            if suffix in (".nii", ".nii.gz"):
                array, affine, dtype, ijk = _read_nifti(path)
            elif suffix in (".npy", ".tif", ".tiff"):
                array, affine, dtype, ijk = _read_raw(path, suffix)
            else:
                array, affine, dtype, ijk = _read_itk(path)
        except Exception as exc:  # nibabel, itk, tifffile and numpy raise their own types for a bad file
            raise BadInputError(path, f"unreadable volume ({type(exc).__name__}: {exc})") from exc
        array = _squeeze_extra(np.asarray(array), ijk)
        if array.ndim != 3:
            raise BadInputError(path, f"expected a 3-D volume, got {array.ndim} dimensions (shape {array.shape})")
        if ijk:
            array = array.transpose(2, 1, 0)
    array = np.asarray(array, dtype=np.float32)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise BadInputError(path, f"{bad} NaN or infinite voxel values")
    if orientation and affine is not None:
        array, affine = reorient(array, affine, orientation)
    return Volume(np.ascontiguousarray(array), affine, np.dtype(dtype), path, display)


def suv_from_sidecar(volume: Volume) -> Volume:
    """Convert a PET NIfTI in Bq/mL to SUVbw with the DICOM-keyword JSON sidecar ``<name>.json`` next to it (as
    dcm2niix writes): Units, PatientWeight, RadionuclideTotalDose, RadionuclideHalfLife,
    RadiopharmaceuticalStartTime, SeriesTime or AcquisitionTime, DecayCorrection (optional)."""
    sidecar = volume.source.with_name(volume_name(volume.source) + ".json")
    if not sidecar.is_file():
        raise BadInputError(volume.source, f"SUV from Bq/mL needs the JSON sidecar {sidecar.name} with the dose tags")
    try:
        tags = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(sidecar, f"unreadable JSON ({exc})") from exc
    ds = dicom.Dataset()
    info = dicom.Dataset()
    for key, value in tags.items():
        if key in ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
                   "RadiopharmaceuticalStartDateTime"):
            setattr(info, key, value)
        elif key in ("Units", "PatientWeight", "SeriesTime", "SeriesDate", "AcquisitionTime", "AcquisitionDate",
                     "DecayCorrection"):
            setattr(ds, key, value)
    ds.RadiopharmaceuticalInformationSequence = [info]
    factor = dicom.suv_bw_factor(ds, sidecar)
    return Volume(volume.array * np.float32(factor), volume.affine, volume.dtype, volume.source, volume.display)



def slices(array: np.ndarray, axis: int = 0, min_foreground: float = 0.0, threshold: float | None = None):
    """Yield ``(index, slice [H, W])`` along ``axis`` of ``array`` [k, rows, cols], keeping slices whose share of
    pixels above ``threshold`` is at least ``min_foreground`` (0 keeps all)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    for index in range(array.shape[axis]):
        image = np.take(array, index, axis=axis)
        if min_foreground > 0 and float((image > threshold).mean()) < min_foreground:
            continue
        yield index, np.ascontiguousarray(image)
