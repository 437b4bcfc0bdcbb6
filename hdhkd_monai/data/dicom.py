"""DICOM reading with pydicom: single slices, series folders and multi-frame files, in physical units.

Values come out in the units the modality's preprocessing expects (:func:`pixel_values`):

- CT in Hounsfield units (RescaleSlope/Intercept), PET in SUVbw (from the dose, half-life, injection and scan times
  and the patient weight), MR in the scanner's rescaled units (the MRI preprocessing normalises by percentiles);
- every other modality (ophthalmic tomography ``OPT``, secondary capture, ``OT``, X-ray, ...) as a display image,
  like a PNG: the stored value's fraction of the range that ``BitsStored`` can hold, in [0, 1], inverted for
  ``MONOCHROME1`` (where the lowest value shows white). An 8-bit B-scan therefore reads as ``value / 255``, the same
  as the PNG it was made from, and a 16-bit one as ``value / 65535``. A linear rescale (slope, intercept) maps that
  range onto itself, so it does not change the fraction. Volumes are ``[k, rows, cols]``
with ``k`` ascending along the slice normal (row direction x column direction, from ImageOrientationPatient), and an
affine in RAS (nibabel's convention) for the index order ``(i=col, j=row, k)``.

Every problem raises :class:`~hdhkd_monai.errors.BadInputError` naming the file or folder: unreadable or
truncated files, mixed series (several SeriesInstanceUIDs, orientations or shapes), missing or duplicated slices
(irregular spacing along the normal), and for PET each tag that SUV needs.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import math
import re
from datetime import date
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from hdhkd_monai.data.bad_files import BadFileLog
from hdhkd_monai.errors import BadInputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Modalities read in physical units (HU, SUVbw, MR scanner units); every other one is a display image.
PHYSICAL_MODALITIES = ("CT", "PT", "MR")
# Tolerance on slice gaps: a gap further than this from the median gap means a missing or extra slice.
_GAP_TOLERANCE = 0.1


class DicomVolume(NamedTuple):
    """A volume read from DICOM: ``array`` float32 [k, rows, cols] (:func:`pixel_values`), ``affine`` RAS for the
    index order (i=col, j=row, k) or None, and ``display`` True when the values are display fractions in [0, 1]."""

    array: np.ndarray
    affine: np.ndarray | None
    display: bool


def read_dataset(path: str | Path) -> Dataset:
    """``pydicom.dcmread`` plus decoding of the pixel data (so a truncated file fails here, not later), with errors
    naming the file."""
    try:
        ds = pydicom.dcmread(path)
        ds.pixel_array
    except Exception as exc:  # pydicom raises many types for a bad file
        raise BadInputError(path, f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BadInputError(path, f"colour DICOM ({ds.PhotometricInterpretation}); a grey image is expected")
    return ds


def _require(ds: Dataset, keyword: str, path):
    value = ds.get(keyword)
    if value is None or value == "":
        tag = pydicom.datadict.tag_for_keyword(keyword)
        raise BadInputError(path, f"SUV needs DICOM tag {keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}), which is "
                                  "missing or empty")
    return value


def _clock(value: str) -> float:
    """DICOM TM ``HHMMSS.ffffff`` (trailing parts optional, old-style colons allowed) -> seconds after midnight."""
    value = re.match(r"[0-9.]*", str(value).strip().replace(":", "")).group()
    return int(value[0:2]) * 3600 + int(value[2:4] or 0) * 60 + float(value[4:] or 0)


def _elapsed(start_dt: str | None, start_tm: str, end_date: str | None, end_tm: str) -> float:
    """Seconds from injection to the scan reference time: with dates when both are known, else by time of day (a
    scan time before the injection time means the scan ran past midnight)."""
    if start_dt and len(str(start_dt).strip()) >= 10 and end_date:
        days = (date.fromisoformat(_iso(end_date)) - date.fromisoformat(_iso(str(start_dt)[:8]))).days
        return days * 86400 + _clock(end_tm) - _clock(str(start_dt).strip()[8:])
    delta = _clock(end_tm) - _clock(start_tm)
    return delta + 86400 if delta < 0 else delta


def _iso(da: str) -> str:
    da = str(da).strip()
    return f"{da[0:4]}-{da[4:6]}-{da[6:8]}"


def suv_bw_factor(ds: Dataset, path: str | Path) -> float:
    """Factor from PET activity concentration (Bq/mL) to SUVbw: ``weight_g / dose_at_scan_Bq``.

    The injected dose (RadionuclideTotalDose) is decay-corrected with RadionuclideHalfLife from the injection
    (RadiopharmaceuticalStartDateTime or RadiopharmaceuticalStartTime) to the time the image values refer to, per
    DecayCorrection: ``START`` (the default) -> SeriesTime (AcquisitionTime when absent), ``ADMIN`` -> no decay,
    ``NONE`` -> this image's AcquisitionTime. Units must be BQML. Raises naming the missing tag and the file.
    """
    units = str(_require(ds, "Units", path)).upper()
    if units != "BQML":
        raise BadInputError(path, f"SUV needs activity concentration (Units BQML), got Units {units}")
    weight_kg = float(_require(ds, "PatientWeight", path))
    info = _require(ds, "RadiopharmaceuticalInformationSequence", path)
    if len(info) == 0:
        raise BadInputError(path, "SUV needs RadiopharmaceuticalInformationSequence, which is empty")
    info = info[0]
    dose = float(_require(info, "RadionuclideTotalDose", path))
    half_life = float(_require(info, "RadionuclideHalfLife", path))
    if weight_kg <= 0 or dose <= 0 or half_life <= 0:
        raise BadInputError(path, f"SUV needs positive PatientWeight, RadionuclideTotalDose and RadionuclideHalfLife "
                                  f"(got {weight_kg}, {dose}, {half_life})")
    correction = str(ds.get("DecayCorrection", "START")).upper()
    if correction == "ADMIN":
        elapsed = 0.0
    else:
        start_dt = info.get("RadiopharmaceuticalStartDateTime")
        start_tm = str(start_dt)[8:] if start_dt else _require(info, "RadiopharmaceuticalStartTime", path)
        if correction == "NONE":
            end_date, end_tm = ds.get("AcquisitionDate"), _require(ds, "AcquisitionTime", path)
        elif ds.get("SeriesTime"):
            end_date, end_tm = ds.get("SeriesDate"), ds.SeriesTime
        else:
            end_date, end_tm = ds.get("AcquisitionDate"), _require(ds, "AcquisitionTime", path)
        try:
            elapsed = _elapsed(start_dt, start_tm, end_date, end_tm)
        except ValueError as exc:
            raise BadInputError(path, f"unreadable injection or scan date/time ({start_dt or start_tm} -> "
                                      f"{end_date} {end_tm}): {exc}") from exc
    return weight_kg * 1000.0 / (dose * math.exp(-math.log(2) * elapsed / half_life))


def _frame_rescale(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-frame (slope, intercept) arrays of an enhanced multi-frame file, or None when it has no such groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = int(ds.get("NumberOfFrames", 1))

    def pick(group):
        seq = group.get("PixelValueTransformationSequence") if group is not None else None
        return (float(seq[0].get("RescaleSlope", 1)), float(seq[0].get("RescaleIntercept", 0))) if seq else None

    default = pick(shared[0]) if shared else None
    values = [pick(per_frame[f]) if per_frame else None for f in range(frames)]
    if default is None and not any(values):
        return None
    values = [v or default or (1.0, 0.0) for v in values]
    return np.array([v[0] for v in values]), np.array([v[1] for v in values])


def to_physical(ds: Dataset, path: str | Path) -> np.ndarray:
    """Pixel data of ``ds`` in physical units, float32: [rows, cols] or [frames, rows, cols]."""
    array = ds.pixel_array
    groups = _frame_rescale(ds) if "RescaleSlope" not in ds else None
    if groups is not None:
        shape = (-1, 1, 1) if array.ndim == 3 else ()
        array = array * groups[0].reshape(shape) + groups[1].reshape(shape)
    else:
        # pydicom 3 (hdhkd-monai's pin), imported here so the package still imports beside pydicom 2, which the
        # MONAI Label environment needs (docs/monailabel.md); there DICOM slices fail here, other images work.
        from pydicom.pixels import apply_rescale

        array = apply_rescale(array, ds)
    array = array.astype(np.float32)
    if ds.get("Modality") == "PT":
        array *= np.float32(suv_bw_factor(ds, path))
    return array


def is_display_image(ds: Dataset) -> bool:
    """True when ``ds`` holds display intensities (read as a fraction of the stored range), not physical units."""
    return str(ds.get("Modality", "")).upper() not in PHYSICAL_MODALITIES


def holds_display_image(path: str | Path) -> bool:
    """:func:`is_display_image` from the header of the DICOM file ``path`` alone (False for other files)."""
    path = Path(path)
    if path.suffix.lower() != ".dcm":
        return False
    try:
        return is_display_image(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]))
    except Exception as exc:  # pydicom raises many types for a bad file
        raise BadInputError(path, f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc


def display_fraction(ds: Dataset) -> np.ndarray:
    """Stored pixel values of ``ds`` as float32 fractions of the range ``BitsStored`` can hold ([0, 1]; signed data
    from its most negative value), inverted for MONOCHROME1, so that bright shows bright as in a PNG."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    low = -(2 ** (bits - 1)) if int(ds.get("PixelRepresentation", 0)) == 1 else 0
    fraction = (ds.pixel_array.astype(np.float64) - low) / (2**bits - 1)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        fraction = 1.0 - fraction
    return fraction.astype(np.float32)


def pixel_values(ds: Dataset, path: str | Path) -> np.ndarray:
    """Pixel data of ``ds`` as float32 in the units its modality is read in: :func:`to_physical` for
    :data:`PHYSICAL_MODALITIES`, else :func:`display_fraction` (see the module's docstring)."""
    return display_fraction(ds) if is_display_image(ds) else to_physical(ds, path)


def read_slice(path: str | Path) -> np.ndarray:
    """One single-frame DICOM file as a float32 [rows, cols] image (:func:`pixel_values`: HU, SUVbw, MR units, or a
    display image's fraction of its stored range)."""
    ds = read_dataset(path)
    if int(ds.get("NumberOfFrames", 1)) != 1:
        raise BadInputError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames) where one slice is expected; "
                                  "split it with python -m hdhkd_monai.data.slices")
    return pixel_values(ds, path)


def _axes(orientation, path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if orientation is None or len(orientation) != 6:
        raise BadInputError(path, "ImageOrientationPatient (0020,0037) is missing; slices cannot be ordered")
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return row, col, np.cross(row, col)


def _ordered(positions: np.ndarray, normal: np.ndarray, names: list[str], where) -> tuple[np.ndarray, float]:
    """Order of slices along ``normal`` and the regular spacing; raises on duplicates and gaps."""
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(order) < 2:
        return order, 1.0
    gaps = np.diff(along[order])
    median = float(np.median(gaps))
    for n, gap in enumerate(gaps):
        a, b = names[order[n]], names[order[n + 1]]
        if gap < 1e-3:
            raise BadInputError(where, f"two slices at the same position {along[order[n]]:.3f} mm: {a} and {b} "
                                       "(duplicate or mixed series)")
        if abs(gap - median) > _GAP_TOLERANCE * median + 0.01:
            raise BadInputError(where, f"irregular slice spacing: {gap:.3f} mm between {a} and {b} where the median "
                                       f"gap is {median:.3f} mm (missing slices?)")
    return order, median


def _affine(row, col, normal, spacing, slice_gap, origin) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0] = row * float(spacing[1])  # i runs along a row: column index
    lps[:3, 1] = col * float(spacing[0])  # j runs down a column: row index
    lps[:3, 2] = normal * slice_gap
    lps[:3, 3] = np.asarray(origin, float)
    return LPS_TO_RAS @ lps


def _series_files(folder: Path) -> list[Path]:
    """The files of a series folder: every visible file but DICOMDIR, in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR")


def is_series_folder(path: str | Path) -> bool:
    """True for a folder whose first two DICOM files (``.dcm`` or without suffix, in name order) carry
    ImagePositionPatient: slices of a volume, to be read with :func:`load_series`. A folder of 2-D DICOM images
    without positions (B-scans exported one by one, secondary captures) is not one."""
    path = Path(path)
    if not path.is_dir():
        return False
    positioned = 0
    for file in _series_files(path):
        if file.suffix.lower() not in (".dcm", "") or not pydicom.misc.is_dicom(file):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        except Exception:  # unreadable: not a series, and the image reader names the file
            return False
        if "ImagePositionPatient" not in ds:
            return False
        positioned += 1
        if positioned == 2:
            return True
    return False


def load_series(folder: str | Path, skip_bad: bool = False) -> DicomVolume:
    """A folder holding one DICOM series (one single-frame file per slice) -> :class:`DicomVolume`.

    Files are ordered by ImagePositionPatient along the slice normal (file names and InstanceNumber are ignored).
    ``skip_bad=True`` skips unreadable files (logged, counted); series-level problems (mixed series, missing
    slices) always raise, naming the folder. A DICOMDIR file and hidden files are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(folder, "DICOM series folder not found")
    files = _series_files(folder)
    if not files:
        raise BadInputError(folder, "empty DICOM series folder")
    log, datasets, names = BadFileLog(skip_bad), [], []
    for path in files:
        with log.guard(path):
            ds = read_dataset(path)
            if int(ds.get("NumberOfFrames", 1)) != 1:
                raise BadInputError(path, "multi-frame file inside a series folder")
            datasets.append(ds)
            names.append(path.name)
    log.summary(f"DICOM files in {folder}")
    if not datasets:
        raise BadInputError(folder, "no readable DICOM files")
    first = datasets[0]
    for key in ("SeriesInstanceUID", "ImageOrientationPatient", "Modality"):
        values = {str(ds.get(key)) for ds in datasets}
        if len(values) > 1:
            odd = next(n for n, ds in zip(names, datasets) if str(ds.get(key)) != str(first.get(key)))
            raise BadInputError(folder, f"mixed series: {len(values)} different {key} values ({names[0]} vs {odd})")
    for name, ds in zip(names, datasets):
        if ds.pixel_array.shape != first.pixel_array.shape:
            raise BadInputError(folder / name, f"slice shape {ds.pixel_array.shape} differs from "
                                               f"{first.pixel_array.shape} of {names[0]} (mixed series)")
    volume = np.stack([pixel_values(ds, folder / n) for n, ds in zip(names, datasets)])
    display = is_display_image(first)
    if len(datasets) == 1 and "ImagePositionPatient" not in first:
        return DicomVolume(volume, None, display)
    row, col, normal = _axes(first.get("ImageOrientationPatient"), folder / names[0])
    for name, ds in zip(names, datasets):
        if ds.get("ImagePositionPatient") is None:
            raise BadInputError(folder / name, "ImagePositionPatient (0020,0032) is missing; slices cannot be ordered")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order, gap = _ordered(positions, normal, names, folder)
    spacing = first.get("PixelSpacing", (1.0, 1.0))
    return DicomVolume(volume[order], _affine(row, col, normal, spacing, gap, positions[order[0]]), display)


def load_multiframe(path: str | Path) -> DicomVolume:
    """A multi-frame DICOM file (enhanced CT/MR/PET, ophthalmic tomography) -> :class:`DicomVolume`
    ([frames, rows, cols]). Frames are ordered along the normal when per-frame positions exist, else kept in file order
    (e.g. the B-scans of an OCT volume)."""
    ds = read_dataset(path)
    volume, display = pixel_values(ds, path), is_display_image(ds)
    if volume.ndim == 2:
        volume = volume[None]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    try:
        positions = np.array([[float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient] for g in per_frame])
        orientation = shared[0].PlaneOrientationSequence[0].ImageOrientationPatient
        spacing = shared[0].PixelMeasuresSequence[0].PixelSpacing
    except (AttributeError, IndexError, TypeError, KeyError):
        return DicomVolume(volume, None, display)
    if len(positions) != len(volume):
        raise BadInputError(path, f"{len(positions)} frame positions for {len(volume)} frames")
    row, col, normal = _axes(orientation, path)
    order, gap = _ordered(positions, normal, [f"frame {i}" for i in range(len(volume))], path)
    return DicomVolume(volume[order], _affine(row, col, normal, spacing, gap, positions[order[0]]), display)
