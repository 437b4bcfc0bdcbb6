"""A user's own scans (issue 13), one test per row of what went wrong: each bad input stops with a named error
before work starts, and nothing is lost or overwritten. The end-to-end runs on a trained model (inference on a
single file, a nested folder with duplicate names and a volume; evaluation with another score top-k) are in
``test_bundle_workflows.py``, which trains the model once."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from torch import nn

from hdhkd_monai.data import datalist as dl
from hdhkd_monai.data import slices
from hdhkd_monai.errors import BadInputError, SettingsMismatchError, one_line_error, run_cli
from hdhkd_monai.data.transforms import preprocessing_fingerprint
from hdhkd_monai.handlers import (
    AtomicCheckpointSaver,
    EvaluationReport,
    NamedCheckpointLoader,
    output_root,
    save_checkpoint,
)
from hdhkd_monai.__main__ import main as entry_point
from conftest import REPO_ROOT as REPO
from hdhkd_monai.launcher import CONFIGS, preprocessing, read_config
from hdhkd_monai.networks import HDHKD, PDN, SS2D
from hdhkd_monai.pretrained import default_weights
from test_bundle_workflows import TINY, write_phantom_data


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_phantom_data(root, n_train=10, n_test_per_class=4)
    return root


def _tiny_hdhkd(padding: bool = False, image_size: int = 32, score_top_k: int | None = None) -> HDHKD:
    """A PDN-teacher HDHKD small enough to build in well under a second."""
    return HDHKD(PDN(padding=padding, out_channels=8), backbone="resnet18", num_modules=1, fusion_channels=16,
                 encoder_channels=32, decoder_channels=16, image_size=image_size, score_top_k=score_top_k)


# --- inputs -----------------------------------------------------------------------------------------------------


def test_a_single_image_file_is_one_item_not_a_text_list(phantom):
    scan = next((phantom / "data" / "test" / "DRUSEN").glob("*.png"))
    assert dl.image_items(scan) == [{"image": str(scan.resolve())}]
    binary = phantom / "scan.dat"
    binary.write_bytes(scan.read_bytes())  # not an image suffix, not text either
    with pytest.raises(BadInputError, match=r"scan\.dat: neither an image .* nor a text list"):
        dl.image_items(binary)


def test_a_glob_pattern_selects_images_recursively(phantom):
    items = dl.image_items(phantom / "data" / "**" / "DRUSEN-*.png")  # test/DRUSEN/ and masks/DRUSEN/
    assert len(items) == 8 and {Path(it["image"]).parent.parent.name for it in items} == {"test", "masks"}
    with pytest.raises(BadInputError, match="no image files match"):
        dl.image_items(phantom / "data" / "**" / "nothing-*.png")


def test_output_names_mirror_the_input_paths_and_a_clash_is_named(tmp_path):
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "scan.png").touch()
    items = dl.image_items(tmp_path)
    assert output_root(items) == str(tmp_path.resolve())
    (tmp_path / "a" / "scan.jpg").touch()  # same stem beside the PNG: its outputs would overwrite the PNG's
    with pytest.raises(BadInputError, match=r"scan\.(png|jpg): would write the same outputs as .*scan\.(png|jpg)"):
        output_root(dl.image_items(tmp_path))


def test_a_metatensor_from_the_monai_transforms_goes_through_the_network():
    net = _tiny_hdhkd(image_size=64).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain = net.anomaly_map(x)
        meta = net.anomaly_map(MetaTensor(x, meta={"filename_or_obj": "scan.png"}))
        tokens = torch.rand(1, 4, 4, 8)
        scanned = SS2D(8, d_state=4).eval()
        torch.testing.assert_close(scanned(MetaTensor(tokens)), scanned(tokens))  # the scan alone too
    torch.testing.assert_close(meta, plain)


def test_backbone_weights_follow_the_backbone():
    assert default_weights("tf_efficientnet_lite0") == "efficientnet-lite" and default_weights("resnet34") is None
    assert read_config(["inference"], backbone="resnet34").get_parsed_content("backbone_weights") is None


# --- the checkpoint carries its settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "other, named",
    [
        (dict(image_size=64), "image_size: made with 32, now 64"),
        (dict(padding=True), "teacher.padding: made with False, now True"),
        (dict(score_top_k=5), "score_top_k: made with None, now 5"),  # scores in other units than calibrated
    ],
)
def test_a_checkpoint_loaded_with_other_settings_names_each_difference(tmp_path, other, named):
    trained = _tiny_hdhkd()
    save_checkpoint({"model": trained}, tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert state["_extra_state"]["settings"]["image_size"] == 32  # stored with the weights
    with pytest.raises(SettingsMismatchError, match=named):
        _tiny_hdhkd(**other).load_state_dict(state)
    _tiny_hdhkd().load_state_dict(state)  # the same settings load



def test_evaluation_builds_the_teacher_without_fitting_its_statistics(phantom):
    """train.json + evaluate.json build the network, then model.pt's teacher statistics replace its buffers:
    fitting them over the training split first was wasted work. Training fits them in a handler."""
    parser = read_config(["train", "evaluate"], bundle_root=str(phantom), dataset_dir=str(phantom / "data"), **TINY)
    teacher = parser.get_parsed_content("teacher")
    parser.get_parsed_content("validate#evaluator")
    assert torch.equal(teacher.feat_mean, torch.zeros_like(teacher.feat_mean))


# --- fail early -------------------------------------------------------------------------------------------------


def test_a_truncated_image_is_found_when_the_datalist_is_built_and_skip_bad_counts_it(phantom, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(phantom / "data", root, ignore=shutil.ignore_patterns("*.json"))
    bad = sorted((root / "train" / "NORMAL").glob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:200])  # the header survives: only a decode finds it
    with pytest.raises(BadInputError, match=rf"{bad.name}: unreadable image"):
        dl.kermany_datalist(root)
    datalist = dl.kermany_datalist(root, skip_bad=True)
    assert str(bad) not in {it["image"] for items in datalist.values() for it in items}
    assert "skipped 1 bad image files" in caplog.text


def test_a_datalist_naming_a_missing_file_fails_before_the_workflow_starts(phantom, tmp_path):
    datalist = {name: dl.datalist_split(phantom / "data" / "datalist.json", name) for name in dl.SPLITS}
    datalist["training"][4] = {**datalist["training"][4], "image": str(tmp_path / "gone.png")}
    path = dl.write_datalist(datalist, tmp_path / "datalist.json")
    with pytest.raises(BadInputError, match=r"gone\.png: image file not found \(listed in the 'training' split"):
        dl.datalist_split(path, "training")


def test_volumes_that_are_all_bad_leave_no_datalist_but_an_error(tmp_path):
    root = tmp_path / "ct"
    for split, cls in (("train", "normal"), ("test", "normal"), ("test", "tumour")):
        (root / split / cls).mkdir(parents=True)
        for n in range(2):
            (root / split / cls / f"{cls}-{split}{n}-1.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(BadInputError, match=r"'training', 'validation', 'test' split\(s\) would be empty"):
        slices.main(["kermany", str(root), "--modality", "ct", "--normal", "normal", "--out", str(tmp_path / "s"),
                     "--skip-bad"])
    assert not (tmp_path / "s" / "datalist.json").exists()


def test_a_test_split_without_normal_images_is_not_computable_unless_scores_only(phantom, tmp_path):
    datalist = dl.datalist_split(phantom / "data" / "datalist.json", "test")
    abnormal_only = {"training": [datalist[0]], "validation": [datalist[0]],
                     "test": [it for it in datalist if it["label"] == 1]}
    path = dl.write_datalist(abnormal_only, tmp_path / "datalist.json")
    with pytest.raises(BadInputError, match=r"'test' split has no normal \(label 0\) images: AUROC .* not computable"):
        dl.evaluation_items(path)
    assert len(dl.evaluation_items(path, scores_only=True)) == len(abnormal_only["test"])


def test_a_normal_only_validation_split_has_no_key_metric_to_call_best(phantom, tmp_path):
    items = dl.datalist_split(phantom / "data" / "datalist.json", "validation")
    normal_only = {name: dl.datalist_split(phantom / "data" / "datalist.json", name) for name in dl.SPLITS}
    normal_only["validation"] = [it for it in items if it["label"] == 0]
    path = dl.write_datalist(normal_only, tmp_path / "datalist.json")
    for data, key_metric in ((phantom / "data" / "datalist.json", "val_auroc"), (path, None)):
        parser = read_config(["train"], bundle_root=str(tmp_path), datalist=str(data), **TINY)
        assert parser.get_parsed_content("validate#evaluator").state.key_metric_name == key_metric


def test_a_checkpoint_save_interrupted_earlier_leaves_no_temporary_file(tmp_path):
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(tmp_path, {"net": nn.Linear(2, 1)}, "last.pt", save_final=True).attach(engine)
    engine.run([0])
    assert not stale.exists() and (tmp_path / "last.pt").is_file()


def test_errors_print_as_one_line_naming_the_file(tmp_path):
    try:
        try:
            raise BadInputError(tmp_path / "scan.png", "unreadable image (OSError: truncated)")
        except BadInputError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression:\n$@evaluator.run()") from e
    except RuntimeError as chained:
        assert one_line_error(chained) == f"{tmp_path / 'scan.png'}: unreadable image (OSError: truncated)"


@pytest.mark.slow
def test_the_project_entry_point_is_quiet_and_fails_in_one_line(tmp_path):
    """``python -m hdhkd_monai run``: MONAI's security notice hidden, one error line naming the file, status 1."""
    cmd = [sys.executable, "-m", "hdhkd_monai", "run", "--config_file", str(CONFIGS / "inference.json"),
           "--bundle_root", str(tmp_path), "--input", str(tmp_path / "scan.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'scan.png'}: image file not found (--debug shows the traceback)"
    ]
    assert "parsing config_file" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    with pytest.raises(RuntimeError) as debug:  # --debug: the whole chain, as MONAI raises it
        entry_point([*cmd[3:], "--debug"])
    assert isinstance(debug.value.__cause__, BadInputError)


# --- resume is exact ----------------------------------------------------------------------------------------------


def _train(root, stop_at=None, **overrides) -> dict[int, float]:
    """Train in this process; return the loss of each iteration. ``stop_at`` kills the run after that iteration
    (when last.pt was just saved: as a kill between saves loses the iterations since the last one)."""
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=None, bundle_root=str(root), dataset_dir=str(root / "data"),
                              **{**TINY, "max_iterations": 8, "batch_size": 4, "val_interval": 2, "stats_images": 8,
                                 **overrides})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: losses.__setitem__(e.state.iteration, e.state.output["loss"].item()))
    if stop_at:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    workflow.run()
    workflow.finalize()
    return losses


@pytest.mark.slow
def test_a_killed_and_resumed_run_has_the_loss_curve_of_an_uninterrupted_one(phantom, tmp_path):
    """Killed mid-pass over the data (3 batches a pass, stopped after batch 4): same batches and dropout after."""
    (tmp_path / "data").symlink_to(phantom / "data")
    uninterrupted = _train(tmp_path, resume=False)
    shutil.rmtree(tmp_path / "models")
    first = _train(tmp_path, stop_at=4)
    resumed = _train(tmp_path)
    assert sorted(first) == [1, 2, 3, 4] and sorted(resumed) == [5, 6, 7, 8]
    # CPU float arithmetic is deterministic here; the tolerance leaves room for other BLAS builds
    np.testing.assert_allclose([resumed[i] for i in range(5, 9)], [uninterrupted[i] for i in range(5, 9)],
                               rtol=1e-5)
    assert not math.isclose(uninterrupted[5], uninterrupted[1])  # the curve moves: equality is not trivial


# --- volumes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["oct", "mri"])  # stored order; reoriented to LPS and back
def test_slice_maps_go_back_to_the_source_volume_voxel_for_voxel(tmp_path, modality):
    data = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)  # [i, j, k]
    affine = np.array([[-0.5, 0, 0, 10], [0, 0.7, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])  # L, A, S: LPS flips j
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), source)
    items = slices.slice_inputs([{"image": str(source)}, {"image": "flat.png"}], tmp_path / "slices", modality)
    assert [it["slice"] for it in items] == [0, 1, 2, -1] and items[0]["source"] == str(source)
    cut = np.stack([np.load(it["image"]) for it in items[:3]])  # what the network sees, slice by slice
    array, back = slices.map_in_source_space(cut, source, modality)  # a "map" equal to the slices
    np.testing.assert_allclose(back, affine)
    # OCT slices keep the stored order (min-max scaled); MRI slices were cut in LPS order, j flipped, and come back
    in_source_order = cut.transpose(2, 1, 0) if modality == "oct" else cut.transpose(2, 1, 0)[:, ::-1]
    np.testing.assert_allclose(array, in_source_order)
    if modality == "oct":
        np.testing.assert_allclose(array, (data - data.min()) / np.ptp(data), rtol=1e-5)


def test_a_model_run_with_another_preprocessing_is_named(tmp_path):
    """The data set's config file forgotten at inference (a CT model through the OCT pipeline): model.pt stores
    what its preprocessing makes of a probe slice, and the loader compares."""
    lung, oct_ = (preprocessing_fingerprint(p) for p in (preprocessing(["chest_ct"], 64), preprocessing(image_size=64)))
    assert lung != oct_ and lung == preprocessing_fingerprint(preprocessing(["chest_ct"], 64))
    assert preprocessing_fingerprint(preprocessing(image_size=32))[0] == [3, 32, 32]
    net = nn.Linear(2, 1)
    save_checkpoint({"model": net}, tmp_path / "model.pt", extra={"preprocessing": lung})
    engine = Engine(lambda e, b: None)
    NamedCheckpointLoader(tmp_path / "model.pt", {"model": net}, expected={"preprocessing": oct_}).attach(engine)
    with pytest.raises(SettingsMismatchError, match=r"model\.pt was made with: preprocessing: made with \[\[3, 64, 64\], 0\.8"):
        engine.run([0])


def test_scores_only_writes_scores_and_heatmaps_without_metrics(tmp_path):
    outputs = [{"image": MetaTensor(torch.rand(3, 8, 8), meta={"filename_or_obj": f"/x/img{i}.png"}),
                "pred": torch.rand(1, 8, 8), "score": float(i)} for i in range(3)]
    engine = Engine(lambda e, batch: [outputs[item["i"]] for item in batch])
    EvaluationReport(tmp_path, threshold=1.0, n_heatmaps=1, scores_only=True).attach(engine)
    engine.run([[{"i": i, "label": 1, "class": "AMD"} for i in range(3)]], max_epochs=1)  # abnormal images only
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 3
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 2
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "roc.png").exists()


def test_without_a_key_metric_every_validation_is_saved(tmp_path):
    """A normal-only validation split has no AUROC: model.pt then holds the latest calibrated model."""
    net = nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(tmp_path, {"net": net}, "model.pt", key_metric_name="val_auroc")
    engine = Engine(lambda e, b: net.weight.data.fill_(e.state.epoch))
    saver.attach(engine)
    written = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: written.append(
        float(torch.load(tmp_path / "model.pt", weights_only=True)["net"]["weight"][0, 0])))
    engine.run([0], max_epochs=3)
    assert written == [1.0, 2.0, 3.0]


def test_the_data_tools_print_a_bad_input_as_one_line(tmp_path, capsys):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "NORMAL" / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    assert run_cli(dl.main, ["kermany", str(tmp_path), "--out", str(tmp_path / "datalist.json")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path / 'train' / 'NORMAL' / 'scan.png'}: "
                                                    "unreadable image (UnidentifiedImageError: cannot identify "
                                                    f"image file '{tmp_path / 'train' / 'NORMAL' / 'scan.png'}') "
                                                    "(--debug shows the traceback)"]
