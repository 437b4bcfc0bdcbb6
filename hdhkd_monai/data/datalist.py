"""Datalist builders: common folder layouts -> the MONAI-style datalist of the interface contract.

A datalist is ``{"training": [...], "validation": [...], "test": [...]}``; each item is
``{"image": path, "label": 0 | 1, "class": str, "patient": str}`` plus ``"mask"`` when a mask file exists.
Training holds normal images only. Validation holds normal images held out from training, and abnormal images only
when asked (``val_abnormal_fraction``), taken from the abnormal test images. Every hold-out is grouped by patient,
so no patient appears on both sides of a split.

:func:`datalist_split` and :func:`image_items` read them back for the bundle workflows, with absolute paths
(relative ``image``/``mask`` paths are resolved against the JSON's folder).

Patient ids come from Kermany's ``CLASS-PATIENT-IMAGE.jpeg`` names (the CLASS part must equal the folder's class);
other files are their own patient (their stem). Paths are absolute unless ``relative_to`` is given on writing.

CLI::

    python -m hdhkd_monai.data.datalist kermany ROOT [--normal NORMAL] --out datalist.json
    python -m hdhkd_monai.data.datalist br35h ROOT --out datalist.json
    python -m hdhkd_monai.data.datalist folders ROOT --normal normal --out datalist.json
    python -m hdhkd_monai.data.datalist csv FILE.csv --out datalist.json

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hdhkd_monai.data import dicom
from hdhkd_monai.data.bad_files import BadFileLog, cli_logging, logger
from hdhkd_monai.errors import BadInputError, run_cli
from hdhkd_monai.data.volumes import INFERENCE_VOLUME_SUFFIXES, VOLUME_SUFFIXES, is_volume, volume_name, volume_suffix

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".dcm")
SPLITS = ("training", "validation", "test")
_PATH_KEYS = ("image", "mask")  # item keys holding file paths
_KERMANY_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)-(?P<patient>[^-]+)-(?P<image>\d+)$")
_SPLIT_ALIASES = {"train": "training", "training": "training", "val": "validation", "valid": "validation",
                  "validation": "validation", "test": "test"}


def natural_key(path: str | Path) -> list:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def patient_id(path: str | Path, cls: str | None = None) -> str:
    """Patient of a Kermany-style file name ``CLASS-PATIENT-IMAGE.ext`` (CLASS must equal ``cls`` when given,
    case-insensitively); any other name is its own patient: its stem."""
    stem = Path(path).stem
    match = _KERMANY_NAME.match(stem)
    if match and (cls is None or match["cls"].lower() == cls.lower()):
        return match["patient"]
    return stem


def check_image(path: Path) -> None:
    """Decode an image file with the reader the workflows use (:class:`~hdhkd_monai.data.transforms.SliceReader`:
    the whole file, its shape and its values), so a truncated or corrupt file is found here and not mid-training;
    raise :class:`BadInputError` naming it when it cannot be used."""
    from hdhkd_monai.data.transforms import SliceReader  # imported on use: it loads MONAI's transforms

    SliceReader().get_data(Path(path))


def decodable_images(paths: list[Path], log: BadFileLog) -> list[Path]:
    """The paths of ``paths`` that pass :func:`check_image`, in order; the bad ones raise or are skipped by ``log``.
    Files are decoded in parallel threads (the decoders release the GIL), so a check costs about one decode per
    file divided by the cores."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        errors = list(pool.map(_check_error, paths))
    good = []
    for path, error in zip(paths, errors):
        with log.guard(path):
            if error is not None:
                raise error
            good.append(path)
    return good


def _check_error(path: Path) -> BadInputError | None:
    try:
        check_image(path)
    except BadInputError as error:
        return error
    return None


def list_images(folder: str | Path, log: BadFileLog | None = None, volumes: bool = False) -> list[Path]:
    """Image files directly inside ``folder`` (suffixes ``IMAGE_SUFFIXES``, hidden files ignored), naturally sorted,
    each header-checked; with ``volumes=True`` the volume files and DICOM series folders instead (read later, when
    sliced). Raises :class:`BadInputError` for a missing folder or one without images."""
    folder = Path(folder)
    log = log or BadFileLog()
    if not folder.is_dir():
        raise BadInputError(folder, "folder not found" if not folder.exists() else "not a folder")
    if volumes:
        found = sorted((p for p in folder.iterdir() if is_volume(p)), key=natural_key)
        if not found:
            raise BadInputError(folder, f"no volumes (looked for {', '.join(VOLUME_SUFFIXES)} and series folders)")
        return found
    files = sorted((p for p in folder.iterdir() if _is_image(p)), key=natural_key)
    good = decodable_images(files, log)
    if not good:
        found = "no image files" if not files else "no readable image files"
        raise BadInputError(folder, f"{found} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return good


def make_item(path: Path, label: int, cls: str, patient: str | None = None, mask: Path | None = None) -> dict:
    item = {"image": os.path.abspath(path), "label": int(label), "class": cls,
            "patient": patient if patient is not None else patient_id(path, cls)}
    if mask is not None:
        item["mask"] = os.path.abspath(mask)
    return item


def split_by_patient(items: list[dict], fraction: float, seed: int = 0, order: str = "random",
                     where: str | Path = "") -> tuple[list[dict], list[dict]]:
    """Hold out about ``fraction`` of ``items``, whole patients at a time.

    Args:
        items: datalist items with a "patient" key.
        fraction: share of images to hold out (0 holds out nothing).
        seed: seed of the patient shuffle.
        order: "random" (seeded shuffle of patients) or "last" (the last patients in natural name order: for data
            whose file ids run in acquisition order, such as neighbouring B-scans of one volume).
        where: folder named in errors.

    Returns:
        ``(kept, held)`` in the input order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or not items:
        return list(items), []
    patients = sorted({it["patient"] for it in items}, key=natural_key)
    if len(patients) < 2:
        raise BadInputError(where, f"cannot hold out {fraction:.0%} of {len(items)} images: they all belong to "
                                   f"one patient ({patients[0]})")
    if order == "random":
        patients = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    elif order == "last":
        patients = patients[::-1]
    else:
        raise ValueError(f"order must be 'random' or 'last', got {order!r}")
    sizes = Counter(it["patient"] for it in items)
    target, held_patients, held_count = max(1, round(fraction * len(items))), set(), 0
    for patient in patients[:-1]:  # always keep at least one patient
        if held_count >= target:
            break
        held_patients.add(patient)
        held_count += sizes[patient]
    return ([it for it in items if it["patient"] not in held_patients],
            [it for it in items if it["patient"] in held_patients])


def _find_mask(masks_root: Path, cls: str, image: Path) -> Path | None:
    folder = masks_root / cls
    if not folder.is_dir():
        return None
    matches = sorted(p for p in folder.glob(f"{image.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return matches[0] if matches else None


def _class_items(folder: Path, cls: str, label: int, log: BadFileLog, masks_root: Path | None = None,
                 volumes: bool = False) -> list[dict]:
    masks_root = masks_root if masks_root is not None and masks_root.is_dir() else None
    items = []
    for path in list_images(folder, log, volumes):
        item = make_item(path, label, cls, mask=_find_mask(masks_root, cls, path) if masks_root else None)
        if volumes:
            item["patient"] = patient_id(volume_name(path), cls)
        items.append(item)
    return items


def _hold_out_abnormal(test: list[dict], fraction: float, seed: int, where: Path) -> tuple[list[dict], list[dict]]:
    """Move about ``fraction`` of each abnormal class of ``test`` (by patient) to validation."""
    if fraction == 0:
        return test, []
    kept, held = [it for it in test if it["label"] == 0], []
    for cls in sorted({it["class"] for it in test if it["label"] == 1}):
        k, h = split_by_patient([it for it in test if it["class"] == cls], fraction, seed, where=where / cls)
        kept += k
        held += h
    return kept, held


def _subfolders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise BadInputError(root, "folder not found" if not root.exists() else "not a folder")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if not folders:
        raise BadInputError(root, "no class folders inside")
    return folders


def _normal_folder(folders: list[Path], normal: str, where: Path) -> Path:
    for folder in folders:
        if folder.name.lower() == normal.lower():
            return folder
    raise BadInputError(where, f"no normal class folder {normal!r} (found: {', '.join(f.name for f in folders)})")


def kermany_datalist(root: str | Path, normal: str = "NORMAL", val_fraction: float = 0.1,
                     val_abnormal_fraction: float = 0.0, seed: int = 0, holdout: str = "random",
                     skip_bad: bool = False, volumes: bool = False) -> dict:
    """Datalist of a ``root/train/<normal>/`` + ``root/test/<class>/`` layout (Kermany OCT2017, the phantom, and
    the real sets in ../shared/data). Abnormal folders under ``train/`` are ignored (training is normal-only).

    Args:
        root: data set root.
        normal: name of the normal class folder (case-insensitive).
        val_fraction: share of train normal images held out (by patient) for validation.
        val_abnormal_fraction: share of each abnormal test class moved (by patient) to validation.
        seed: seed of the hold-outs.
        holdout: "random" or "last" patients first (see :func:`split_by_patient`).
        skip_bad: skip unreadable image files (logged and counted) instead of raising.
        volumes: list volume files and DICOM series folders instead of images (for
            :mod:`hdhkd_monai.data.slices`).

    Masks ``root/masks/<class>/<image stem>.*`` are attached as "mask" when that folder exists.
    """
    root, log = Path(root), BadFileLog(skip_bad)
    masks = root / "masks"
    train_folders = _subfolders(root / "train")
    train_folder = _normal_folder(train_folders, normal, root / "train")
    for other in train_folders:
        if other != train_folder:
            logger.info("ignoring %s: training uses normal images only", other)
    train = _class_items(train_folder, train_folder.name, 0, log, masks, volumes)
    train, validation = split_by_patient(train, val_fraction, seed, holdout, where=train_folder)
    test = []
    for folder in _subfolders(root / "test"):
        test += _class_items(folder, folder.name, int(folder.name.lower() != normal.lower()), log, masks, volumes)
    test, held = _hold_out_abnormal(test, val_abnormal_fraction, seed, root / "test")
    log.summary("image files")
    return {"training": train, "validation": validation + held, "test": test}


def br35h_datalist(root: str | Path, n_train: int = 500, val_fraction: float = 0.1, val_abnormal_fraction: float = 0.0,
                   seed: int = 0, normal: str = "no", abnormal: str = "yes", skip_bad: bool = False) -> dict:
    """Datalist of Br35H (``root/no/``, ``root/yes/``) with the paper's protocol.

    ``n_train`` normal slices (seeded draw) are the training pool and every other slice is test: with Br35H's
    1,500 + 1,500 slices that is 500 normal for training and 1,000 normal + 1,500 tumour for testing, as in the
    paper. Validation is carved out of the training pool (``val_fraction`` of it, so 450 train + 50 validation by
    default) to leave the paper's test set untouched. Br35H has no patient ids: every slice is its own patient.
    """
    root, log = Path(root), BadFileLog(skip_bad)
    folders = _subfolders(root)
    normals = _class_items(_normal_folder(folders, normal, root), normal, 0, log)
    tumours = _class_items(_normal_folder(folders, abnormal, root), abnormal, 1, log)
    if len(normals) <= n_train:
        raise BadInputError(root / normal, f"{len(normals)} normal images; the protocol needs more than "
                                           f"n_train={n_train} (the rest are normal test images)")
    chosen = set(np.random.default_rng(seed).choice(len(normals), n_train, replace=False).tolist())
    pool = [it for i, it in enumerate(normals) if i in chosen]
    train, validation = split_by_patient(pool, val_fraction, seed, where=root / normal)
    test = [it for i, it in enumerate(normals) if i not in chosen] + tumours
    test, held = _hold_out_abnormal(test, val_abnormal_fraction, seed, root)
    log.summary("image files")
    return {"training": train, "validation": validation + held, "test": test}


def _split_normals(normals: list[dict], val_fraction: float, test_fraction: float, seed: int, where) -> tuple:
    rest, test = split_by_patient(normals, test_fraction, seed, where=where)
    train, validation = split_by_patient(rest, val_fraction / (1 - test_fraction), seed + 1, where=where)
    return train, validation, test


def folders_datalist(root: str | Path, normal: str = "normal", val_fraction: float = 0.1, test_fraction: float = 0.2,
                     val_abnormal_fraction: float = 0.0, seed: int = 0, skip_bad: bool = False,
                     volumes: bool = False) -> dict:
    """Datalist of ``root/<class>/`` folders, one of them (``normal``) normal and all others abnormal.

    Normal images are split by patient into training, validation (``val_fraction`` of all normals) and test
    (``test_fraction``); abnormal images all go to test unless ``val_abnormal_fraction`` moves some to validation.
    """
    root, log = Path(root), BadFileLog(skip_bad)
    folders = _subfolders(root)
    normal_folder = _normal_folder(folders, normal, root)
    abnormal = [it for f in folders if f != normal_folder for it in _class_items(f, f.name, 1, log, None, volumes)]
    if not abnormal:
        logger.warning("%s: no abnormal class folder; the test set holds normal images only", root)
    normals = _class_items(normal_folder, normal_folder.name, 0, log, None, volumes)
    train, validation, test = _split_normals(normals, val_fraction, test_fraction, seed, normal_folder)
    test, held = _hold_out_abnormal(test + abnormal, val_abnormal_fraction, seed, root)
    log.summary("image files")
    return {"training": train, "validation": validation + held, "test": test}


def _csv_rows(csv_path: Path) -> list[tuple[int, dict]]:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise BadInputError(csv_path, f"missing column(s) {sorted(missing)}; need path,label[,class][,patient]"
                                          f"[,split], found {reader.fieldnames}")
        return list(enumerate(reader, start=2))  # line numbers, counting the header as line 1


def csv_datalist(csv_path: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 val_abnormal_fraction: float = 0.0, seed: int = 0, skip_bad: bool = False,
                 volumes: bool = False) -> dict:
    """Datalist of a CSV with columns ``path,label`` (label 0 normal, 1 abnormal) and optional ``class``,
    ``patient`` and ``split`` (train / val / test). Relative paths are relative to the CSV's folder.

    With a ``split`` column on every row that split is kept (training rows must be normal); without it normals are
    split by patient as in :func:`folders_datalist` and abnormal rows go to test.
    """
    csv_path, log = Path(csv_path), BadFileLog(skip_bad)
    if not csv_path.is_file():
        raise BadInputError(csv_path, "CSV file not found")
    items, splits = [], []
    for line, row in _csv_rows(csv_path):
        path = Path(row["path"]) if os.path.isabs(row["path"]) else csv_path.parent / row["path"]
        with log.guard(path):
            label = row["label"].strip()
            if label not in ("0", "1"):
                raise BadInputError(csv_path, f"line {line}: label must be 0 or 1, got {label!r}")
            if not (is_volume(path) if volumes else path.is_file()):
                raise BadInputError(path, f"{'volume' if volumes else 'file'} not found (line {line} of {csv_path})")
            if not volumes:
                check_image(path)
            split = _SPLIT_ALIASES.get((row.get("split") or "").strip().lower())
            if row.get("split") and split is None:
                raise BadInputError(csv_path, f"line {line}: split must be train, val or test, got {row['split']!r}")
            if split == "training" and label == "1":
                raise BadInputError(csv_path, f"line {line}: an abnormal image in the training split")
            cls = (row.get("class") or "").strip() or ("normal" if label == "0" else "abnormal")
            patient = (row.get("patient") or "").strip() or patient_id(volume_name(path) if volumes else path, cls)
            items.append(make_item(path, int(label), cls, patient))
            splits.append(split)
    log.summary("rows")
    if not any(it["label"] == 0 for it in items):
        raise BadInputError(csv_path, "no normal (label 0) images")
    if all(splits):
        return {name: [it for it, s in zip(items, splits) if s == name] for name in SPLITS}
    if any(splits):
        raise BadInputError(csv_path, "the split column is filled on some rows only")
    normals = [it for it in items if it["label"] == 0]
    train, validation, test = _split_normals(normals, val_fraction, test_fraction, seed, csv_path)
    test, held = _hold_out_abnormal(test + [it for it in items if it["label"] == 1], val_abnormal_fraction, seed,
                                    csv_path)
    return {"training": train, "validation": validation + held, "test": test}


def require_splits(datalist: dict, source: str | Path) -> dict:
    """``datalist`` when none of its splits is empty; else :class:`BadInputError` naming ``source`` and the empty
    splits, at build time rather than when training finds them (every workflow needs all three)."""
    empty = [name for name in SPLITS if not datalist.get(name)]
    if empty:
        raise BadInputError(source, f"the {', '.join(map(repr, empty))} split(s) would be empty "
                                    f"({summary(datalist).replace(chr(10), '; ')}); no datalist written")
    return datalist


def summary(datalist: dict) -> str:
    """One line per split: the image count and the count per class."""
    lines = []
    for name in SPLITS:
        counts = Counter(it["class"] for it in datalist.get(name, []))
        detail = ", ".join(f"{cls} {n}" for cls, n in sorted(counts.items()))
        lines.append(f"{name}: {len(datalist.get(name, []))} ({detail})")
    return "\n".join(lines)


def write_datalist(datalist: dict, out: str | Path, relative: bool = False) -> Path:
    """Write ``datalist`` as JSON (atomically). ``relative=True`` stores "image" and "mask" relative to the JSON's
    folder, which is what the bundle's datalist loader resolves them against (MONAI's ``load_decathlon_datalist``
    resolves "image" that way too, but not "mask")."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if relative:
        base = os.path.abspath(out.parent)
        datalist = {name: [{k: (os.path.relpath(v, base) if k in _PATH_KEYS else v) for k, v in it.items()}
                           for it in items] for name, items in datalist.items()}
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(datalist, indent=1))
    os.replace(tmp, out)
    return out


def datalist_split(datalist: str | Path, split: str) -> list[dict]:
    """Items of ``split`` ("training", "validation", "test") of a datalist JSON, with absolute paths.

    Raises ``BadInputError`` naming the file when it is missing, not a datalist, or the split is absent or empty.
    """
    path = Path(datalist)
    if not path.is_file():
        raise BadInputError(
            path, "datalist file not found: write one with `python -m hdhkd_monai.data.datalist` (see docs/data.md), "
            "or point --dataset_dir or --datalist at one"
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(path, f"not a datalist JSON ({e})") from e
    if not isinstance(content, dict) or split not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise BadInputError(path, f"no {split!r} split (found {keys})")
    items = content[split]
    if not items:
        raise BadInputError(path, f"the {split!r} split is empty")
    base = path.parent.resolve()
    items = [{k: (str(base / v) if k in _PATH_KEYS and v else v) for k, v in item.items()} for item in items]
    for item in items:  # every file, before a workflow starts: not when the loader reaches it mid-run
        for key in _PATH_KEYS:
            if item.get(key) and not Path(item[key]).exists():
                raise BadInputError(item[key], f"{key} file not found (listed in the {split!r} split of {path})")
    return items


def absent_classes(items: list[dict]) -> list[str]:
    """Which of "normal (label 0)" and "abnormal (label 1)" no item has: AUROC needs neither missing."""
    labels = {item.get("label") for item in items}
    return [name for label, name in ((0, "normal (label 0)"), (1, "abnormal (label 1)")) if label not in labels]


def evaluation_items(datalist: str | Path, split: str = "test", scores_only: bool = False) -> list[dict]:
    """The items of ``split`` (:func:`datalist_split`) for an evaluation: it needs normal (label 0) and abnormal
    (label 1) images, or AUROC and the other metrics are not computable, which :class:`BadInputError` says before
    any work; with ``scores_only`` the split is scored as it is."""
    items = datalist_split(datalist, split)
    absent = absent_classes(items)
    if absent and not scores_only:
        raise BadInputError(datalist, f"the {split!r} split has no {' and no '.join(absent)} images: AUROC and the "
                                      "other metrics are not computable; add them, or set scores_only to true to "
                                      "write the scores alone")
    return items


def image_items(source: str | Path, split: str = "test", volumes: bool = False) -> list[dict]:
    """Items ``{"image": path}`` for inference or teacher distillation, from any of:

    - one image file (suffixes of :data:`IMAGE_SUFFIXES`; with ``volumes``, also the volume files of
      :data:`~hdhkd_monai.data.volumes.INFERENCE_VOLUME_SUFFIXES` and DICOM series folders
      (:func:`~hdhkd_monai.data.dicom.is_series_folder`), which inference cuts into slices);
    - a folder: every image file below it (recursively), in natural order, e.g. an ImageNet folder for the teacher;
      with ``volumes``, a DICOM series folder below it is one input, not one per file;
    - a glob pattern (``/data/*/scan_*.png``, ``**`` recursive);
    - a ``.json`` datalist: the items of ``split`` (labels and classes kept);
    - any other file: a list of image paths, one a line (relative to the list's folder; ``#`` starts a comment).

    Raises ``BadInputError`` naming the folder or file when it does not exist or yields no images.
    """
    source = Path(source)
    wanted = _is_input if volumes else _is_image
    if source.is_dir():
        files = [source] if wanted(source) else _outside_series([p for p in source.rglob("*") if wanted(p)])
        if not files:
            raise BadInputError(source, f"no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
        return _items(files)
    if not source.exists() and glob.has_magic(str(source)):
        files = _outside_series([Path(p) for p in glob.glob(str(source), recursive=True) if wanted(Path(p))])
        if not files:
            raise BadInputError(source, f"no image files match this pattern (looked for {', '.join(IMAGE_SUFFIXES)})")
        return _items(files)
    if wanted(source):
        if not source.is_file():
            raise BadInputError(source, "image file not found")
        return _items([source])
    if not source.is_file():
        raise BadInputError(source, "no such folder or file")
    if source.suffix.lower() == ".json":
        return datalist_split(source, split)
    try:
        lines = [line.split("#", 1)[0].strip() for line in source.read_text().splitlines()]
    except UnicodeDecodeError as e:
        raise BadInputError(source, f"neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a text list of images") from e
    paths = [source.parent / line for line in lines if line]
    if not paths:
        raise BadInputError(source, "the image list is empty")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BadInputError(source, f"{len(missing)} listed image(s) not found, e.g. {missing[0]}")
    return [{"image": str(p.resolve())} for p in paths]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _is_input(path: Path) -> bool:
    return _is_image(path) or volume_suffix(path) in INFERENCE_VOLUME_SUFFIXES or dicom.is_series_folder(path)


def _outside_series(paths: list[Path]) -> list[Path]:
    """``paths`` without the files inside the series folders among them (those folders are read whole)."""
    series = {p for p in paths if p.is_dir()}
    return [p for p in paths if p.parent not in series]


def _items(files: list[Path]) -> list[dict]:
    """One item per file (a ``**`` glob through a symlink loop reaches one file by many paths), each by its absolute
    path as the user reaches it: symlinks kept, so scores.csv names the path that was given."""
    unique: dict[Path, str] = {}
    for path in sorted(files, key=natural_key):
        unique.setdefault(path.resolve(), os.path.abspath(path))
    return [{"image": path} for path in unique.values()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a MONAI datalist JSON (training/validation/test).")
    sub = parser.add_subparsers(dest="layout", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="datalist JSON to write")
    common.add_argument("--val-fraction", type=float, default=0.1, help="normal images held out for validation")
    common.add_argument("--val-abnormal-fraction", type=float, default=0.0,
                        help="share of each abnormal class moved from test to validation")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--skip-bad", action="store_true", help="skip unreadable files (logged and counted)")
    common.add_argument("--relative", action="store_true", help="store paths relative to the JSON's folder")
    p = sub.add_parser("kermany", parents=[common], help="ROOT/train/<normal>/ and ROOT/test/<class>/")
    p.add_argument("root")
    p.add_argument("--normal", default="NORMAL", help="normal class folder name")
    p.add_argument("--holdout", choices=("random", "last"), default="random",
                   help="validation patients: seeded random, or the last ones in name order")
    p = sub.add_parser("br35h", parents=[common], help="ROOT/yes/ and ROOT/no/, the paper's 500-normal protocol")
    p.add_argument("root")
    p.add_argument("--n-train", type=int, default=500, help="normal slices in the training pool")
    p = sub.add_parser("folders", parents=[common], help="ROOT/<class>/, one class named as normal")
    p.add_argument("root")
    p.add_argument("--normal", default="normal", help="normal class folder name")
    p.add_argument("--test-fraction", type=float, default=0.2, help="normal images kept for test")
    p = sub.add_parser("csv", parents=[common], help="CSV with path,label[,class][,patient][,split]")
    p.add_argument("csv")
    p.add_argument("--test-fraction", type=float, default=0.2, help="normal images kept for test (no split column)")
    args = parser.parse_args(argv)

    cli_logging()
    shared = dict(val_fraction=args.val_fraction, val_abnormal_fraction=args.val_abnormal_fraction, seed=args.seed,
                  skip_bad=args.skip_bad)
    if args.layout == "kermany":
        datalist = kermany_datalist(args.root, args.normal, holdout=args.holdout, **shared)
    elif args.layout == "br35h":
        datalist = br35h_datalist(args.root, args.n_train, **shared)
    elif args.layout == "folders":
        datalist = folders_datalist(args.root, args.normal, test_fraction=args.test_fraction, **shared)
    else:
        datalist = csv_datalist(args.csv, test_fraction=args.test_fraction, **shared)
    out = write_datalist(require_splits(datalist, args.root if args.layout != "csv" else args.csv), args.out,
                         args.relative)
    print(f"wrote {out}\n{summary(datalist)}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
