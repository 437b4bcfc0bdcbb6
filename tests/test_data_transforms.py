"""The preprocessing lists of the bundle and its data-set presets: orientation, colour modes, units (HU, SUV, percentiles), real files, bad input."""

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.transforms import CT_WINDOWS
from hdhkd_monai.launcher import preprocessing

REAL_SAMPLES = {  # data set -> (presets, files per test folder)
    "neh-oct": ((), 2), "oct2017": ((), 2), "brainmri": (("br35h",), 6), "chestct": (("chest_ct_png",), 2)}


def bad_input(excinfo) -> BadInputError:
    """The BadInputError behind MONAI's 'applying transform' wrapper."""
    error = excinfo.value
    while error is not None and not isinstance(error, BadInputError):
        error = error.__cause__
    assert error is not None, f"no BadInputError behind {excinfo.value!r}"
    return error


def check_output(image: torch.Tensor, size: int) -> None:
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_orientation_of_an_asymmetric_png(tmp_path):
    """A 40-row x 80-column image bright in its top 10 rows x left 60 columns: resized to 40 x 40 the bright band is
    rows 0-9 x cols 0-29. Read transposed (80 x 40) it would become rows 0-29 x cols 0-9."""
    array = np.zeros((40, 80), np.uint8)
    array[:10, :60] = 255
    Image.fromarray(array).save(tmp_path / "band.png")
    image = preprocessing(image_size=40)({"image": str(tmp_path / "band.png")})["image"]
    check_output(image, 40)
    assert image[0, :8, :28].min() > 0.9
    assert image[0, 12:, :].max() < 0.1 and image[0, :, 32:].max() < 0.1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I;16"])
def test_colour_modes_become_the_same_grey(tmp_path, mode):
    grey = np.random.default_rng(0).integers(0, 256, (30, 50)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "other.png")  # same grey at 16 bits
    else:
        Image.fromarray(grey).convert(mode).save(tmp_path / "other.png")
    pipeline = preprocessing(image_size=30)
    reference = pipeline({"image": str(tmp_path / "grey.png")})["image"]
    other = pipeline({"image": str(tmp_path / "other.png")})["image"]
    torch.testing.assert_close(other, reference, atol=1e-6, rtol=0)


def test_grey_jpeg_stored_as_rgb_matches_its_grey_version(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (32, 32)).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    out = [preprocessing(["br35h"], 32)({"image": str(tmp_path / n)})["image"] for n in ("rgb.png", "grey.png")]
    torch.testing.assert_close(out[0], out[1])


def test_mask_is_binary_and_aligned(tmp_path):
    image = np.zeros((64, 64), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[40:50, 5:20] = 255
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = preprocessing(image_size=32)({"image": str(tmp_path / "i.png"), "mask": str(tmp_path / "m.png")})
    assert out["mask"].shape == (1, 32, 32) and set(out["mask"].unique().tolist()) == {0.0, 1.0}
    rows, cols = torch.nonzero(out["mask"][0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 24, 3, 9)


def test_ct_small_dicom_window_in_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for name, (low, high) in CT_WINDOWS.items():
        out = preprocessing(["chest_ct"], ds.Rows, window=name)({"image": path})["image"]
        check_output(out, ds.Rows)
        np.testing.assert_allclose(out[0].numpy(), np.clip((hu - low) / (high - low), 0, 1), atol=1e-6)


def test_mr_small_dicom_percentiles():
    path = get_testdata_file("MR_small.dcm")
    values = pydicom.dcmread(path).pixel_array.astype(np.float64)
    low, high = np.percentile(values, [2, 98])
    out = preprocessing(["br35h"], 64, **{"intensity#0#lower": 2, "intensity#0#upper": 98})({"image": path})["image"]
    np.testing.assert_allclose(out[0].numpy(), np.clip((values - low) / (high - low), 0, 1), atol=1e-5)


def test_pet_slice_scales_suv(tmp_path):
    suv = np.linspace(0, 12, 16 * 16, dtype=np.float32).reshape(16, 16)
    np.save(tmp_path / "suv.npy", suv)
    out = preprocessing(["pet"], 16, suv_max=8.0)({"image": str(tmp_path / "suv.npy")})["image"]
    np.testing.assert_allclose(out[0].numpy(), np.clip(suv / 8.0, 0, 1), atol=1e-6)


def test_resize_antialiases_when_shrinking(tmp_path):
    """A one-pixel checkerboard shrunk 128 -> 48 blurs to mid grey (std ~0.01); plain bilinear aliases (std ~0.15)."""
    board = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(board).save(tmp_path / "board.png")
    out = preprocessing(image_size=48)({"image": str(tmp_path / "board.png")})["image"]
    assert abs(float(out.mean()) - 0.5) < 0.02 and float(out.std()) < 0.05


def test_real_images_of_every_shared_set(shared_data):
    for name, (presets, per_folder) in REAL_SAMPLES.items():
        pipeline = preprocessing(presets, 256)
        folders = sorted(p for p in (shared_data / name).glob("*/*") if p.is_dir())
        assert folders, f"no class folders in {shared_data / name}"
        for folder in folders:
            for path in sorted(folder.iterdir())[:per_folder]:
                image = pipeline({"image": str(path)})["image"]
                check_output(image, 256)
                assert float(image.std()) > 0.02, path


def test_real_rgba_png_with_jpg_name(shared_data):
    path = shared_data / "brainmri" / "train" / "normal" / "No15.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        luma = np.asarray(image.convert("L"), np.float32)
    out = preprocessing(image_size=256)({"image": str(path)})["image"]
    expected = torch.nn.functional.interpolate(torch.from_numpy(luma / 255)[None, None], (256, 256),
                                               mode="bilinear", antialias=True)[0, 0]
    assert float((out[0] - expected).abs().mean()) < 0.01


def test_display_image_rejected_by_hu_window(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ct.png")
    with pytest.raises(RuntimeError) as excinfo:
        preprocessing(["chest_ct"], 64)({"image": str(tmp_path / "ct.png")})
    assert bad_input(excinfo).path == tmp_path / "ct.png" and "expects HU" in str(bad_input(excinfo))
    with pytest.raises(RuntimeError) as excinfo:
        preprocessing(["pet"], 64)({"image": str(tmp_path / "ct.png")})
    assert "expects SUV" in str(bad_input(excinfo))
    for pipeline in (preprocessing(["chest_ct_png"], 64), preprocessing(image_size=64)):  # display-image settings
        assert pipeline({"image": str(tmp_path / "ct.png")})["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("case", ["truncated", "missing", "nan", "volume"])
def test_bad_files_are_named(tmp_path, case):
    path = tmp_path / ("x.png" if case in ("truncated", "missing") else "x.npy")
    if case == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "nan":
        np.save(path, np.array([[0.0, np.nan], [1.0, 1.0]], np.float32))
    elif case == "volume":
        np.save(path, np.zeros((3, 4, 4), np.float32))
    with pytest.raises(RuntimeError) as excinfo:
        preprocessing(image_size=64)({"image": str(path)})
    error = bad_input(excinfo)
    assert error.path == path
    assert {"truncated": "unreadable", "missing": "not found", "nan": "NaN", "volume": "expected a 2-D"}[case] in str(
        error)
