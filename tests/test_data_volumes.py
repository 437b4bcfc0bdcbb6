"""Volumes in every format round-trip to the same [k, rows, cols] array; orientation, normalisation, bad input."""

import json
import os

import itk
import nibabel as nib
import numpy as np
import pytest
import tifffile
from nibabel.testing import data_path as nibabel_data
from test_data_dicom import PET_TAGS, hand_suv_factor, make_dataset, stored_volume, write_series

from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.modalities import MODALITIES, mri_units
from hdhkd_monai.data.volumes import Volume, read_volume, slices, suv_from_sidecar


def expected_volume() -> np.ndarray:
    """[k=5, rows=6, cols=7] with every voxel distinct, so any transposition or flip shows."""
    return np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)


def write_nifti(path, volume_krc: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(volume_krc.transpose(2, 1, 0), np.eye(4) if affine is None else affine), path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd", ".tif", ".npy"])
def test_every_file_format_round_trips(tmp_path, suffix):
    volume = expected_volume()
    path = tmp_path / f"vol{suffix}"
    if suffix.startswith(".nii"):
        write_nifti(path, volume)
    elif suffix in (".mha", ".nrrd"):
        itk.imwrite(itk.image_from_array(volume), str(path))
    elif suffix == ".tif":
        tifffile.imwrite(path, volume)
    else:
        np.save(path, volume)
    loaded = read_volume(path)
    assert loaded.array.dtype == np.float32 and loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded.array, volume)
    for index, image in slices(loaded.array, axis=0):
        np.testing.assert_array_equal(image, volume[index])


def test_dicom_series_and_multiframe_round_trip(tmp_path):
    volume = expected_volume()
    write_series(tmp_path / "series", volume, intercept=0.0)
    np.testing.assert_array_equal(read_volume(tmp_path / "series").array, volume)
    make_dataset(volume, z=None, intercept=0.0).save_as(tmp_path / "oct.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_volume(tmp_path / "oct.dcm").array, volume)  # frames kept in file order


def test_slices_along_each_axis():
    volume = expected_volume().astype(np.float32)
    assert [i for i, _ in slices(volume, axis=1)] == list(range(6))
    np.testing.assert_array_equal(dict(slices(volume, axis=1))[2], volume[:, 2, :])
    np.testing.assert_array_equal(dict(slices(volume, axis=2))[3], volume[:, :, 3])


def test_foreground_selection_skips_empty_slices():
    volume = np.zeros((4, 10, 10), np.float32)
    volume[1, :5] = 1.0  # half foreground
    volume[2, :1, :5] = 1.0  # 5 % foreground
    kept = [i for i, _ in slices(volume, 0, min_foreground=0.1, threshold=0.5)]
    assert kept == [1]
    assert [i for i, _ in slices(volume, 0, min_foreground=0.01, threshold=0.5)] == [1, 2]


def test_nifti_and_dicom_agree_after_lps_reorientation(tmp_path):
    """The same physical volume stored RAS in NIfTI and LPS in DICOM gives the same radiological slices.

    DICOM voxel (c, r, k) sits at LPS (c, r, k) with 1 mm spacing; the NIfTI has an identity-rotation RAS affine
    with origin (-(C-1), -(R-1), 0), so its voxel (i, j, k) sits at LPS (C-1-i, R-1-j, k): data[i, j, k] must
    hold V[k, R-1-j, C-1-i]."""
    volume = expected_volume()
    k, rows, cols = volume.shape
    ijk = np.empty((cols, rows, k), np.int16)
    for i in range(cols):
        for j in range(rows):
            ijk[i, j, :] = volume[:, rows - 1 - j, cols - 1 - i]
    affine = np.eye(4)
    affine[:3, 3] = [-(cols - 1), -(rows - 1), 0]
    nib.save(nib.Nifti1Image(ijk, affine), tmp_path / "ras.nii.gz")
    from_nifti = read_volume(tmp_path / "ras.nii.gz", orientation="LPS")
    np.testing.assert_array_equal(from_nifti.array, volume)
    assert nib.aff2axcodes(from_nifti.affine) == ("L", "P", "S")
    write_series(tmp_path / "lps", volume, intercept=0.0, spacing=1.0)
    np.testing.assert_array_equal(read_volume(tmp_path / "lps", orientation="LPS").array, volume)


def test_nibabel_bundled_anatomical_matches_nibabel_reorientation():
    path = os.path.join(nibabel_data, "anatomical.nii")
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
    ours = read_volume(path, orientation="LPS")
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                                nib.orientations.axcodes2ornt("LPS"))
    reference = image.as_reoriented(transform).get_fdata().transpose(2, 1, 0)
    np.testing.assert_array_equal(ours.array, reference)
    np.testing.assert_array_equal(read_volume(path).array, image.get_fdata().transpose(2, 1, 0))


def test_four_d_nifti_is_rejected_with_its_name():
    path = os.path.join(nibabel_data, "example4d.nii.gz")
    with pytest.raises(BadInputError, match=r"expected a 3-D volume, got 4 dimensions") as err:
        read_volume(path)
    assert str(err.value.path) == path


def test_singleton_time_axis_is_accepted(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 3, 2, 1), np.float32), np.eye(4)), tmp_path / "t1.nii")
    assert read_volume(tmp_path / "t1.nii").array.shape == (2, 3, 4)


def test_two_d_array_and_nan_nifti_are_rejected(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(BadInputError, match="expected a 3-D volume"):
        read_volume(tmp_path / "flat.npy")
    data = np.ones((4, 4, 3), np.float32)
    data[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(BadInputError, match="1 NaN") as err:
        read_volume(tmp_path / "nan.nii.gz")
    assert err.value.path == tmp_path / "nan.nii.gz"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".tif"])
def test_truncated_file_is_named(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    volume = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    if suffix.startswith(".nii"):
        write_nifti(path, volume)
    elif suffix == ".mha":
        itk.imwrite(itk.image_from_array(volume), str(path))
    else:
        tifffile.imwrite(path, volume)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInputError, match="unreadable volume") as err:
        read_volume(path)
    assert err.value.path == path


def test_oct_normalisation_by_type_and_mri_percentiles():
    array = np.array([[[0, 51, 255]]], np.float32)
    oct_unit = MODALITIES["oct"].slice_units(Volume(array, None, np.dtype(np.uint8), None))
    np.testing.assert_allclose(oct_unit, [[[0, 0.2, 1.0]]])
    mri = np.zeros((1, 10, 10), np.float32)
    mri[0, :5] = np.arange(50).reshape(5, 10) + 1  # 50 non-zero voxels 1..50, then background
    out = mri_units(Volume(mri, None, np.dtype(np.float32), None), percentiles=(10, 90))
    low, high = np.percentile(np.arange(1, 51), [10, 90])  # 5.9, 45.1: background excluded
    np.testing.assert_allclose(out[0, 0, :3], np.clip((np.array([1, 2, 3]) - low) / (high - low), 0, 1))
    np.testing.assert_allclose(out[0, 3, 0], (31 - low) / (high - low), rtol=1e-6)
    assert out.min() == 0 and out.max() == 1


def test_pet_nifti_sidecar_gives_suv(tmp_path):
    volume = stored_volume((2, 3, 4)).astype(np.float32)
    write_nifti(tmp_path / "pet.nii.gz", volume)
    sidecar = {"Units": "BQML", "PatientWeight": PET_TAGS["weight_kg"], "RadionuclideTotalDose": PET_TAGS["dose_bq"],
               "RadionuclideHalfLife": PET_TAGS["half_life_s"], "RadiopharmaceuticalStartTime": "100000",
               "SeriesTime": "113000"}
    (tmp_path / "pet.json").write_text(json.dumps(sidecar))
    suv = suv_from_sidecar(read_volume(tmp_path / "pet.nii.gz"))
    np.testing.assert_allclose(suv.array, volume * hand_suv_factor(5400.0), rtol=1e-5)
    del sidecar["PatientWeight"]
    (tmp_path / "pet.json").write_text(json.dumps(sidecar))
    with pytest.raises(BadInputError, match="PatientWeight") as err:
        suv_from_sidecar(read_volume(tmp_path / "pet.nii.gz"))
    assert err.value.path.name == "pet.json"
