"""MONAI's own offline bundle checks: the Model Zoo metadata schema, the inference network's input/output shapes,
TorchScript and ONNX export, and the properties MONAI requires of train and infer workflows; and the config layering.

The checks call the functions behind ``python -m monai.bundle verify_metadata / verify_net_in_out / ckpt_export /
onnx_export`` with the same arguments as the command lines in the bundle's README (``inference.json`` alone, as the Model Zoo
runs them), in this process (an interpreter start-up per check would cost more than the checks).
"""

import json
import math

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, onnx_export, verify_metadata, verify_net_in_out

from hdhkd_monai.anomaly_map import map_quantiles
from hdhkd_monai.distill import fit_teacher_stats
from hdhkd_monai.errors import one_line_error
from hdhkd_monai.handlers import load_network, save_checkpoint
from hdhkd_monai.launcher import BUNDLE, CONFIGS, read_config
from hdhkd_monai.networks import PDN
from test_bundle_workflows import TEACHER, TINY, write_phantom_data

META = CONFIGS / "metadata.json"
# A copy of the Model Zoo schema ships with the bundle, so the check needs neither ../shared nor the internet.
SCHEMA = BUNDLE / "docs" / "meta_schema_20240725.json"
REPO_ROOT = BUNDLE.parents[1]


def _configs(*names) -> list[str]:
    return [str(CONFIGS / f"{name}.json") for name in names]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """Phantom data and an (untrained, calibrated) tiny checkpoint of train.json's network at ``models/model.pt``."""
    root = tmp_path_factory.mktemp("checks")
    write_phantom_data(root, n_train=6, n_test_per_class=4)
    net = read_config(["train"], bundle_root=str(root), **TINY).get_parsed_content("anomaly_net").eval()
    net.model.map_quantiles.copy_(torch.tensor([0.5, 2.0]))
    net.model.threshold.fill_(0.1)
    save_checkpoint({"model": net}, root / "models" / "model.pt")
    return root, net


def test_metadata_passes_the_model_zoo_schema():
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))  # raises jsonschema's ValidationError otherwise


def test_top_level_metadata_is_the_bundle_metadata():
    top = REPO_ROOT / "metadata.json"
    assert top.is_symlink() and top.resolve() == META.resolve()


def test_inference_network_maps_an_image_to_an_anomaly_map_of_its_size(tiny_bundle):
    # shapes from metadata.json: image [1, 3, 128, 128] -> pred [1, 1, 128, 128]; the network from the checkpoint
    root, _ = tiny_bundle
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=_configs("inference"), device="cpu",
        bundle_root=str(root),
    )  # raises ValueError on a wrong output channel count, spatial shape or dtype


def test_ckpt_export_gives_a_torchscript_model_with_the_same_maps(tiny_bundle, tmp_path):
    root, net = tiny_bundle
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(exported), ckpt_file=str(root / "models" / "model.pt"), key_in_ckpt="model",
        meta_file=str(META), config_file=_configs("inference"), bundle_root=str(root), scan_backend="torch",
        **TINY,
    )  # fmt: skip
    loaded = torch.jit.load(str(exported))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_onnx_export_gives_a_model_with_a_dynamic_batch_and_the_same_maps(tiny_bundle, tmp_path):
    """``python -m monai.bundle onnx_export ... --args_file configs/onnx_export.json`` (the bundle README's command):
    onnxruntime runs the model at batch 1 and 3 and gives the eager network's maps within 1e-4."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
    root, net = tiny_bundle
    exported = tmp_path / "model.onnx"
    onnx_export(
        net_id="network_def", filepath=str(exported), ckpt_file=str(root / "models" / "model.pt"), key_in_ckpt="model",
        meta_file=str(META), config_file=_configs("inference"), args_file=str(CONFIGS / "onnx_export.json"),
        input_shape=[1, 3, 64, 64], bundle_root=str(root), **TINY,
    )  # fmt: skip
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.rand(batch, 3, 64, 64)
        with torch.no_grad():
            expected = net(x)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


#: Each baseline's configs after train.json (the last one is its detector config, which inference.json takes), and
#: detector: (its training configs over train.json, its inference configs, the fit its training runs before
#: calibration, if any). The paper configuration's HDHKD infers with inference.json alone, like HDHKD-S.
DETECTORS = {
    "HDHKD (paper)": (("paper",), ("inference",), None),
    "PatchCore": (("patchcore",), ("inference", "patchcore"), "fit"),
    "RD4AD": (("rd4ad",), ("inference", "rd4ad"), None),
    "EfficientAD-S": (("paper", "efficientad"), ("inference", "efficientad"), "fit_map_normalisation"),
}


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def detector_bundle(request, tmp_path_factory):
    """(bundle_root, the inference configs, the calibrated network): a detector built by its training configs at
    64x64 (HDHKD's and EfficientAD's PDN teacher with fitted statistics), fitted (PatchCore's memory bank,
    EfficientAD's map normalisation) but not trained, calibrated, and saved as ``models/model.pt``; the teacher's
    own checkpoint is then removed, so inference has model.pt alone."""
    training, inference, fit = DETECTORS[request.param]
    root = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    save_checkpoint({"teacher": fit_teacher_stats(PDN(), [images])}, root / "models" / "teacher.pt")
    net = read_config(["train", *training], bundle_root=str(root), **TINY).get_parsed_content("anomaly_net")
    if fit:
        getattr(net.model, fit)(images)
    net.eval()
    with torch.no_grad():
        net.model.map_quantiles.copy_(map_quantiles(net(images)))
    net.model.threshold.fill_(0.1)
    save_checkpoint({"model": net}, root / "models" / "model.pt")
    (root / "models" / "teacher.pt").unlink()
    return root, _configs(*inference), net


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_a_detector_bundle_exports_to_torchscript_and_onnx_with_the_same_maps(detector_bundle, tmp_path):
    """inference.json (+ a baseline's detector config) rebuilds the detector from model.pt alone (a PDN teacher from
    its stored settings); ``ckpt_export`` scripts it as the Model Zoo's CI does (no trace) and
    ``onnx_export`` with ``configs/onnx_export.json`` gives a dynamic batch: both give the eager maps on new images."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
    root, configs, net = detector_bundle
    common = dict(net_id="network_def", ckpt_file=str(root / "models" / "model.pt"), key_in_ckpt="model",
                  meta_file=str(META), config_file=configs, bundle_root=str(root))  # fmt: skip
    rebuilt = read_config(configs, bundle_root=str(root)).get_parsed_content("network_def")
    load_network(rebuilt, root / "models" / "model.pt", key="model").eval()
    ckpt_export(filepath=str(tmp_path / "model.ts"), **common)
    onnx_export(filepath=str(tmp_path / "model.onnx"), args_file=str(CONFIGS / "onnx_export.json"),
                input_shape=[1, 3, 64, 64], **common)  # fmt: skip
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.rand(batch, 3, 64, 64)
        with torch.no_grad():
            expected = net(x)
            torch.testing.assert_close(rebuilt(x), expected, rtol=0, atol=0)
            torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "workflows, workflow_type, overrides",
    [
        (("train", "paper", "train_teacher"), "train", TEACHER),
        (("train",), "train", {}),
        (("train", "patchcore", "fit"), "train", {}),  # a baseline's workflow is a MONAI train workflow too
        (("inference",), "infer", {}),
    ],
)
def test_workflows_have_the_properties_monai_requires(tiny_bundle, workflows, workflow_type, overrides):
    root, _ = tiny_bundle
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f"{name}.json") for name in workflows],
        meta_file=str(META),
        logging_file=None,
        workflow_type=workflow_type,
        **{"bundle_root": str(root), "dataset_dir": str(root / "data"), **TINY, **overrides},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    # and the properties resolve to working objects, e.g. the dataset yields 3-channel images in [0, 1]
    dataset = workflow.train_dataset if workflow_type == "train" else workflow.dataset
    image = dataset[0]["image"]
    assert image.shape == (3, 64, 64) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert not math.isnan(float(image.mean()))


def test_inference_config_builds_the_network_training_builds(tmp_path):
    """inference.json stands alone (the Model Zoo's checks load it without train.json): it wires the same
    preprocessing, teacher and network as train.json, and takes their settings from the trained checkpoint only (no
    fallback values that could drift from train.json's); without a checkpoint it says so, naming the file."""
    train, inference = (json.loads((CONFIGS / f"{name}.json").read_text()) for name in ("train", "inference"))
    for key in ("image_reader", "intensity_range", "intensity", "preprocessing", "hdhkd"):
        assert train[key] == inference[key], key
    assert "teacher_def" not in inference  # the teacher is the one the checkpoint records, whatever its type
    assert set(inference["imports"]) <= set(train["imports"]) | {
        "$import numpy", "$import hdhkd_monai.data.slices", "$import hdhkd_monai.data.screening"}
    with pytest.raises(Exception) as failure:  # MONAI wraps it; the one-line message is the project's error
        read_config(["inference"], bundle_root=str(tmp_path)).get_parsed_content("image_size")
    assert "models/model.pt: no trained model here" in one_line_error(failure.value)


def test_inference_takes_the_settings_from_the_checkpoint(tiny_bundle):
    """The user need not repeat the training's settings: inference.json reads them from model.pt."""
    root, net = tiny_bundle
    parser = read_config(["inference"], bundle_root=str(root))  # no TINY overrides
    assert {k: parser.get_parsed_content(k) for k in ("image_size", "num_modules", "decoder_channels")} == {
        k: TINY[k] for k in ("image_size", "num_modules", "decoder_channels")
    }


def test_overrides_of_train_json_replace_keys_and_never_lists_by_position():
    """evaluate.json only replaces validation keys of train.json, and no layered config slices a handler list."""
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert {k for k in evaluate if "#" in k} <= {k for k in evaluate if k.startswith("validate#")}
    assert not {"dataset", "dataloader", "evaluator", "network", "teacher"} & set(evaluate)
    for name in ("evaluate", "train_teacher", "multi_gpu_train", "paper"):
        assert "handlers[" not in (CONFIGS / f"{name}.json").read_text()


def test_train_json_runs_as_training_from_the_bundle_root(monkeypatch):
    """``python -m monai.bundle run training --config_file configs/train.json`` (MONAI's docs): the ``training`` id
    runs what ``run`` runs, and paths are relative to the bundle root."""
    monkeypatch.chdir(BUNDLE)
    parser = read_config(["configs/train.json"])
    parser.parse()
    assert parser["training"] == parser["run"] and len(parser["run"]) == 1
    assert parser.get_parsed_content("datalist") == "./data/datalist.json"
