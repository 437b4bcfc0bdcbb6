"""Every bundle workflow end to end through ``python -m monai.bundle run``, on a tiny synthetic OCT set.

One module fixture writes the phantom data and runs, in one interpreter, teacher distillation, student training (64x64
images, a few iterations, one Mamba module), evaluation and three inference runs; the tests check what those runs
wrote, and run resuming and a 2-process DDP run on top.
"""

import csv
import json
import os
import re
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.uid import generate_uid
from test_data_dicom_pixels import display_dataset

from hdhkd_monai.data.datalist import kermany_datalist, write_datalist
from hdhkd_monai.data.phantom import write_phantom
from hdhkd_monai.handlers import load_network
from hdhkd_monai.launcher import OFFLINE_TEACHER, read_config, run_bundle, run_bundles

TINY = {"image_size": 64, "num_modules": 1, "decoder_channels": 64, "cache_rate": 1.0, "log_interval": 1}
TEACHER = {
    **OFFLINE_TEACHER,
    "max_iterations": 3,
    "batch_size": 8,
    "stats_images": 16,
    "save_interval": 3,
}
STUDENT = {"max_iterations": 4, "batch_size": 4, "val_interval": 2}
N_TEST_PER_CLASS = 4


def run(workflows, root, interpreter=(sys.executable,), **overrides) -> str:
    """Run the workflows on the data under ``root`` into ``root``; return their console output."""
    log = root / f"log_{len(list(root.glob('log_*.txt')))}.txt"
    run_bundle(workflows, log, interpreter, bundle_root=root, dataset_dir=root / "data", **{**TINY, **overrides})
    return log.read_text()


def run_in_turn(workflows, root, each=(), **overrides) -> str:
    """:func:`run` for several workflows (a training, then its evaluation) in one interpreter; ``each`` as in
    :func:`run_bundles`."""
    log = root / f"log_{len(list(root.glob('log_*.txt')))}.txt"
    run_bundles(workflows, log, each, bundle_root=root, dataset_dir=root / "data", **{**TINY, **overrides})
    return log.read_text()


def write_phantom_data(root, n_train=18, n_test_per_class=N_TEST_PER_CLASS):
    """64x64 phantom B-scans and their datalist (validation with abnormal images) under ``root/data``."""
    write_phantom(root / "data", n_train=n_train, n_test_per_class=n_test_per_class, size=64, seed=0)
    write_datalist(kermany_datalist(root / "data", val_abnormal_fraction=0.34), root / "data" / "datalist.json")


#: The user's own scans the inference test writes: two B-scans of other sizes (rows, columns), named alike in different
#: folders, besides a NIfTI volume and a DICOM series of three B-scans each.
OWN_SIZES = {"a/scan.png": (40, 96), "b/c/scan.png": (80, 48)}
OWN_AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])


def write_own_scans(drusen: list, scans) -> None:
    """Under ``scans``: :data:`OWN_SIZES` resized from ``drusen[0]``; ``drusen[:3]`` as a NIfTI volume ``v/scan.nii.gz``
    (:data:`OWN_AFFINE`) and as a DICOM series ``d/1.2.3`` of 8-bit B-scans, in reverse file order."""
    for rel, (rows, cols) in OWN_SIZES.items():
        (scans / rel).parent.mkdir(parents=True)
        Image.open(drusen[0]).resize((cols, rows), Image.BILINEAR).save(scans / rel)
    bscans = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in drusen[:3]])  # [k, rows, cols]
    (scans / "v").mkdir()
    nib.save(nib.Nifti1Image(bscans.transpose(2, 1, 0), OWN_AFFINE), scans / "v" / "scan.nii.gz")
    series, uid = scans / "d" / "1.2.3", generate_uid()
    series.mkdir(parents=True)
    for k, path in enumerate(drusen[:3]):
        display_dataset(np.asarray(Image.open(path)), position=2.0 * k, series_uid=uid).save_as(
            series / f"{2 - k}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle folder with phantom data, a distilled PDN teacher (paper configuration) and a briefly trained student
    of the default configuration (frozen pretrained teacher); then, in the same interpreter (each python start
    imports torch and MONAI), the runs the tests check: evaluation, inference on a folder (PNG maps), on a file list
    (NIfTI maps) and on a folder of the user's own scans. (the folder, the log of the runs, the inference folders)."""
    root, out = tmp_path_factory.mktemp("bundle"), tmp_path_factory.mktemp("inference")
    write_phantom_data(root)
    fluid = sorted((root / "data" / "test" / "FLUID").glob("*.png"))
    (out / "images.txt").write_text("".join(f"{p}\n" for p in fluid[:2]))
    write_own_scans(sorted((root / "data" / "test" / "DRUSEN").glob("*.png")), out / "scans")
    runs = [
        (("train", "paper", "train_teacher"), TEACHER),
        (("train",), STUDENT),
        (("train", "evaluate"), {"n_heatmaps": 2}),
        (("inference",), {"input": fluid[0].parent, "output_dir": out / "png", "map_ext": ".png"}),
        (("inference",), {"input": out / "images.txt", "output_dir": out / "nii"}),
        (("inference",), {"input": out / "scans", "output_dir": out / "own"}),
    ]
    log = run_in_turn([w for w, _ in runs], root, each=[o for _, o in runs])
    return root, log, out


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _scalar_tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"scalars": set(), "images": set()}
    for event_file in log_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags["scalars"] |= set(acc.Tags()["scalars"])
        tags["images"] |= set(acc.Tags()["images"])
    return tags


def test_teacher_workflow_saves_the_distilled_pdn_with_its_output_statistics(trained):
    root = trained[0]
    teacher = _load(root / "models" / "teacher.pt")["teacher"]
    assert teacher["feat_mean"].shape == (1, 384, 1, 1)
    # teacher_output_stats ran: the buffers are no longer the PDN's initial 0 / 1
    assert teacher["feat_mean"].abs().sum() > 0 and not torch.allclose(teacher["feat_std"], torch.ones(1))
    assert _load(root / "models" / "teacher_last.pt")["trainer"]["iteration"] == TEACHER["max_iterations"]
    assert "distillation_loss" in _scalar_tags(root / "eval" / "teacher")["scalars"]
    assert not list((root / "models").glob(".*.tmp")), "a temporary checkpoint file was left behind"


def test_train_workflow_validates_calibrates_and_checkpoints(trained):
    root, log, _ = trained
    last = _load(root / "models" / "last.pt")
    assert last["trainer"]["iteration"] == STUDENT["max_iterations"]
    assert set(last) == {"model", "optimizer", "lr_scheduler", "best_checkpoint", "trainer"}
    best = _load(root / "models" / "model.pt")["model"]
    q, threshold = best["model.map_quantiles"], best["model.threshold"]
    assert torch.isfinite(q).all() and q[0] < q[1] and torch.isfinite(threshold)
    # the frozen teacher inside the student checkpoint carries its statistics on the training images
    assert best["model.teacher.feat_std"].shape == (1, 384, 1, 1)
    assert best["model.teacher.feat_mean"].abs().sum() > 0 and not torch.allclose(best["model.teacher.feat_std"], torch.ones(1))
    # the patch memory was fitted on every training image's 8x8 teacher cells: a 10 % greedy coreset of them
    n_train = len(json.loads((root / "data" / "datalist.json").read_text())["training"])
    assert best["model.memory.bank"].shape == (round(0.1 * n_train * 8 * 8), 384)
    assert f"patch memory: {round(0.1 * n_train * 8 * 8)} of {n_train * 64} training patches kept" in log
    # the default map is the cosine discrepancy plus the memory, weighed on the normal validation images
    assert best["model._extra_state"]["settings"]["discrepancy"] == "cosine"
    assert torch.isfinite(best["model.memory_weight"]) and best["model.memory_weight"] not in (0.0, 1.0)
    # validation every val_interval iterations, logged at the trainer's iteration
    assert re.search(r"Epoch\[2\] Metrics -- .*val_auroc", log) and re.search(r"Epoch\[4\] Metrics -- .*val_auroc", log)
    tags = _scalar_tags(root / "eval")
    assert {"train_loss", "lr", "val_auroc", "threshold"} <= tags["scalars"]
    assert tags["images"], "no heat-map image in TensorBoard"


def test_resume_continues_from_the_saved_iteration(trained, tmp_path):
    root = trained[0]
    shutil.copytree(root / "models", tmp_path / "models")
    (tmp_path / "data").symlink_to(root / "data")
    log = run(("train",), tmp_path, **{**STUDENT, "max_iterations": 6})
    assert re.search(rf"resumed from .*last\.pt at iteration {STUDENT['max_iterations']} of 6", log)
    assert "Iter: 5/6" in log and "Iter: 6/6" in log and "Iter: 1/6" not in log
    last = _load(tmp_path / "models" / "last.pt")
    assert last["trainer"]["iteration"] == 6
    # the scheduler continued (one step per iteration) rather than restarting at 0
    assert last["lr_scheduler"]["last_epoch"] == 6


def test_evaluate_workflow_writes_metrics_scores_curves_and_heatmaps(trained):
    root = trained[0]
    out = root / "eval"
    report = json.loads((out / "metrics.json").read_text())
    threshold = float(_load(root / "models" / "model.pt")["model"]["model.threshold"])
    assert report["image"]["threshold"] == pytest.approx(threshold)
    for key in ("auroc", "auprc", "f1", "acc", "sen", "spe"):
        assert 0.0 <= report["image"][key] <= 1.0
    n_abnormal, n_normal = report["image"]["n_abnormal"], report["image"]["n_normal"]
    assert report["image"]["f1_flag_all"] == pytest.approx(2 * n_abnormal / (2 * n_abnormal + n_normal))
    assert 0.0 <= report["image"]["sen_at_95spe"] <= 1.0
    assert set(report["per_class"]) == {"DRUSEN", "FLUID", "LESION"}
    assert 0.0 <= report["pixel_auroc"] <= 1.0  # the phantom ships masks
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    test_items = json.loads((root / "data" / "datalist.json").read_text())["test"]
    assert sorted(r["path"] for r in rows) == sorted(it["image"] for it in test_items)
    assert all(int(r["decision"]) == int(float(r["score"]) >= threshold) for r in rows)
    assert (out / "roc.png").stat().st_size > 0 and (out / "pr.png").stat().st_size > 0
    highest = sorted(out.glob("heatmaps/highest_*.png"))
    assert len(highest) == 2 and len(list(out.glob("heatmaps/lowest_*.png"))) == 2
    top_score = max(float(r["score"]) for r in rows)
    top_row = next(r for r in rows if float(r["score"]) == top_score)
    assert highest[0].name.endswith(f"{os.path.splitext(os.path.basename(top_row['path']))[0]}.png")


def _reference_map(root, image):
    """The inference network's map of one image, computed here from the same config and checkpoint."""
    parser = read_config(["inference"], bundle_root=str(root), dataset_dir=str(root / "data"), **TINY)
    net = parser.get_parsed_content("network").eval()
    load_network(net, root / "models" / "model.pt", key="model")
    x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"].as_tensor()[None]
    with torch.no_grad():
        return net(x)[0, 0].numpy()


def test_inference_workflow_from_a_folder_and_a_file_list(trained):
    root, _, out = trained
    images = sorted((root / "data" / "test" / "FLUID").glob("*.png"))

    with open(out / "png" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == [str(p) for p in images]
    with open(out / "nii" / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    expected = _reference_map(root, images[0])
    stem = images[0].stem
    nifti = nib.load(out / "nii" / "maps" / f"{stem}_anomaly_map.nii.gz").get_fdata().squeeze()
    np.testing.assert_allclose(nifti, expected, rtol=1e-4, atol=1e-5)
    png = np.asarray(Image.open(out / "png" / "maps" / f"{stem}_anomaly_map.png"), dtype=float)
    # PNG: the map clipped to [0, 1] as 8 bits, in the image's own row/column order
    assert (png > 0).any(), "an all-black map cannot show the orientation"
    np.testing.assert_allclose(png, np.clip(expected, 0, 1) * 255, atol=1.0)
    assert len(list((out / "png" / "maps").glob("*.png"))) == len(images)


def test_inference_on_own_scans_keeps_each_input_size_geometry_and_every_output(trained):
    """One run on a folder holding B-scans of other sizes than the network's, two of them named alike in different
    folders, a NIfTI volume of the same name, and a DICOM series folder of 8-bit B-scans: a map per input at its own
    size (each volume's with its geometry), an overlay per image and slice, and nothing overwritten."""
    root, log, inference = trained
    drusen = sorted((root / "data" / "test" / "DRUSEN").glob("*.png"))
    scans, out, series = inference / "scans", inference / "own", inference / "scans" / "d" / "1.2.3"
    assert re.search(r"scored 8 images, \d flagged abnormal .*\(2 volumes", log)
    for rel, shape in OWN_SIZES.items():
        stem = rel.removesuffix(".png")
        assert nib.load(out / "maps" / f"{stem}_anomaly_map.nii.gz").shape == shape
        assert (out / "overlays" / f"{stem}_overlay.png").is_file()
    # geometry: the map at the image's size, brought back to the network's, is the network's map of that image
    native = nib.load(out / "maps" / "a" / "scan_anomaly_map.nii.gz").get_fdata().astype(np.float32)
    back = torch.nn.functional.interpolate(torch.from_numpy(native)[None, None], size=(64, 64), mode="bilinear")
    reference = _reference_map(root, scans / "a" / "scan.png")
    assert np.corrcoef(back.numpy().ravel(), reference.ravel())[0, 1] > 0.9
    volume_map = nib.load(out / "maps" / "v" / "scan_anomaly_map.nii.gz")
    assert volume_map.shape == (64, 64, 3) and np.allclose(volume_map.affine, OWN_AFFINE)
    assert sorted(p.name for p in (out / "overlays" / "v" / "scan").iterdir()) == [
        f"slice_{k:04d}_overlay.png" for k in range(3)
    ]
    series_map = nib.load(out / "maps" / "d" / "1.2.3_anomaly_map.nii.gz")  # slice k: the PNG's map
    assert series_map.shape == (64, 64, 3) and series_map.affine[2, 3] == 0.0 and series_map.affine[2, 2] == 2.0
    np.testing.assert_allclose(series_map.get_fdata()[:, :, 1].T, _reference_map(root, drusen[1]), rtol=1e-4, atol=1e-5)
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len({(r["path"], r["slice"]) for r in rows}) == len(rows) == 8
    assert all(0 <= float(r["normal_percentile"]) <= 100 and r["decision"] in ("0", "1") for r in rows)
    with open(out / "volumes.csv") as f:
        volumes = list(csv.DictReader(f))
    assert sorted(v["volume"] for v in volumes) == [str(series), str(scans / "v" / "scan.nii.gz")]
    for volume in volumes:
        slices = [float(r["score"]) for r in rows if r["path"] == volume["volume"] and r["slice"] != "-1"]
        assert len(slices) == 3 and float(volume["score"]) == max(slices)
    # the score the threshold belongs to travels with the model
    settings = _load(root / "models" / "model.pt")["model"]["model._extra_state"]["settings"]
    assert settings["score_top_k"] == int(0.05 * TINY["image_size"] ** 2)


def test_multi_gpu_train_runs_two_processes_on_gloo(trained, tmp_path):
    root = trained[0]
    (tmp_path / "data").symlink_to(root / "data")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    log = run(("train", "multi_gpu_train"), tmp_path, interpreter=torchrun, **STUDENT)
    assert _load(tmp_path / "models" / "last.pt")["trainer"]["iteration"] == STUDENT["max_iterations"]
    assert (tmp_path / "models" / "model.pt").is_file()
    # validation and its logs run on rank 0 only: one report per validation
    assert len(re.findall(r"Epoch\[4\] Metrics -- ", log)) == 1
