"""The Zoo form of the workflows, ``python -m monai.bundle run ...`` (MONAI's entry point, not the project's): every
foreseeable failure ends the output with one plain line naming the file and the fix, after MONAI's traceback.

The configs' ``initialize`` installs :func:`hdhkd_monai.errors.print_fault_last`; the in-process tests run each
workflow as MONAI's command line does (``initialize``, ``run``) and hand the failure to ``sys.excepthook`` as
Python would; one test runs the real command line.
"""

import subprocess
import sys

import pytest
from monai.bundle import ConfigWorkflow

from hdhkd_monai.data.transforms import preprocessing_fingerprint
from hdhkd_monai.handlers import save_checkpoint
from hdhkd_monai.launcher import CONFIGS, bundle_command, preprocessing, read_config
from test_bundle_workflows import TINY, write_phantom_data


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_form")
    write_phantom_data(root, n_train=6, n_test_per_class=4)
    return root


def _last_line(monkeypatch, capsys, workflows, **overrides) -> str:
    """The last line of stderr after ``workflows`` fail under MONAI's command line, as Python reports it."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # the test's hook goes with the test
    workflow = ConfigWorkflow(config_file=[str(CONFIGS / f"{w}.json") for w in workflows],
                              meta_file=str(CONFIGS / "metadata.json"), logging_file=None, **{**TINY, **overrides})
    with pytest.raises(Exception) as failure:
        workflow.initialize()
        workflow.run()
    capsys.readouterr()
    sys.excepthook(failure.type, failure.value, failure.tb)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) > 3  # the traceback is still shown, before the line
    return lines[-1]


def test_no_datalist(phantom, monkeypatch, capsys, tmp_path):
    missing = tmp_path / "datalist.json"
    line = _last_line(monkeypatch, capsys, ["train"], bundle_root=str(tmp_path), dataset_dir=str(phantom / "data"),
                      datalist=str(missing))
    assert line.startswith(f"error: {missing}: datalist file not found: write one with `python -m hdhkd_monai.data")


def test_a_missing_data_folder(phantom, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "no_such_folder"
    line = _last_line(monkeypatch, capsys, ["train"], bundle_root=str(tmp_path), dataset_dir=str(folder))
    assert line.startswith(f"error: {folder / 'datalist.json'}: datalist file not found: write one with")


def test_no_checkpoint(phantom, monkeypatch, capsys, tmp_path):
    line = _last_line(monkeypatch, capsys, ["inference"], bundle_root=str(tmp_path), input=str(phantom / "data"))
    assert line == f"error: {tmp_path / 'models' / 'model.pt'}: no trained model here: give --bundle_root the folder " \
                   "a training run wrote models/ into, point --model_ckpt at a model.pt, or train one (configs/train.json)"


def test_a_checkpoint_made_with_other_settings(phantom, monkeypatch, capsys, tmp_path):
    """A model trained on CT slices (its stored preprocessing), run through the OCT inference config."""
    net = read_config(["train"], bundle_root=str(tmp_path), **TINY).get_parsed_content("anomaly_net")
    ckpt = tmp_path / "models" / "model.pt"
    save_checkpoint({"model": net}, ckpt, extra={"preprocessing": preprocessing_fingerprint(preprocessing(["chest_ct"], 64))})
    line = _last_line(monkeypatch, capsys, ["inference"], bundle_root=str(tmp_path), input=str(phantom / "data"))
    assert line.startswith(f"error: settings differ from those {ckpt} was made with: preprocessing: made with")
    assert line.endswith("Use the configuration it was trained with (same config files and overrides), or train a "
                         "new model")


@pytest.mark.slow
def test_the_command_line_ends_with_the_line(phantom, tmp_path):
    """``python -m monai.bundle run training --config_file configs/train.json`` without a datalist, as typed."""
    command = bundle_command(["train"], bundle_root=tmp_path, dataset_dir=tmp_path, **TINY)
    command.insert(command.index("run") + 1, "training")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode != 0
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'datalist.json'}: datalist file not found: write one with"), last
