"""The teacher probe (kNN over patch features), the frozen pretrained teacher, and the ImageNet student encoder."""

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import LITE

from hdhkd_monai.networks import HDHKD, PretrainedTeacher
from hdhkd_monai.networks.blocks.student_encoder import StudentEncoder
from hdhkd_monai.pretrained import efficientnet_lite_state_dict
from tools.probe import nearest_neighbour_scores, patch_features


def test_nearest_neighbour_scores_equal_a_brute_force_loop():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(5, 7, 3, generator=gen), torch.randn(4, 6, 3, generator=gen)
    memory = bank.reshape(-1, 3)
    expected = torch.tensor([max(min(float((q - m).norm()) for m in memory) for q in image) for image in queries])
    torch.testing.assert_close(nearest_neighbour_scores(bank, queries, chunk=5), expected)


def _textures(n, size=64, seed=0):
    """Smooth random textures in [0, 1]: the "normal" images of the probe test."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size // 8, size // 8, generator=gen)
    return F.interpolate(noise, size=(size, size), mode="bilinear").repeat(1, 3, 1, 1)


def test_probe_on_the_pretrained_teacher_scores_a_planted_anomaly_higher():
    teacher = PretrainedTeacher(**LITE).eval()
    normal = _textures(12)
    test = _textures(4, seed=1)
    anomalous = test.clone()
    anomalous[:, :, 24:40, 24:40] = torch.linspace(0, 1, 16).view(1, 1, 1, 16)  # a sharp ramp: not a smooth texture
    bank = patch_features(teacher, normal.split(4))
    clean = nearest_neighbour_scores(bank, patch_features(teacher, [test]))
    planted = nearest_neighbour_scores(bank, patch_features(teacher, [anomalous]))
    assert (planted > clean).all()


@pytest.mark.parametrize("backbone, weights", [("resnet18", None), ("tf_efficientnet_lite0", "efficientnet-lite")])
def test_pretrained_teacher_is_frozen_and_gives_the_stride_8_grid_hdhkd_trains_against(backbone, weights):
    teacher = PretrainedTeacher(**LITE)
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 64, 96)
    f = teacher(x)
    assert f.shape == (2, 384, *teacher.output_size((64, 96))) == (2, 384, 8, 12)
    model = HDHKD(teacher, backbone=backbone, backbone_weights=weights, fusion_channels=32, encoder_channels=64,
                  decoder_channels=32, num_modules=1)  # fmt: skip
    model.train()
    assert not model.teacher.target.backbone.training  # batch-norm statistics never move
    f_t, f_sd = model(x)
    assert f_t.shape == f_sd.shape
    F.mse_loss(f_sd, f_t).backward()
    # every trainable parameter is used (DDP refuses unused ones: the EfficientNet stages past stride 16 are cut)
    assert all(p.grad is not None for p in model.student.parameters() if p.requires_grad)
    assert model.anomaly_map(x).shape == (2, 1, 64, 96)


def test_imagenet_student_encoder_starts_from_the_shipped_weights():
    encoder = StudentEncoder("tf_efficientnet_lite0", "efficientnet-lite", fusion_channels=32, out_channels=64)
    reference = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3))
    shipped = efficientnet_lite_state_dict("tf_efficientnet_lite0")
    reference.load_state_dict({k: shipped[k] for k in reference.state_dict()})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = encoder.eval().backbone((x - encoder.mean) / encoder.std)
        theirs = reference.eval()((x - 0.5) / 0.5)  # timm's normalisation for the EfficientNet-Lite weights
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, 64, 4, 4)


def test_fit_teacher_stats_standardises_the_pretrained_teacher_on_its_images():
    from hdhkd_monai.distill import fit_teacher_stats

    teacher = PretrainedTeacher(**LITE)
    images = _textures(8)
    assert fit_teacher_stats(teacher, images.split(4)) is teacher
    f = teacher.normalize(teacher(images))
    torch.testing.assert_close(f.mean(dim=(0, 2, 3)), torch.zeros(384), atol=1e-4, rtol=0)
    torch.testing.assert_close(f.std(dim=(0, 2, 3), correction=0), torch.ones(384), atol=1e-3, rtol=0)
