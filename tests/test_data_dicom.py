"""DICOM in physical units: HU from slope/intercept, SUVbw from the dose tags, series ordering and series errors.

The writers at the top build small valid DICOM files with pydicom; test_data_slices.py reuses them.
"""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from hdhkd_monai.data import dicom
from hdhkd_monai.errors import BadInputError

PET_TAGS = dict(weight_kg=70.0, dose_bq=370e6, half_life_s=6586.2, injection="100000", series_time="110000")


def make_dataset(pixels: np.ndarray, modality: str = "CT", series_uid: str | None = None, z: float | None = 0.0,
                 slope: float = 1.0, intercept: float = -1024.0) -> Dataset:
    """A single-frame (pixels [r, c]) or multi-frame (pixels [n, r, c]) int16 DICOM dataset, axial orientation."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    pet = modality == "PT"
    ds.file_meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage if pet else CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.8, 0.8]
    if z is not None:
        ds.ImagePositionPatient = [-10.0, -20.0, z]
    if modality == "PT":
        ds.Units, ds.PatientWeight, ds.DecayCorrection = "BQML", PET_TAGS["weight_kg"], "START"
        ds.SeriesTime = PET_TAGS["series_time"]
        info = Dataset()
        info.RadionuclideTotalDose = PET_TAGS["dose_bq"]
        info.RadionuclideHalfLife = PET_TAGS["half_life_s"]
        info.RadiopharmaceuticalStartTime = PET_TAGS["injection"]
        ds.RadiopharmaceuticalInformationSequence = [info]
    return ds


def write_series(folder, volume: np.ndarray, modality: str = "CT", spacing: float = 2.5, seed: int = 0,
                 slope: float = 1.0, intercept: float = -1024.0) -> list:
    """Write ``volume`` [k, r, c] (stored values) as one file per slice, in shuffled file-name order with
    InstanceNumber reversed, so only ImagePositionPatient gives the right order. Returns the paths by slice."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    names = np.random.default_rng(seed).permutation(len(volume))
    paths = []
    for k, pixels in enumerate(volume):
        ds = make_dataset(pixels, modality, uid, z=30.0 + spacing * k, slope=slope, intercept=intercept)
        ds.InstanceNumber = len(volume) - k
        path = folder / f"IM{names[k]:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stored_volume(shape=(5, 6, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.int16)


def hand_suv_factor(elapsed_s: float) -> float:
    decayed_dose = PET_TAGS["dose_bq"] * 0.5 ** (elapsed_s / PET_TAGS["half_life_s"])
    return PET_TAGS["weight_kg"] * 1000 / decayed_dose


def test_pydicom_ct_small_is_read_in_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = dicom.read_slice(path)
    assert hu.shape == (ds.Rows, ds.Columns) and hu.dtype == np.float32
    np.testing.assert_array_equal(hu, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert hu.min() < -800  # air around the phantom is negative HU, stored values are not


def test_series_sorted_by_position_with_hu(tmp_path):
    volume = stored_volume()
    write_series(tmp_path / "s", volume, slope=2.0, intercept=-1000.0)
    array, affine = dicom.load_series(tmp_path / "s")
    np.testing.assert_array_equal(array, volume * 2.0 - 1000.0)
    # RAS affine of an axial LPS series: i -> -x, j -> -y, k -> +z at 2.5 mm, origin flipped in x and y.
    np.testing.assert_allclose(affine[:3, :3], np.diag([-0.8, -0.8, 2.5]))
    np.testing.assert_allclose(affine[:3, 3], [10.0, 20.0, 30.0])


def test_series_reversed_normal_still_ascends_along_normal(tmp_path):
    """With the column direction flipped the normal points to -z: slices must come out in descending z."""
    volume = stored_volume()
    paths = write_series(tmp_path / "s", volume)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
        ds.save_as(path)
    array, _ = dicom.load_series(tmp_path / "s")
    np.testing.assert_array_equal(array, volume[::-1] - 1024.0)


def test_missing_slice_is_an_error_naming_the_folder_and_neighbours(tmp_path):
    paths = write_series(tmp_path / "s", stored_volume())
    paths[2].unlink()
    with pytest.raises(BadInputError, match="irregular slice spacing") as err:
        dicom.load_series(tmp_path / "s")
    assert err.value.path == tmp_path / "s"
    assert paths[1].name in str(err.value) and paths[3].name in str(err.value)


def test_mixed_series_and_shapes_are_errors(tmp_path):
    write_series(tmp_path / "s", stored_volume())
    make_dataset(stored_volume((1, 6, 7))[0], z=100.0).save_as(tmp_path / "s" / "other.dcm", enforce_file_format=True)
    with pytest.raises(BadInputError, match="mixed series: 2 different SeriesInstanceUID"):
        dicom.load_series(tmp_path / "s")
    write_series(tmp_path / "t", stored_volume())
    odd = sorted((tmp_path / "t").iterdir())[0]
    ds = pydicom.dcmread(odd)
    ds.Rows, ds.PixelData = 5, np.zeros((5, 7), "<i2").tobytes()
    ds.save_as(odd)
    with pytest.raises(BadInputError, match="differs from"):
        dicom.load_series(tmp_path / "t")


def test_unreadable_file_named_and_skippable(tmp_path, caplog):
    volume = stored_volume()
    write_series(tmp_path / "s", volume)
    (tmp_path / "s" / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(BadInputError, match="unreadable DICOM") as err:
        dicom.load_series(tmp_path / "s")
    assert err.value.path.name == "notes.txt"
    array, _ = dicom.load_series(tmp_path / "s", skip_bad=True)
    np.testing.assert_array_equal(array, volume - 1024.0)
    assert "skipped 1 bad DICOM files" in caplog.text


def test_truncated_slice_is_named(tmp_path):
    paths = write_series(tmp_path / "s", stored_volume())
    paths[3].write_bytes(paths[3].read_bytes()[:-40])
    with pytest.raises(BadInputError, match="unreadable DICOM") as err:
        dicom.load_series(tmp_path / "s")
    assert err.value.path == paths[3]


def test_multiframe_sorted_by_per_frame_positions(tmp_path):
    volume = stored_volume()
    order = np.array([3, 0, 4, 1, 2])  # frame f holds slice order[f]
    ds = make_dataset(volume[order], z=None, slope=1.0, intercept=0.0)
    del ds.RescaleSlope, ds.RescaleIntercept  # enhanced files carry it in the functional groups
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.8, 0.8]
    shared.PixelValueTransformationSequence = [Dataset()]
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        group = Dataset()
        group.PlanePositionSequence = [Dataset()]
        group.PlanePositionSequence[0].ImagePositionPatient = [0, 0, 2.0 * k]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    array, affine = dicom.load_multiframe(tmp_path / "mf.dcm")
    np.testing.assert_array_equal(array, volume - 1024.0)
    assert affine[2, 2] == pytest.approx(2.0)


def test_suv_matches_hand_computation(tmp_path):
    volume = stored_volume((2, 4, 4))
    write_series(tmp_path / "pet", volume, modality="PT", slope=0.5, intercept=0.0)
    array, _ = dicom.load_series(tmp_path / "pet")
    expected = volume * 0.5 * hand_suv_factor(3600.0)  # injection 10:00:00, series 11:00:00
    np.testing.assert_allclose(array, expected, rtol=1e-5)


@pytest.mark.parametrize("change, elapsed", [
    ({"DecayCorrection": "ADMIN"}, 0.0),
    ({"SeriesTime": "003000", "SeriesDate": "20240102"}, 14.5 * 3600),  # past midnight, with dates
])
def test_suv_decay_reference(tmp_path, change, elapsed):
    ds = make_dataset(stored_volume((1, 4, 4))[0], modality="PT")
    for key, value in change.items():
        setattr(ds, key, value)
    if "SeriesDate" in change:
        ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240101100000"
    assert dicom.suv_bw_factor(ds, "x.dcm") == pytest.approx(hand_suv_factor(elapsed), rel=1e-9)


@pytest.mark.parametrize("tag, nested", [("PatientWeight", False), ("RadionuclideTotalDose", True),
                                         ("RadionuclideHalfLife", True), ("RadiopharmaceuticalStartTime", True),
                                         ("Units", False)])
def test_missing_pet_tag_is_named_with_the_file(tmp_path, tag, nested):
    ds = make_dataset(stored_volume((1, 4, 4))[0], modality="PT")
    delattr(ds.RadiopharmaceuticalInformationSequence[0] if nested else ds, tag)
    ds.save_as(tmp_path / "pet.dcm", enforce_file_format=True)
    with pytest.raises(BadInputError, match=tag) as err:
        dicom.read_slice(tmp_path / "pet.dcm")
    assert err.value.path == tmp_path / "pet.dcm"


def test_bundled_mr_file_alone_is_a_one_slice_series(tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "one" / "MR_small.dcm")
    array, affine = dicom.load_series(tmp_path / "one")
    assert array.shape == (1, 64, 64) and affine is not None
    np.testing.assert_array_equal(array[0], pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array)
