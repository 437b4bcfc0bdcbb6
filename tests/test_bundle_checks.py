"""MONAI's own offline bundle checks: the Model Zoo metadata schema, the inference network's input/output shapes,
TorchScript export, and the properties MONAI requires of train and infer workflows.

The checks call the functions behind ``python -m monai.bundle verify_metadata / verify_net_in_out / ckpt_export``
with the same arguments as the command lines in the bundle's README, in this process (an interpreter start-up
per check would cost more than the checks).
"""

import math

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from hdhkd_monai.demo import BUNDLE
from hdhkd_monai.handlers import save_checkpoint
from test_bundle_workflows import TEACHER, TINY, write_phantom_data

CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
# A copy of the Model Zoo schema ships with the bundle, so the check needs neither ../shared nor the internet.
SCHEMA = BUNDLE / "docs" / "meta_schema_20240725.json"
REPO_ROOT = BUNDLE.parents[1]


def _configs(*names) -> list[str]:
    return [str(CONFIGS / f"{name}.json") for name in names]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """Phantom data and an (untrained, calibrated) tiny inference-network checkpoint at ``models/model.pt``."""
    root = tmp_path_factory.mktemp("checks")
    write_phantom_data(root, n_train=6, n_test_per_class=4)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "inference.json")])
    parser.update({"bundle_root": str(root), **TINY})
    net = parser.get_parsed_content("network_def").eval()
    net.model.map_quantiles.copy_(torch.tensor([0.5, 2.0]))
    net.model.threshold.fill_(0.1)
    save_checkpoint({"model": net}, root / "models" / "model.pt")
    save_checkpoint({"teacher": net.model.teacher}, root / "models" / "teacher.pt")
    return root, net


def test_metadata_passes_the_model_zoo_schema():
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))  # raises jsonschema's ValidationError otherwise


def test_top_level_metadata_is_the_bundle_metadata():
    top = REPO_ROOT / "metadata.json"
    assert top.is_symlink() and top.resolve() == META.resolve()


def test_inference_network_maps_a_256_image_to_a_256_anomaly_map():
    # shapes from metadata.json: image [1, 3, 256, 256] -> pred [1, 1, 256, 256], at the bundle's default sizes
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=_configs("train", "inference"), device="cpu"
    )  # raises ValueError on a wrong output channel count, spatial shape or dtype


def test_ckpt_export_gives_a_torchscript_model_with_the_same_maps(tiny_bundle, tmp_path):
    root, net = tiny_bundle
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(exported), ckpt_file=str(root / "models" / "model.pt"), key_in_ckpt="model",
        meta_file=str(META), config_file=_configs("train", "inference"), bundle_root=str(root), scan_backend="torch",
        **TINY,
    )  # fmt: skip
    loaded = torch.jit.load(str(exported))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "workflows, workflow_type, overrides",
    [
        (("train_teacher",), "train", TEACHER),
        (("train",), "train", {}),
        (("train", "evaluate"), "infer", {}),
        (("train", "inference"), "infer", {}),
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
