"""Volumes -> 2-D slice files + a slice datalist whose items carry "volume", "patient" and "slice".

The volumes are listed and split exactly like images (:mod:`hdhkd_monai.data.datalist`, ``volumes=True``): by
patient, at volume level, so all slices of a volume land in one split. Each volume is then read
(:func:`~hdhkd_monai.data.volumes.read_volume`), normalised for its modality, cut along ``axis``, optionally
filtered for empty slices, and written as ``OUT/<volume id>/<slice index>.npy``.

Slices are float32 ``.npy`` files, not PNGs: they keep the physical values (HU, SUV) exactly, so the CT window or
the PET SUV range stays a choice of the preprocessing config (``window`` of ``configs/chest_ct.json``, ``suv_max`` of ``configs/pet.json``)
instead of being baked in when slicing; a 16-bit PNG would need a fixed offset and scale per modality, and an 8-bit
one would lose precision. The per-modality pipelines read them with the same reader as PNGs.

Per-slice labels (OCT2022, chest CT and PET label slices, not volumes) come from ``slice_labels``: a CSV with
``volume,slice,label[,class]`` where volume is the volume's file name without suffix (or its folder name). Slices
not listed take their volume's label; training volumes must have no abnormal slices.

CLI::

    python -m hdhkd_monai.data.slices kermany ROOT --modality oct --out DIR [--axis 0] [--min-foreground 0.05]
    python -m hdhkd_monai.data.slices folders ROOT --modality ct --normal normal --out DIR
    python -m hdhkd_monai.data.slices csv volumes.csv --modality pet --out DIR --slice-labels labels.csv

writes the slices and ``DIR/datalist.json``. Per-volume scores: :func:`hdhkd_monai.data.aggregate.volume_scores`.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
from nibabel import orientations
from tqdm import tqdm

from hdhkd_monai.data import datalist as dl
from hdhkd_monai.data.bad_files import BadFileLog, cli_logging, logger
from hdhkd_monai.errors import BadInputError, run_cli
from hdhkd_monai.data.modalities import MODALITIES, modality as registered
from hdhkd_monai.data.volumes import read_volume, reorient, slices, suv_from_sidecar
from hdhkd_monai.data.volumes import INFERENCE_VOLUME_SUFFIXES, volume_name, volume_suffix



def read_slice_labels(path: str | Path) -> dict[tuple[str, int], tuple[int, str | None]]:
    """``{(volume name, slice index): (label, class or None)}`` from a CSV with volume,slice,label[,class]."""
    path = Path(path)
    labels = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"volume", "slice", "label"} - set(reader.fieldnames or ())
        if missing:
            raise BadInputError(path, f"missing column(s) {sorted(missing)}; need volume,slice,label[,class]")
        for line, row in enumerate(reader, start=2):
            if row["label"].strip() not in ("0", "1") or not row["slice"].strip().isdigit():
                raise BadInputError(path, f"line {line}: slice must be an index and label 0 or 1, got {row}")
            labels[(row["volume"].strip(), int(row["slice"]))] = (int(row["label"]), (row.get("class") or "").strip()
                                                                  or None)
    return labels


def _volume_ids(items: list[dict]) -> list[str]:
    """Unique ids: the volume name, prefixed with as many parent folders as it takes to tell repeated names apart."""
    paths = [Path(it["image"]) for it in items]
    for depth in range(len(max((p.parts for p in paths), key=len, default=()))):
        ids = ["/".join(p.parent.parts[len(p.parent.parts) - depth:] + (volume_name(p),)) for p in paths]
        if len(set(ids)) == len(ids):
            return ids
    raise ValueError("the same volume is listed twice")


def _slice_class(label: int, volume_item: dict, normal: str) -> str:
    if label == volume_item["label"]:
        return volume_item["class"]
    return normal if label == 0 else "abnormal"


def slice_volumes(volume_datalist: dict, out_dir: str | Path, modality: str, axis: int = 0,
                  orientation: str | None = "default", min_foreground: float = 0.0, threshold: float | None = None,
                  pet_units: str = "suv", slice_labels: dict | None = None, normal: str = "normal",
                  skip_bad: bool = False) -> dict:
    """Write the slices of every volume in ``volume_datalist`` and return the slice datalist.

    Args:
        volume_datalist: datalist whose "image" entries are volumes (e.g. ``kermany_datalist(..., volumes=True)``).
        out_dir: folder for the ``.npy`` slices.
        modality: a name in :data:`~hdhkd_monai.data.modalities.MODALITIES` ("oct", "mri", "ct", "pet"), which
            gives the units slices are written in, the foreground threshold and the default orientation.
        axis: axis of the [k, rows, cols] volume to cut along (0: the stored slices / B-scans / frames).
        orientation: axis codes to reorient to before cutting, None to keep the stored order, "default" for
            the modality's.
        min_foreground: drop slices with a smaller share of pixels above ``threshold`` (0 keeps every slice).
        threshold: foreground threshold in the written units; None for the modality's.
        pet_units: NIfTI PET values: "suv" (already SUV) or "bqml" (converted with the JSON sidecar).
        slice_labels: per-slice labels from :func:`read_slice_labels`.
        normal: class name given to slices labelled 0 inside abnormal volumes.
        skip_bad: skip unreadable or invalid volumes (logged, counted) instead of raising.
    """
    kind = registered(modality)
    orientation = kind.orientation if orientation == "default" else orientation
    threshold = kind.foreground if threshold is None else threshold
    slice_labels = slice_labels or {}
    out_dir, log = Path(out_dir), BadFileLog(skip_bad)
    every = [(split, item) for split in dl.SPLITS for item in volume_datalist.get(split, [])]
    ids = _volume_ids([item for _, item in every])
    result: dict[str, list[dict]] = {split: [] for split in dl.SPLITS}
    for (split, item), vid in tqdm(list(zip(every, ids)), desc="slicing volumes", unit="volume"):
        source = Path(item["image"])
        with log.guard(source):
            volume = read_volume(source, orientation, skip_bad)
            if modality == "pet" and pet_units == "bqml" and volume_suffix(source) in (".nii", ".nii.gz"):
                volume = suv_from_sidecar(volume)
            array = kind.slice_units(volume)
            items = []
            for index, image in slices(array, axis, min_foreground, threshold):
                label, cls = slice_labels.get((volume_name(source), index), (item["label"], None))
                if split == "training" and label == 1:
                    raise BadInputError(source, f"slice {index} is labelled abnormal in a training volume")
                target = out_dir / vid / f"{index:04d}.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, image.astype(np.float32))
                items.append({"image": os.path.abspath(target), "label": int(label),
                              "class": cls or _slice_class(label, item, normal),
                              "patient": item["patient"], "volume": vid, "slice": index})
            if not items:
                logger.warning("%s: no slice passed min_foreground=%s", source, min_foreground)
            result[split] += items
    log.summary("volumes")
    return result


def slice_inputs(items: list[dict], out_dir: str | Path, modality: str) -> list[dict]:
    """Inference inputs with every volume (:data:`INFERENCE_VOLUME_SUFFIXES`, and DICOM series folders: read whole,
    sorted by position, geometry checked) replaced by its slices, cut and normalised as :func:`slice_volumes` does
    for training (the modality's orientation, axis 0, every slice) and written to
    ``out_dir/<n>_<volume name>/<slice>.npy``; a slice item is ``{"image": npy, "source": volume, "slice": index}``.
    Other items get ``"source"`` (their image) and ``"slice"`` -1, so that every item has the same keys (a batch
    mixing images and slices collates by the keys of its first item).
    :func:`map_in_source_space` puts the slice maps back."""
    result = []
    for n, item in enumerate(items):
        source = Path(item["image"])
        if not source.is_dir() and volume_suffix(source) not in INFERENCE_VOLUME_SUFFIXES:
            result.append({**item, "source": item["image"], "slice": -1})
            continue
        kind = registered(modality)
        array = kind.slice_units(read_volume(source, kind.orientation))
        folder = Path(out_dir) / f"{n}_{volume_name(source)}"
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in slices(array):
            np.save(folder / f"{index:04d}.npy", image.astype(np.float32))
            result.append({**item, "image": str(folder / f"{index:04d}.npy"), "source": str(source), "slice": index})
    return result


def map_in_source_space(anomaly_map: np.ndarray, source: str | Path, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The map ``[k, rows, cols]`` of the slices :func:`slice_inputs` cut from ``source``, as an array in the source
    file's voxel order ``[i, j, k]`` and the source's affine (identity when its format has none), for a NIfTI that
    overlays the source voxel for voxel."""
    stored = read_volume(source)
    orientation = registered(modality).orientation
    if orientation and stored.affine is not None:
        _, cut_affine = reorient(stored.array, stored.affine, orientation)
        anomaly_map, _ = reorient(anomaly_map, cut_affine, "".join(orientations.aff2axcodes(stored.affine)))
    if anomaly_map.shape != stored.array.shape:
        raise ValueError(f"{source}: map of shape {anomaly_map.shape} for a volume of shape {stored.array.shape}")
    return anomaly_map.transpose(2, 1, 0), np.eye(4) if stored.affine is None else stored.affine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cut volumes into 2-D .npy slices and write a slice datalist.")
    parser.add_argument("layout", choices=("kermany", "folders", "csv"),
                        help="kermany: ROOT/train/<normal>/ + ROOT/test/<class>/; folders: ROOT/<class>/; "
                             "csv: path,label[,class][,patient][,split]")
    parser.add_argument("source", help="root folder, or the CSV file")
    parser.add_argument("--modality", required=True, choices=tuple(MODALITIES))
    parser.add_argument("--out", required=True, help="output folder (slices and datalist.json)")
    parser.add_argument("--normal", default="NORMAL", help="normal class folder name (kermany, folders)")
    parser.add_argument("--axis", type=int, default=0, help="axis of the [k, rows, cols] volume to cut along")
    parser.add_argument("--orientation", default="default",
                        help="axis codes to reorient to (e.g. LPS), 'none', or 'default' (LPS; none for OCT)")
    parser.add_argument("--min-foreground", type=float, default=0.0, help="drop slices with less foreground")
    parser.add_argument("--threshold", type=float, default=None, help="foreground threshold (default per modality)")
    parser.add_argument("--pet-units", choices=("suv", "bqml"), default="suv", help="units of PET NIfTI volumes")
    parser.add_argument("--slice-labels", help="CSV volume,slice,label[,class] of per-slice labels")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="normal volumes held out for validation")
    parser.add_argument("--val-abnormal-fraction", type=float, default=0.0)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="normal volumes kept for test (folders, csv)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-bad", action="store_true", help="skip bad volumes (logged and counted)")
    args = parser.parse_args(argv)

    cli_logging()
    shared = dict(val_fraction=args.val_fraction, val_abnormal_fraction=args.val_abnormal_fraction, seed=args.seed,
                  skip_bad=args.skip_bad, volumes=True)
    if args.layout == "kermany":
        volumes = dl.kermany_datalist(args.source, args.normal, **shared)
    elif args.layout == "folders":
        volumes = dl.folders_datalist(args.source, args.normal, test_fraction=args.test_fraction, **shared)
    else:
        volumes = dl.csv_datalist(args.source, test_fraction=args.test_fraction, **shared)
    labels = read_slice_labels(args.slice_labels) if args.slice_labels else None
    orientation = None if args.orientation.lower() == "none" else args.orientation
    datalist = slice_volumes(volumes, args.out, args.modality, args.axis, orientation, args.min_foreground,
                             args.threshold, args.pet_units, labels, args.normal, args.skip_bad)
    out = dl.write_datalist(dl.require_splits(datalist, args.source), Path(args.out) / "datalist.json")
    n_volumes = len({it["volume"] for items in datalist.values() for it in items})
    print(f"wrote {out} ({n_volumes} volumes)\n{dl.summary(datalist)}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
