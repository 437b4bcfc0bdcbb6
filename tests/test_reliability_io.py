"""Issue 20: nothing lost, nothing written outside. Each test is a row of docs/reliability.md.

Inference runs in this process through ``python -m hdhkd_monai infer`` (``main``) on a tiny untrained model.pt
(64 px, the pip-shipped EfficientNet-Lite0 teacher, one Mamba module) and a few 64 px phantom B-scans: what is
tested is where outputs go and what is kept, not the scores.
"""

import csv
import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hdhkd_monai.__main__ import main
from hdhkd_monai.data import datalist as dl
from hdhkd_monai.data.bounds import ImageBounds
from hdhkd_monai.data.containment import ContainmentError, confined, output_name
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.data.phantom import write_phantom
from hdhkd_monai.data.screening import screen_image, screen_inputs
from hdhkd_monai.data.transforms import preprocessing_fingerprint
from hdhkd_monai.handlers import save_checkpoint
from hdhkd_monai.handlers.inference import output_root
from hdhkd_monai.handlers.outputs import EXIT_SKIPPED, OutputBusyError, OutputSet, RowFile
from hdhkd_monai.launcher import REPO, read_config

TINY = {"image_size": 64, "num_modules": 1, "decoder_channels": 16, "fusion_channels": 16, "encoder_channels": 32}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle folder with an untrained tiny model.pt (its settings stored, as training stores them) and phantom
    B-scans under ``data/test/<class>/``."""
    root = tmp_path_factory.mktemp("bundle")
    parser = read_config(["inference"], bundle_root=str(root), **TINY)
    fingerprint = preprocessing_fingerprint(parser.get_parsed_content("preprocessing"))
    save_checkpoint({"model": parser.get_parsed_content("network_def")}, root / "models" / "model.pt",
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
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hdhkd_monai.handlers.outputs import OutputSet; "
        f"held = OutputSet({str(tmp_path / 'out')!r}); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="another run is writing to this folder"):
            OutputSet(tmp_path / "out")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    OutputSet(tmp_path / "out").close()  # the kernel dropped the killed run's lock


def test_overwrite_and_resume_together_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="overwrite and resume both set"):
        OutputSet(tmp_path, overwrite=True, resume=True)
