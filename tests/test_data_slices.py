"""Volumes -> .npy slices + slice datalist (CLI), per-slice labels, skip_bad counts, volume-level aggregation."""

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
from test_data_dicom import write_series

from hdhkd_monai.data.aggregate import volume_scores
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.slices import main, read_slice_labels, slice_volumes
from hdhkd_monai.data.datalist import kermany_datalist
from hdhkd_monai.launcher import preprocessing


def ct_volume(seed: int, k: int = 4) -> np.ndarray:
    """Stored values [k, 8, 8]; slice 0 is all air (-1024 HU after the default intercept)."""
    volume = np.random.default_rng(seed).integers(900, 1200, (k, 8, 8)).astype(np.int16)
    volume[0] = 0
    return volume


@pytest.fixture
def ct_root(tmp_path):
    """Kermany layout of CT volumes in three formats: series folders, NIfTI and a TIFF stack (HU stored as is)."""
    root = tmp_path / "ct"
    volumes = {}
    for split, cls, names in [("train", "normal", ["normal-1-1", "normal-2-1", "normal-3-1"]),
                              ("test", "normal", ["normal-4-1"]), ("test", "tumour", ["tumour-5-1", "tumour-6-1"])]:
        for n, name in enumerate(names):
            volume = ct_volume(hash(name) % 1000)
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            if n == 0:
                write_series(folder / name, volume)
            elif n == 1:
                nib.save(nib.Nifti1Image((volume - 1024).transpose(2, 1, 0), np.diag([-1, -1, 1, 1.0])),
                         folder / f"{name}.nii.gz")
            else:
                tifffile.imwrite(folder / f"{name}.tif", volume - 1024)
            volumes[name] = volume.astype(np.float32) - 1024
    return root, volumes


def test_cli_writes_slices_and_datalist(ct_root, tmp_path):
    root, volumes = ct_root
    out = tmp_path / "slices"
    main(["kermany", str(root), "--modality", "ct", "--normal", "normal", "--out", str(out), "--val-fraction", "0.3"])
    datalist = json.loads((out / "datalist.json").read_text())
    items = [it for split in datalist.values() for it in split]
    assert len(items) == 4 * len(volumes)
    for item in items:
        name = item["volume"].split("/")[-1]
        np.testing.assert_array_equal(np.load(item["image"]), volumes[name][item["slice"]])
        assert item["label"] == int(name.startswith("tumour")) and item["patient"] == name.split("-")[1]
    train_volumes = {it["volume"] for it in datalist["training"]}
    assert train_volumes and datalist["validation"]
    assert not train_volumes & {it["volume"] for it in datalist["validation"]}
    assert {it["class"] for it in datalist["test"]} == {"normal", "tumour"}


def test_empty_slices_are_dropped_and_slices_feed_the_ct_pipeline(ct_root, tmp_path):
    root, volumes = ct_root
    volume_list = kermany_datalist(root, "normal", val_fraction=0, volumes=True)
    datalist = slice_volumes(volume_list, tmp_path / "s", "ct", min_foreground=0.5)
    assert {it["slice"] for split in datalist.values() for it in split} == {1, 2, 3}  # slice 0 is air only
    item = datalist["test"][0]
    out = preprocessing(["chest_ct"], 8, window=[-200.0, 200.0])({"image": item["image"]})["image"]
    hu = volumes[item["volume"].split("/")[-1]][item["slice"]]
    np.testing.assert_allclose(out[0].numpy(), np.clip((hu + 200) / 400, 0, 1), atol=1e-6)


def test_slice_labels_override_volume_labels(ct_root, tmp_path):
    root, _ = ct_root
    (tmp_path / "labels.csv").write_text("volume,slice,label,class\ntumour-5-1,0,0,\ntumour-5-1,1,0,\n")
    volume_list = kermany_datalist(root, "normal", val_fraction=0, volumes=True)
    datalist = slice_volumes(volume_list, tmp_path / "s", "ct", slice_labels=read_slice_labels(tmp_path / "labels.csv"))
    labels = {it["slice"]: (it["label"], it["class"]) for it in datalist["test"] if it["volume"].endswith("tumour-5-1")}
    assert labels == {0: (0, "normal"), 1: (0, "normal"), 2: (1, "tumour"), 3: (1, "tumour")}
    (tmp_path / "bad.csv").write_text("volume,slice,label\nnormal-1-1,2,1\n")
    with pytest.raises(BadInputError, match="slice 2 is labelled abnormal in a training volume"):
        slice_volumes(volume_list, tmp_path / "t", "ct", slice_labels=read_slice_labels(tmp_path / "bad.csv"))


def test_bad_volume_raises_or_is_skipped_and_counted(ct_root, tmp_path, caplog):
    root, volumes = ct_root
    bad = root / "test" / "tumour" / "tumour-9-1.nii.gz"
    bad.write_bytes(b"\x00" * 100)
    volume_list = kermany_datalist(root, "normal", val_fraction=0, volumes=True)
    with pytest.raises(BadInputError, match="unreadable volume") as err:
        slice_volumes(volume_list, tmp_path / "s", "ct")
    assert err.value.path == bad
    datalist = slice_volumes(volume_list, tmp_path / "s", "ct", skip_bad=True)
    assert len({it["volume"] for split in datalist.values() for it in split}) == len(volumes)
    assert "skipped 1 bad volumes" in caplog.text


def test_volume_scores_max_and_top_k():
    items = [{"volume": "a", "label": 0, "class": "normal", "patient": "1"}] * 3
    items += [{"volume": "b", "label": 0, "class": "normal", "patient": "2"},
              {"volume": "b", "label": 1, "class": "tumour", "patient": "2"}]
    scores = [0.1, 0.5, 0.3, 0.2, 0.9]
    by_max = {v["volume"]: v for v in volume_scores(items, scores)}
    assert by_max["a"]["score"] == 0.5 and by_max["a"]["label"] == 0 and by_max["a"]["n_slices"] == 3
    assert by_max["b"]["score"] == 0.9 and by_max["b"]["label"] == 1 and by_max["b"]["class"] == "tumour"
    by_top2 = {v["volume"]: v["score"] for v in volume_scores(items, scores, reduce="topk", top_k=2)}
    assert by_top2 == pytest.approx({"a": 0.4, "b": 0.55})
    with pytest.raises(ValueError, match="no 'volume' key"):
        volume_scores([{"image": "x.png"}], [0.0])
