"""Datalist builders on the phantom, the real folders and synthetic layouts: counts, patient-disjoint splits,
masks, the Br35H protocol, CSV input and the errors that name the path."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdhkd_monai.data.datalist import (
    datalist_split,
    image_items,
    IMAGE_SUFFIXES,
    br35h_datalist,
    csv_datalist,
    folders_datalist,
    kermany_datalist,
    main,
    patient_id,
)
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.phantom import write_phantom

REAL_SETS = {"neh-oct": "NORMAL", "oct2017": "NORMAL", "brainmri": "normal", "chestct": "normal"}


def images_in(folder: Path) -> set[str]:
    return {os.path.abspath(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}


def paths(items) -> set[str]:
    return {it["image"] for it in items}


def patients(items) -> set[str]:
    return {it["patient"] for it in items}


def write_pngs(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("phantom"), n_train=12, n_test_per_class=6, size=32)


def test_patient_id_parsing():
    assert patient_id("CNV-1016042-1.jpeg", "CNV") == "1016042"
    assert patient_id("NORMAL_123.jpeg", "NORMAL") == "NORMAL_123"
    assert patient_id("test-normal-10.png", "normal") == "test-normal-10"  # CLASS part must be the class


def test_kermany_on_phantom(phantom):
    datalist = kermany_datalist(phantom, val_fraction=0.25, seed=1)
    train, val, test = datalist["training"], datalist["validation"], datalist["test"]
    assert paths(train) | paths(val) == images_in(phantom / "train" / "NORMAL") and not paths(train) & paths(val)
    assert len(val) == 3 and not patients(train) & patients(val)  # whole 3-image patients
    assert all(it["label"] == 0 and it["class"] == "NORMAL" for it in train + val)
    assert len(test) == 24 and {it["class"]: it["label"] for it in test} == {
        "NORMAL": 0, "FLUID": 1, "DRUSEN": 1, "LESION": 1}
    for item in test:
        has_mask = item["class"] != "NORMAL"
        assert ("mask" in item) == has_mask
        if has_mask:
            assert Path(item["mask"]).name == Path(item["image"]).name and Path(item["mask"]).is_file()
    assert kermany_datalist(phantom, val_fraction=0.25, seed=1) == datalist  # seeded


def test_abnormal_validation_only_when_asked(phantom):
    datalist = kermany_datalist(phantom, val_fraction=0.25, val_abnormal_fraction=0.5)
    val, test = datalist["validation"], datalist["test"]
    assert {it["class"] for it in val} == {"NORMAL", "FLUID", "DRUSEN", "LESION"}
    assert sum(it["class"] == "FLUID" for it in val) == 3
    assert not patients(val) & patients(test) and not paths(val) & paths(test)
    assert len(val) + len(test) == 3 + 24


def test_holdout_last_takes_the_highest_ids(tmp_path):
    write_pngs(tmp_path / "train" / "NORMAL", [f"NORMAL_{i}.jpeg" for i in (5, 40, 100, 7, 12)])
    write_pngs(tmp_path / "test" / "AMD", ["AMD_1.jpeg"])
    datalist = kermany_datalist(tmp_path, val_fraction=0.4, holdout="last")
    assert [Path(it["image"]).name for it in datalist["validation"]] == ["NORMAL_40.jpeg", "NORMAL_100.jpeg"]


@pytest.mark.parametrize("name", sorted(REAL_SETS))
def test_kermany_on_real_folders(shared_data, name):
    root = shared_data / name
    datalist = kermany_datalist(root, normal=REAL_SETS[name])
    train, val, test = datalist["training"], datalist["validation"], datalist["test"]
    assert paths(train) | paths(val) == images_in(root / "train" / REAL_SETS[name])
    assert val and not patients(train) & patients(val)
    on_disk = set().union(*(images_in(folder) for folder in (root / "test").iterdir()))
    assert paths(test) == on_disk and len(test) == len(on_disk)
    assert {it["label"] for it in test} == {0, 1}
    if name == "oct2017":
        assert all(it["patient"].isdigit() for it in train + val + test)  # parsed from CLASS-PATIENT-IMAGE


def test_br35h_protocol(tmp_path):
    write_pngs(tmp_path / "no", [f"no{i}.jpg" for i in range(30)])
    write_pngs(tmp_path / "yes", [f"y{i}.jpg" for i in range(20)])
    write_pngs(tmp_path / "pred", ["pred0.jpg"])  # Br35H's unlabelled folder: ignored
    datalist = br35h_datalist(tmp_path, n_train=10, val_fraction=0.2, seed=3)
    train, val, test = datalist["training"], datalist["validation"], datalist["test"]
    assert (len(train), len(val)) == (8, 2)
    assert sum(it["label"] == 0 for it in test) == 20 and sum(it["label"] == 1 for it in test) == 20
    assert paths(train) | paths(val) | paths(test) == images_in(tmp_path / "no") | images_in(tmp_path / "yes")
    assert br35h_datalist(tmp_path, n_train=10, val_fraction=0.2, seed=3) == datalist
    assert paths(br35h_datalist(tmp_path, n_train=10, seed=4)["test"]) != paths(test)
    with pytest.raises(BadInputError, match="needs more than n_train=30") as err:
        br35h_datalist(tmp_path, n_train=30)
    assert err.value.path == tmp_path / "no"


def test_folders_layout(tmp_path):
    write_pngs(tmp_path / "healthy", [f"h{i}.png" for i in range(20)])
    write_pngs(tmp_path / "cyst", [f"c{i}.png" for i in range(5)])
    write_pngs(tmp_path / "scar", [f"s{i}.png" for i in range(4)])
    datalist = folders_datalist(tmp_path, normal="healthy", val_fraction=0.1, test_fraction=0.2)
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [14, 2, 4 + 9]
    assert {it["class"] for it in datalist["test"]} == {"healthy", "cyst", "scar"}
    with pytest.raises(BadInputError, match="no normal class folder 'normal'") as err:
        folders_datalist(tmp_path)
    assert err.value.path == tmp_path


def test_csv_with_and_without_split(tmp_path):
    write_pngs(tmp_path / "img", [f"{i}.png" for i in range(10)])
    rows = ["path,label,class,patient,split"] + [f"img/{i}.png,0,normal,p{i // 2},train" for i in range(6)]
    rows += ["img/6.png,0,normal,p6,val", "img/7.png,1,cnv,p7,val", f"{tmp_path}/img/8.png,1,cnv,p8,test",
             "img/9.png,0,normal,p9,test"]
    (tmp_path / "split.csv").write_text("\n".join(rows))
    datalist = csv_datalist(tmp_path / "split.csv")
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [6, 2, 2]
    assert datalist["validation"][1] == {"image": str((tmp_path / "img/7.png").resolve()), "label": 1,
                                         "class": "cnv", "patient": "p7"}
    (tmp_path / "plain.csv").write_text("path,label\n" + "\n".join(f"img/{i}.png,{int(i > 7)}" for i in range(10)))
    datalist = csv_datalist(tmp_path / "plain.csv", val_fraction=0.25, test_fraction=0.25)
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [4, 2, 2 + 2]


@pytest.mark.parametrize("row, message", [("img/0.png,2", "label must be 0 or 1"),
                                          ("img/missing.png,0", "file not found")])
def test_csv_errors_name_line_and_path(tmp_path, row, message):
    write_pngs(tmp_path / "img", ["0.png", "1.png"])
    (tmp_path / "l.csv").write_text(f"path,label\nimg/1.png,0\n{row}\n")
    with pytest.raises(BadInputError, match=message) as err:
        csv_datalist(tmp_path / "l.csv")
    assert "line 3" in str(err.value)
    with pytest.raises(BadInputError, match=r"missing column\(s\) \['label'\]"):
        (tmp_path / "n.csv").write_text("path\nimg/1.png\n")
        csv_datalist(tmp_path / "n.csv")


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(BadInputError, match="folder not found") as err:
        kermany_datalist(tmp_path / "nowhere")
    assert err.value.path == tmp_path / "nowhere" / "train"
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "NORMAL" / "readme.txt").write_text("no images here")
    with pytest.raises(BadInputError, match="no image files") as err:
        kermany_datalist(tmp_path)
    assert err.value.path == tmp_path / "train" / "NORMAL"
    write_pngs(tmp_path / "train" / "CNV", ["a.png"])
    with pytest.raises(BadInputError, match="no normal class folder 'healthy'"):
        kermany_datalist(tmp_path, normal="healthy")


def test_unreadable_image_named_or_skipped_and_counted(tmp_path, caplog):
    write_pngs(tmp_path / "train" / "NORMAL", [f"NORMAL-{i}-1.png" for i in range(4)])
    write_pngs(tmp_path / "test" / "DME", ["DME-9-1.png"])
    (tmp_path / "test" / "DME" / "DME-9-2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadInputError, match="unreadable image") as err:
        kermany_datalist(tmp_path)
    assert err.value.path == tmp_path / "test" / "DME" / "DME-9-2.png"
    datalist = kermany_datalist(tmp_path, skip_bad=True)
    assert len(datalist["test"]) == 1 and "skipped 1 bad image files" in caplog.text


def test_one_patient_cannot_be_split(tmp_path):
    write_pngs(tmp_path / "train" / "NORMAL", [f"NORMAL-7-{i}.png" for i in range(4)])
    write_pngs(tmp_path / "test" / "DME", ["DME-9-1.png"])
    with pytest.raises(BadInputError, match="one patient"):
        kermany_datalist(tmp_path)
    assert len(kermany_datalist(tmp_path, val_fraction=0)["training"]) == 4


def test_cli_writes_absolute_or_relative_paths(phantom, tmp_path, capsys):
    main(["kermany", str(phantom), "--out", str(tmp_path / "abs.json")])
    main(["kermany", str(phantom), "--out", str(tmp_path / "rel" / "dl.json"), "--relative"])
    assert "training: 9 (NORMAL 9)\nvalidation: 3 (NORMAL 3)" in capsys.readouterr().out  # one 3-image patient
    absolute = json.loads((tmp_path / "abs.json").read_text())
    relative = json.loads((tmp_path / "rel" / "dl.json").read_text())
    item, rel_item = absolute["test"][0], relative["test"][0]  # a DRUSEN image, with a mask
    assert Path(item["image"]).is_absolute() and not Path(rel_item["image"]).is_absolute()
    assert (tmp_path / "rel" / rel_item["image"]).resolve() == Path(item["image"])
    assert (tmp_path / "rel" / rel_item["mask"]).resolve() == Path(item["mask"])
    # read back, both give the same files as absolute paths, from any working directory
    read = image_items(tmp_path / "rel" / "dl.json")  # a datalist's test split
    assert [Path(it["image"]).is_absolute() for it in read] == [True] * len(absolute["test"])
    assert [Path(it["image"]).resolve() for it in read] == [Path(it["image"]) for it in absolute["test"]]
    assert datalist_split(tmp_path / "abs.json", "test") == absolute["test"]
