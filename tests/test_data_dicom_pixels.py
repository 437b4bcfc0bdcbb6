"""DICOM pixel values as the preprocessing expects them: display images (OCT B-scans, secondary captures) read like
the PNG they were made from (bit depth, rescale, MONOCHROME1), physical units kept for CT, out-of-range values named,
and DICOM series folders at inference read as one volume, like NIfTI.

The files are written with pydicom from phantom B-scans (``hdhkd_monai.data.phantom``) or random stored values.
"""

import re

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from test_data_dicom import make_dataset, stored_volume, write_series

from hdhkd_monai.anomaly_map import image_score
from hdhkd_monai.data import dicom
from hdhkd_monai.data.datalist import image_items
from hdhkd_monai.data.phantom import make_bscan
from hdhkd_monai.data.slices import map_in_source_space, slice_inputs
from hdhkd_monai.launcher import preprocessing
from hdhkd_monai.errors import BadInputError, one_line_error
from hdhkd_monai.data.containment import output_name
from hdhkd_monai.networks import HDHKD, PDN, AnomalyMapNet

SIZE = 64


def display_dataset(stored: np.ndarray, bits: int = 8, photometric: str = "MONOCHROME2", modality: str = "OPT",
                    position: float | None = None, series_uid: str | None = None) -> Dataset:
    """An unsigned single-frame DICOM display image holding ``stored`` [rows, cols] with ``bits`` stored bits."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = modality, series_uid or generate_uid()
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    allocated = 8 if bits <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint8 if allocated == 8 else "<u2").tobytes()
    if position is not None:
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0.0, 0.0, position]
        ds.PixelSpacing = [0.5, 0.5]
    return ds


def bscan(seed: int, bits: int) -> np.ndarray:
    """A phantom B-scan (DRUSEN) at ``bits`` bits: uint8, or uint16 spread over the whole 16-bit range."""
    image, _ = make_bscan(SIZE, "DRUSEN", np.random.default_rng(seed))
    if bits == 8:
        return image
    return image.astype(np.uint16) * 257 + np.random.default_rng(seed).integers(0, 257, image.shape, dtype=np.uint16)


@pytest.fixture(scope="module")
def scorer():
    """A tiny untrained HDHKD map network and the score inference gives its map (the maximum)."""
    torch.manual_seed(0)
    net = AnomalyMapNet(HDHKD(PDN(out_channels=8), num_modules=1, fusion_channels=16, encoder_channels=32,
                              decoder_channels=16, d_state=4)).eval()

    def score(image: torch.Tensor) -> float:
        with torch.no_grad():
            return float(image_score(net(image.as_tensor()[None]))[0])

    return score


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_display_dicom_scores_like_the_png_it_was_made_from(tmp_path, scorer, bits, photometric):
    """An OCT B-scan written as PNG and as DICOM (8 or 16 bits; MONOCHROME1 stores max - value, which shows the same
    picture) goes through the OCT preprocessing to the same tensor and the same score."""
    pixels = bscan(1, bits)
    Image.fromarray(pixels).save(tmp_path / "b.png")
    top = 2**bits - 1
    stored = pixels if photometric == "MONOCHROME2" else top - pixels
    display_dataset(stored, bits, photometric).save_as(tmp_path / "b.dcm", enforce_file_format=True)
    pipeline = preprocessing(image_size=SIZE)
    from_png, from_dicom = (pipeline({"image": str(tmp_path / name)})["image"] for name in ("b.png", "b.dcm"))
    torch.testing.assert_close(from_dicom.as_tensor(), from_png.as_tensor(), rtol=0, atol=1e-6)
    assert abs(scorer(from_dicom) - scorer(from_png)) < 1e-3
    assert from_png.std() > 0.05  # a real picture, not a flat clipped one


def test_display_values_are_fractions_of_the_stored_bits_whatever_the_rescale(tmp_path):
    """12 bits stored in 16: 4095 is white; a slope and intercept do not change a display image; CT stays in HU
    (its photometric interpretation is a display setting only)."""
    stored = np.array([[0, 1024, 4095]], np.uint16)
    ds = display_dataset(stored, bits=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -100.0
    ds.save_as(tmp_path / "twelve.dcm", enforce_file_format=True)
    np.testing.assert_allclose(dicom.read_slice(tmp_path / "twelve.dcm"), [[0, 1024 / 4095, 1]], rtol=1e-6)
    ct = make_dataset(np.array([[0, 1024, 3000]]), slope=1.0, intercept=-1024.0)
    ct.PhotometricInterpretation = "MONOCHROME1"
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(dicom.read_slice(tmp_path / "ct.dcm"), [[-1024, 0, 1976]])


def test_values_outside_the_expected_range_are_named_not_clipped(tmp_path):
    """0-255 values where [0, 1] is expected, HU without a window, a display image under a HU window: one named
    error each. Declaring the range scales instead."""
    np.save(tmp_path / "raw.npy", bscan(2, 8).astype(np.float32))
    assert_named(preprocessing(image_size=SIZE), tmp_path / "raw.npy",
                 r"raw.npy: pixel values \d+ to 2\d\d lie outside \[0, 1\].*intensity_range")
    scaled = preprocessing(image_size=SIZE, intensity_range=[0, 255])({"image": str(tmp_path / "raw.npy")})["image"]
    assert 0 <= float(scaled.min()) and float(scaled.max()) <= 1 and float(scaled.std()) > 0.05
    make_dataset(stored_volume((1, 8, 8))[0]).save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    assert_named(preprocessing(["chest_ct_png"], SIZE), tmp_path / "ct.dcm",
                 r"ct.dcm: pixel values -\d+ to \d+ lie outside.*need a window: use configs/chest_ct.json")
    display_dataset(bscan(2, 8)).save_as(tmp_path / "oct.dcm", enforce_file_format=True)
    assert_named(preprocessing(["chest_ct"], SIZE), tmp_path / "oct.dcm", r"oct.dcm: .*expects HU.*display image")


def assert_named(pipeline, path, pattern):
    """``pipeline`` on ``path`` fails with a one-line error (as the command line shows it) matching ``pattern``."""
    with pytest.raises(Exception) as err:
        pipeline({"image": str(path)})
    message = one_line_error(err.value)
    assert re.search(pattern, message), message

def test_a_dicom_series_folder_is_one_volume_at_inference_like_nifti(tmp_path):
    """A CT series folder (shuffled file names, dots in the folder name) beside a PNG and a folder of 2-D DICOM
    B-scans: the series is one input, cut into the same slices as the same volume in NIfTI, and its slice maps go
    back to the series' geometry; the 2-D DICOMs stay one input each."""
    scans = tmp_path / "scans"
    volume = stored_volume((4, 6, 7))
    series = scans / "1.2.840.99"
    write_series(series, volume, slope=1.0, intercept=-1024.0)
    Image.fromarray(bscan(3, 8)).save(scans / "b.png")
    (scans / "bscans").mkdir()
    for k in range(2):
        display_dataset(bscan(k, 8)).save_as(scans / "bscans" / f"{k}.dcm", enforce_file_format=True)
    items = image_items(scans, volumes=True)
    expected = (series, scans / "b.png", scans / "bscans" / "0.dcm", scans / "bscans" / "1.dcm")
    assert [item["image"] for item in items] == [str(p) for p in expected]
    assert output_name(series, scans) == series.relative_to(scans)

    hu, affine, display = dicom.load_series(series)
    assert not display
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), tmp_path / "same.nii.gz")
    from_series = slice_inputs(items[:1], tmp_path / "s", "ct")
    from_nifti = slice_inputs([{"image": str(tmp_path / "same.nii.gz")}], tmp_path / "n", "ct")
    assert [it["slice"] for it in from_series] == [0, 1, 2, 3] and from_series[0]["source"] == str(series)
    cut = np.stack([np.load(it["image"]) for it in from_series])
    np.testing.assert_allclose(cut, np.stack([np.load(it["image"]) for it in from_nifti]))
    array, back = map_in_source_space(cut, series, "ct")  # a "map" equal to the slices
    nifti_array, nifti_affine = map_in_source_space(cut, tmp_path / "same.nii.gz", "ct")
    np.testing.assert_allclose(back, nifti_affine)
    np.testing.assert_allclose(array, nifti_array)
    np.testing.assert_allclose(array, hu.transpose(2, 1, 0))


def test_a_series_folder_with_a_missing_slice_is_named_at_inference(tmp_path):
    paths = write_series(tmp_path / "series", stored_volume())
    paths[2].unlink()
    items = image_items(tmp_path / "series", volumes=True)
    assert items == [{"image": str(tmp_path / "series")}]
    with pytest.raises(BadInputError, match="irregular slice spacing"):
        slice_inputs(items, tmp_path / "slices", "ct")


def test_an_oct_dicom_series_reads_like_its_png_bscans(tmp_path):
    """B-scans stored as an 8-bit OPT series: OCT slices equal the PNGs' value / 255, not min-max stretched."""
    uid, frames = generate_uid(), [bscan(k, 8) for k in range(3)]
    (tmp_path / "oct").mkdir()
    for k, frame in enumerate(frames):
        display_dataset(frame, position=0.1 * k, series_uid=uid).save_as(tmp_path / "oct" / f"{k}.dcm",
                                                                         enforce_file_format=True)
    items = slice_inputs(image_items(tmp_path / "oct", volumes=True), tmp_path / "slices", "oct")
    np.testing.assert_allclose(np.stack([np.load(it["image"]) for it in items]),
                               np.stack(frames).astype(np.float32) / 255, rtol=0, atol=1e-7)
