"""Every data set config in ``configs/`` runs student training and evaluation through ``monai.bundle run``,
each on a tiny synthetic example written in the format that config expects (issue 4, "Done when").

- oct2017: phantom B-scans in the Kermany layout (PNG) and their datalist;
- oct2022: OCT volumes of phantom B-scans as uint8 NIfTI, cut into ``.npy`` B-scans by ``hdhkd_monai.data.slices``;
- br35h: grey PNG slices in ``no/`` and ``yes/`` and the Br35H datalist;
- chest_ct: CT DICOM series (stored values + RescaleIntercept = HU), sliced with ``--modality ct``;
- pet: PET DICOM series in Bq/mL with the dose tags, sliced into SUV with ``--modality pet``.

Each runs the bundle's default model, whose frozen pretrained teacher needs no distillation step; the PDN teacher
workflow of the paper configuration is covered by test_bundle_workflows.py.
"""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from test_data_dicom import hand_suv_factor, write_series

from hdhkd_monai.data import datalist as dl
from hdhkd_monai.data import slices
from hdhkd_monai.data.phantom import make_bscan, write_phantom
from conftest import REPO_ROOT as REPO
from hdhkd_monai.launcher import run_bundles

pytestmark = pytest.mark.slow

SIZE = 48  # pixels of the synthetic images and slices; the bundle resizes them to IMAGE_SIZE
IMAGE_SIZE = 64
COMMON = {"image_size": IMAGE_SIZE, "cache_rate": 1.0, "num_workers": 0, "log_interval": 1}
STUDENT = {
    "fusion_channels": 32,
    "encoder_channels": 64,
    "decoder_channels": 32,
    "num_modules": 1,
    "hdhkd#d_state": 4,
    "max_iterations": 2,
    "val_interval": 2,
    "batch_size": 2,
    "val_batch_size": 4,
}


def write_kermany_phantom(root):
    write_phantom(root, n_train=8, n_test_per_class=2, size=SIZE, seed=0)
    dl.write_datalist(dl.kermany_datalist(root), root / "datalist.json")


# ---- one tiny example per data set: each writes its files under ``root`` and returns the dataset_dir, the folder
# ---- of datalist.json that the config's "datalist" key points at.

def make_oct2017(root):
    write_kermany_phantom(root / "OCT2017")
    return root / "OCT2017"


def make_oct2022(root):
    """Volumes [B-scan, depth, A-scan] stored in NIfTI's (i, j, k) = (A-scan, depth, B-scan) order, as uint8."""
    volumes = {}
    for split, cls, names in (("train", "NORMAL", ("v0", "v1", "v2")), ("test", "NORMAL", ("v3",)),
                              ("test", "EDEMA", ("v4",))):
        for name in names:
            rng = np.random.default_rng([int(name[1:])])
            volume = np.stack([make_bscan(SIZE, None if cls == "NORMAL" else "FLUID", rng)[0] for _ in range(3)])
            path = root / "OCT2022" / split / cls / f"{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4)), path)
            volumes[name] = volume
    out = root / "OCT2022_slices"
    slices.main(["kermany", str(root / "OCT2022"), "--modality", "oct", "--axis", "0", "--out", str(out)])
    # the B-scans come out as stored, in the 8-bit display range like the OCT2017 JPEGs
    np.testing.assert_allclose(np.load(out / "v4" / "0001.npy"), volumes["v4"][1] / 255.0, rtol=1e-6)
    return out


def _brain_slice(rng, tumour: bool) -> np.ndarray:
    """A smooth grey head-like ellipse; a tumour is a bright spot in it."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    head = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.33) ** 2 < 1
    image = head * (0.4 + 0.3 * gaussian_filter(rng.random((SIZE, SIZE)), 3) / 0.5)
    if tumour:
        cy, cx = rng.uniform(0.35, 0.65, 2)
        image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < 0.08**2, 1.0, image)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_br35h(root):
    rng = np.random.default_rng(0)
    for cls, count in (("no", 8), ("yes", 3)):
        (root / "Br35H" / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_brain_slice(rng, cls == "yes")).save(root / "Br35H" / cls / f"{cls}{i}.png")
    # 5 normal slices in the training pool (4 training + 1 validation); 3 normal + 3 tumour test slices
    dl.main(["br35h", str(root / "Br35H"), "--n-train", "5", "--val-fraction", "0.2",
             "--out", str(root / "Br35H" / "datalist.json")])
    return root / "Br35H"


def _body(value_out, value_body, value_lungs=None):
    """[SIZE, SIZE] map: an elliptic body, optionally with two elliptic lungs."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    image = np.full((SIZE, SIZE), value_out, np.float64)
    image[((yy - 0.5) / 0.35) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1] = value_body
    if value_lungs is not None:
        for cx in (0.32, 0.68):
            image[((yy - 0.5) / 0.25) ** 2 + ((xx - cx) / 0.13) ** 2 < 1] = value_lungs
    return image


def _spot(image, value, centre=(0.5, 0.32), radius=0.07):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    return np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2, value, image)


def _write_volume_set(root, write):
    """``root/train/normal/s0..s2``, ``root/test/normal/s3``, ``root/test/abnormal/s4``: ``write(folder, abnormal,
    rng)`` writes one volume."""
    for split, cls, names in (("train", "normal", ("s0", "s1", "s2")), ("test", "normal", ("s3",)),
                              ("test", "abnormal", ("s4",))):
        for name in names:
            write(root / split / cls / name, cls == "abnormal", np.random.default_rng([int(name[1:])]))


def make_chest_ct(root):
    def write(folder, abnormal, rng):
        hu = [_body(-1000, 40, -850) + rng.normal(0, 20, (SIZE, SIZE)) for _ in range(3)]
        if abnormal:  # a soft-tissue nodule in the right lung
            hu = [_spot(s, 30) for s in hu]
        write_series(folder, np.round(np.stack(hu) + 1024).astype(np.int16), "CT", intercept=-1024.0)

    _write_volume_set(root / "chest_ct", write)
    out = root / "chest_ct_slices"
    slices.main(["kermany", str(root / "chest_ct"), "--modality", "ct", "--normal", "normal",
                 "--min-foreground", "0.05", "--out", str(out)])
    ct = np.load(out / "s4" / "0000.npy")
    assert ct.min() < -900 and ct.max() > 0, "the CT slices should be in HU"
    return out


def make_pet(root):
    bq_per_suv = 1 / hand_suv_factor(3600.0)  # test_data_dicom's tags: injection 10:00, series 11:00

    def write(folder, abnormal, rng):
        suv = [_body(0.0, 1.0) * rng.uniform(0.8, 1.2, (SIZE, SIZE)) for _ in range(3)]
        if abnormal:  # an FDG-avid lesion
            suv = [_spot(s, 8.0, centre=(0.5, 0.6)) for s in suv]
        write_series(folder, np.round(np.stack(suv) * bq_per_suv).astype(np.int16), "PT", intercept=0.0)

    _write_volume_set(root / "pet", write)
    out = root / "pet_slices"
    slices.main(["kermany", str(root / "pet"), "--modality", "pet", "--normal", "normal", "--out", str(out)])
    assert np.load(out / "s4" / "0000.npy").max() == pytest.approx(8.0, rel=1e-3), "the PET slices should be in SUV"
    return out


MODALITIES = {"oct2017": make_oct2017, "oct2022": make_oct2022, "br35h": make_br35h, "chest_ct": make_chest_ct,
              "pet": make_pet}
# The phantom's test split is DRUSEN, FLUID, LESION (with mask files), then NORMAL (without): with 2 images per class
# and val_batch_size 4 one evaluation batch mixes items with and without a mask file (EnsureMaskd must collate them).
CASES = sorted(MODALITIES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """{data set: (its bundle_root, its dataset_dir)}: each config trained, then evaluated from its model.pt, all ten
    workflows in one interpreter (each python start imports torch and MONAI: 5-7 s of CPU)."""
    root = tmp_path_factory.mktemp("modalities")
    folders, runs, each = {}, [], []
    for name in CASES:
        folders[name] = (root / name, MODALITIES[name](root / name / "data"))
        override = REPO / "configs" / f"{name}.json"
        runs += [["train", override], ["train", "evaluate", override]]
        each += [{"bundle_root": folders[name][0], "dataset_dir": folders[name][1]}] * 2
    run_bundles(runs, root / "log.txt", each, n_heatmaps=1, **COMMON, **STUDENT)
    return folders


@pytest.mark.parametrize("name", CASES)
def test_config_trains_and_evaluates_through_the_bundle(name, trained):
    bundle_root, dataset_dir = trained[name]
    test_items = json.loads((dataset_dir / "datalist.json").read_text())["test"]
    assert {it["label"] for it in test_items} == {0, 1}, "the tiny test split needs both classes for an AUROC"
    assert (bundle_root / "models" / "model.pt").is_file()

    report = json.loads((bundle_root / "eval" / "metrics.json").read_text())
    assert report["n_images"] == len(test_items)
    auroc = report["image"]["auroc"]
    assert auroc is not None and math.isfinite(auroc) and 0.0 <= auroc <= 1.0
    with open(bundle_root / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(it["image"] for it in test_items)
    assert all(math.isfinite(float(r["score"])) for r in rows)
    if any("mask" in it for it in test_items):  # the phantom ships masks of its anomalies
        assert 0.0 <= report["pixel_auroc"] <= 1.0
