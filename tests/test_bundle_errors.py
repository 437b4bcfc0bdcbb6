"""Bad input stops a workflow with an error that names the file: a corrupt image, an empty data folder or split, and
a checkpoint of another architecture or workflow."""

import json
import traceback
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from hdhkd_monai.handlers import save_checkpoint
from hdhkd_monai.launcher import CONFIGS, read_config, run_bundles
from test_bundle_workflows import TEACHER, TINY, write_phantom_data


def run_workflow(workflows, root, **overrides) -> None:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f"{name}.json") for name in workflows],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=None,
        **{"bundle_root": str(root), "dataset_dir": str(root / "data"), **TINY, **overrides},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def error_text(excinfo) -> str:
    """The whole chained traceback, as the user sees it (MONAI wraps errors raised while parsing configs)."""
    return "".join(traceback.format_exception(excinfo.value))


@pytest.fixture
def phantom(tmp_path):
    write_phantom_data(tmp_path, n_train=6, n_test_per_class=4)
    return tmp_path


def _network_def(root, **overrides):
    """The untrained network of train.json, as its checkpoint stores it."""
    return read_config(["train"], bundle_root=str(root), **{**TINY, **overrides}).get_parsed_content("anomaly_net")


def test_a_corrupt_training_image_is_named(phantom):
    bad = Path(json.loads((phantom / "data" / "datalist.json").read_text())["training"][0]["image"])
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    with pytest.raises(Exception) as excinfo:
        run_workflow(("train", "paper", "train_teacher"), phantom, **{**TEACHER, "max_iterations": 1})
    assert f"{bad}: unreadable image" in error_text(excinfo)


def test_an_empty_image_folder_is_named(phantom):
    empty = phantom / "imagenet"
    empty.mkdir()
    with pytest.raises(Exception) as excinfo:
        run_workflow(("train", "paper", "train_teacher"), phantom, teacher_data=str(empty), **{**TEACHER, "max_iterations": 1})
    assert f"{empty}: no image files" in error_text(excinfo)


def test_an_empty_datalist_split_is_named(phantom):
    datalist = phantom / "data" / "datalist.json"
    content = json.loads(datalist.read_text())
    datalist.write_text(json.dumps({**content, "training": []}))
    with pytest.raises(Exception) as excinfo:
        run_workflow(("train",), phantom, max_iterations=1)
    assert f"{datalist}: the 'training' split is empty" in error_text(excinfo)


@pytest.mark.parametrize(
    "workflows, overrides",
    [(("train", "evaluate"), {}), (("inference",), {"backbone": "tf_efficientnet_lite0"})],  # inference reads it
)
def test_a_student_checkpoint_of_another_backbone_is_named(phantom, workflows, overrides):
    checkpoint = phantom / "models" / "model.pt"
    network = _network_def(phantom, backbone="resnet34", backbone_weights=None)
    save_checkpoint({"model": network}, checkpoint)
    with pytest.raises(Exception) as excinfo:
        run_workflow(workflows, phantom, **overrides)  # configured with the default backbone, tf_efficientnet_lite0
    assert (f"{checkpoint}: settings differ from those the checkpoint was made with: "
            "backbone: made with 'resnet34', now 'tf_efficientnet_lite0'") in error_text(excinfo)


def test_a_checkpoint_of_another_workflow_is_named(phantom):
    student = phantom / "models" / "model.pt"
    save_checkpoint({"model": _network_def(phantom)}, student)
    with pytest.raises(Exception) as excinfo:  # the paper configuration loads its distilled PDN teacher
        run_workflow(("train", "paper"), phantom, teacher_ckpt=str(student), max_iterations=1)
    assert f"{student}: has no entry ['teacher']" in error_text(excinfo)


def test_a_missing_teacher_checkpoint_names_the_command_that_distils_it(phantom):
    missing = phantom / "models" / "teacher.pt"
    with pytest.raises(Exception) as excinfo:
        run_workflow(("train", "paper"), phantom, max_iterations=1)
    text = error_text(excinfo)
    assert f"checkpoint not found: {missing}" in text
    command = "['configs/train.json','configs/paper.json','configs/train_teacher.json']"
    assert f"python -m monai.bundle run --config_file \"{command}\"" in text


def test_a_missing_datalist_names_the_command_that_writes_it(phantom):
    missing = phantom / "elsewhere" / "datalist.json"
    with pytest.raises(Exception) as excinfo:
        run_workflow(("train",), phantom, datalist=str(missing), max_iterations=1)
    assert f"{missing}: datalist file not found: write one with `python -m hdhkd_monai.data.datalist`" in error_text(
        excinfo
    )


@pytest.mark.slow
def test_bundle_runs_in_one_interpreter_stop_at_the_first_failure_with_the_log_tail(tmp_path):
    """``run_bundles`` runs each workflow in turn in one child, writing each command, with the shared overrides and
    the run's own, to the log before its output, and a failing workflow stops the ones after it."""
    configs = []
    for name, expression in (("first", "$print('first ran', @shared, @own)"), ("fails", "$1 / 0"),
                             ("third", "$print('third ran')")):
        configs.append(tmp_path / f"{name}.json")
        configs[-1].write_text(json.dumps({"run": expression}))
    log = tmp_path / "log.txt"
    with pytest.raises(RuntimeError, match=r"(?s)bundle run failed .*log .*ZeroDivisionError"):
        run_bundles([[c] for c in configs], log, each=[{"own": "mine"}], shared="ours")
    text = log.read_text()
    assert text.count("-m monai.bundle run") == 2 and text.index("fails.json") > text.index("first ran ours mine")
    first, second = [line for line in text.splitlines() if "-m monai.bundle run" in line]
    assert "--shared ours --own mine" in first and "--shared ours" in second and "--own" not in second
    assert "third ran" not in text


def test_bundle_runs_without_a_log_run_in_this_process_and_a_failure_raises_its_own_error(tmp_path, capsys):
    """Without a log (the demo's console) the workflows run in the calling process, which has imported torch and
    MONAI already; the first failure stops the rest with the exception MONAI raised."""
    configs = []
    for name, expression in (("first", "$print('first ran', @shared)"), ("fails", "$1 / 0"),
                             ("third", "$print('third ran')")):
        configs.append(tmp_path / f"{name}.json")
        configs[-1].write_text(json.dumps({"run": expression}))
    assert len(run_bundles([configs[:1]], shared="ours")) == 1
    assert "first ran ours" in capsys.readouterr().out  # sys.stdout of this process: a child writes past it
    with pytest.raises(RuntimeError, match="Failed to evaluate") as raised:  # MONAI's, around the cause
        run_bundles([[c] for c in configs], shared="ours")
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert "third ran" not in capsys.readouterr().out
