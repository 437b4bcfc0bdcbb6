"""configs/<data set>.json: only contract keys, and their preprocessing runs on a file of that modality when merged
over the bundle's base config the way `python -m monai.bundle run --config_file "[base, override]"` merges them."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from test_data_dicom import make_dataset

from hdhkd_monai.data.phantom import make_bscan
from hdhkd_monai.launcher import read_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
BASE = REPO_ROOT / "bundle" / "hdhkd_oct_anomaly" / "configs" / "train.json"
# the keys a data-set preset may set: the bundle's, and the parameters of its own intensity list (window, suv_max)
CONTRACT_KEYS = {"bundle_root", "dataset_dir", "datalist", "output_dir", "ckpt_dir", "image_size", "image_reader",
                 "intensity", "intensity_range", "window", "suv_max", "modality", "backbone", "teacher_ckpt",
                 "max_iterations", "batch_size", "val_interval"}


def sample(name: str, folder) -> str:
    """A file of the modality each config is for."""
    if name == "oct2017":
        Image.fromarray(make_bscan(96, "LESION", np.random.default_rng(0))[0]).save(folder / "b.jpeg")
        return str(folder / "b.jpeg")
    if name == "oct2022":
        np.save(folder / "b.npy", make_bscan(96, None, np.random.default_rng(1))[0] / np.float32(255))
        return str(folder / "b.npy")
    if name == "br35h":
        mr = make_bscan(64, None, np.random.default_rng(2))[0]
        Image.fromarray(np.stack([mr] * 3, -1)).save(folder / "y0.jpg")  # Br35H slices are RGB JPEGs
        return str(folder / "y0.jpg")
    if name == "chest_ct":
        return get_testdata_file("CT_small.dcm")
    if name == "chest_ct_png":  # a windowed export, as the Kaggle chest CT slices: RGB, 8 bits
        ct = make_bscan(64, None, np.random.default_rng(4))[0]
        Image.fromarray(np.stack([ct] * 3, -1)).save(folder / "ct.png")
        return str(folder / "ct.png")
    pixels = np.random.default_rng(3).integers(0, 30000, (32, 32)).astype(np.int16)
    make_dataset(pixels, modality="PT", intercept=0.0).save_as(folder / "pet.dcm", enforce_file_format=True)
    return str(folder / "pet.dcm")


@pytest.mark.parametrize("name", ["oct2017", "oct2022", "br35h", "chest_ct", "chest_ct_png", "pet"])
def test_config_preprocessing_runs(tmp_path, name):
    override = CONFIGS / f"{name}.json"
    assert set(json.loads(override.read_text())) <= CONTRACT_KEYS
    assert BASE.is_file(), f"the bundle's base config {BASE} is missing"
    parser = read_config([BASE, override], dataset_dir=str(tmp_path))
    assert parser.get_parsed_content("datalist") == f"{tmp_path}/datalist.json"
    image = parser.get_parsed_content("preprocessing")({"image": sample(name, tmp_path)})["image"]
    size = parser.get_parsed_content("image_size")
    assert image.shape == (3, size, size) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert float(image.std()) > 0.05  # a real picture, not a blank produced by a wrong window
