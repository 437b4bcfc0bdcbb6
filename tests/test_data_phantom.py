"""Synthetic OCT phantom: determinism, layout, and anomalies that sit where their masks say."""

import numpy as np
import pytest
from PIL import Image

from hdhkd_monai.data.phantom import ANOMALY_CLASSES, NORMAL, main, make_bscan, write_phantom


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    write_phantom(tmp_path / "a", n_train=3, n_test_per_class=2, size=64, seed=3)
    write_phantom(tmp_path / "b", n_train=3, n_test_per_class=2, size=64, seed=3)
    write_phantom(tmp_path / "c", n_train=3, n_test_per_class=2, size=64, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 3 + 2 * 4 + 2 * 3  # train, test, masks of the abnormal test images
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not np.array_equal(read(tmp_path / "a" / files[0]), read(tmp_path / "c" / files[0]))


def test_an_image_does_not_depend_on_how_many_are_asked_for(tmp_path):
    write_phantom(tmp_path / "few", n_train=2, n_test_per_class=1, size=48)
    write_phantom(tmp_path / "many", n_train=5, n_test_per_class=3, size=48)
    for rel in ["train/NORMAL/NORMAL-1000-2.png", "test/FLUID/FLUID-6000-1.png", "masks/LESION/LESION-8000-1.png"]:
        assert (tmp_path / "few" / rel).read_bytes() == (tmp_path / "many" / rel).read_bytes()


def test_cli_writes_kermany_layout_with_disjoint_patients(tmp_path):
    main(["--out", str(tmp_path), "--n-train", "6", "--n-test-per-class", "4", "--size", "64", "--seed", "0"])
    train = sorted((tmp_path / "train" / NORMAL).iterdir())
    assert len(train) == 6
    patients = {split: {p.name.split("-")[1] for p in (tmp_path / split).rglob("*.png")} for split in ("train", "test")}
    assert not patients["train"] & patients["test"]
    for cls in (NORMAL, *ANOMALY_CLASSES):
        images = sorted((tmp_path / "test" / cls).iterdir())
        assert len(images) == 4 and all(read(p).shape == (64, 64) and read(p).dtype == np.uint8 for p in images)
        masks = tmp_path / "masks" / cls
        assert masks.is_dir() == (cls != NORMAL)
        if cls != NORMAL:
            assert sorted(p.name for p in masks.iterdir()) == [p.name for p in images]


@pytest.mark.parametrize("anomaly", ANOMALY_CLASSES)
def test_anomalies_are_where_their_masks_are(anomaly):
    """Inside the mask the scan is darker (fluid) or brighter (lesion, drusen) than around it."""
    for seed in range(5):
        image, mask = make_bscan(128, anomaly, np.random.default_rng(seed))
        assert mask.any() and mask.mean() < 0.1
        inside, outside = image[mask].astype(float).mean(), image[~mask].astype(float).mean()
        if anomaly == "FLUID":
            ring = np.zeros_like(mask)
            ys, xs = np.nonzero(mask)
            ring[max(ys.min() - 4, 0): ys.max() + 5, max(xs.min() - 8, 0): xs.max() + 9] = True
            assert inside < 0.5 * image[ring & ~mask].mean()  # dark pocket inside bright retina
        elif anomaly == "LESION":
            assert inside > 2 * outside  # hyper-reflective
        else:
            assert inside > outside  # drusen material + lifted RPE are brighter than the scan on average


def test_normal_scan_has_layers_and_speckle():
    image, mask = make_bscan(128, None, np.random.default_rng(0))
    assert not mask.any()
    profile = image[:, 54:74].astype(float).mean(1)  # mean A-scan near the centre
    assert profile.max() > 4 * profile[:10].mean()  # bright retina against dark vitreous
    peaks = np.sum((profile[1:-1] > profile[:-2]) & (profile[1:-1] > profile[2:]) & (profile[1:-1] > 60))
    assert peaks >= 2  # several bright bands, not one slab
    assert image[80:, :].std() > 5  # speckled choroid, not flat


def test_rejects_unknown_anomaly():
    with pytest.raises(ValueError, match="anomaly must be"):
        make_bscan(64, "CNV")
