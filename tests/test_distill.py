"""PatchCore-style distillation target, target statistics, and a short distillation that lowers the MSE."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from hdhkd_monai.distill import PatchCoreTarget, TeacherDistillation, channel_pool, teacher_output_stats
from hdhkd_monai.launcher import OFFLINE_TEACHER
from hdhkd_monai.networks.nets.pdn import PDN


def _random_target(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights are the point here
        return PatchCoreTarget("resnet18", weights=None, **kwargs)


def _photo_crops(n_per_photo=2, size=64):
    """Real photos (no download): 64x64 crops of scikit-image's sample images, in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    crops = []
    for photo in (data.chelsea(), data.astronaut(), data.coffee(), data.rocket()):
        image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
        image = F.interpolate(image, size=(96, 96), mode="bilinear", antialias=True)[0]
        for _ in range(n_per_photo):
            i, j = torch.randint(0, 96 - size, (2,), generator=gen).tolist()
            crops.append(image[:, i : i + size, j : j + size])
    return torch.stack(crops)


def _reference_channel_pool(x, channels):
    """Adaptive average pooling over channels written out bin by bin."""
    c = x.shape[1]
    bins = [x[:, math.floor(i * c / channels) : math.ceil((i + 1) * c / channels)].mean(1) for i in range(channels)]
    return torch.stack(bins, dim=1)


@pytest.mark.parametrize("c_in, c_out", [(10, 4), (6, 16), (1536, 384)])
def test_channel_pool_matches_bin_by_bin_reference(c_in, c_out):
    x = torch.randn(2, c_in, 3, 5)
    torch.testing.assert_close(channel_pool(x, c_out), _reference_channel_pool(x, c_out))


def test_target_matches_patchcore_reference():
    target = _random_target()
    x = torch.rand(2, 3, 64, 80)
    features = target.backbone((x - target.mean) / target.std)
    grid = features[0].shape[-2:]
    pooled = []
    for f in features:  # 3x3 neighbourhood mean with zero padding, per layer, as PatchCore's unfold + mean
        patches = F.unfold(f, kernel_size=3, padding=1).view(f.shape[0], f.shape[1], 9, *f.shape[-2:])
        f = _reference_channel_pool(patches.mean(2), 1024)
        pooled.append(F.interpolate(f, size=grid, mode="bilinear", align_corners=False))
    expected = _reference_channel_pool(torch.cat(pooled, dim=1), 384)
    torch.testing.assert_close(target(x), expected)


def test_target_grid_and_frozen():
    target = _random_target()
    assert target.layer_names == ("layer2", "layer3") and target.stride == 8
    assert all(not p.requires_grad for p in target.parameters())
    target.train()
    assert not any(m.training for m in target.modules())
    bn = target.backbone.bn1
    running_mean = bn.running_mean.clone()
    out = target(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 384, 8, 12) and out.grad_fn is None
    torch.testing.assert_close(bn.running_mean, running_mean, rtol=0, atol=0)


def test_efficientnet_lite_target_uses_stride_8_and_16_stages():
    target = PatchCoreTarget("tf_efficientnet_lite0", weights="efficientnet-lite")
    assert target.layer_names == ("blocks.2", "blocks.4") and target.backbone.feature_info.reduction() == [8, 16]
    assert target(torch.rand(1, 3, 64, 64)).shape == (1, 384, 8, 8)


def test_target_stats_normalise_the_fitting_images():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 64, 64)
    distill = TeacherDistillation(PDN(), _random_target())
    with pytest.raises(RuntimeError, match="fit_target_stats"):
        distill(images)
    mean, std = distill.fit_target_stats([images[:4], images[4:]])
    assert mean.shape == std.shape == (1, 384, 1, 1)
    raw = distill.target_features(images)
    normalised = (raw - distill.target_mean) / distill.target_std
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(384), rtol=0, atol=1e-4)
    # A random backbone has dead (all-zero) channels: they must come out as 0, not NaN.
    live = raw.std(dim=(0, 2, 3)) > 0
    expected_std = live.float()
    assert 0 < live.sum() < 384
    torch.testing.assert_close(normalised.std(dim=(0, 2, 3), unbiased=False), expected_std, rtol=0, atol=1e-3)

    loader = torch.utils.data.DataLoader([{"image": image} for image in images], batch_size=4)
    torch.testing.assert_close(distill.fit_target_stats(loader), (mean, std))
    first_four = distill.fit_target_stats([images[:3], images[3:]], max_images=4)
    torch.testing.assert_close(first_four, distill.fit_target_stats([images[:4]]))

    pred, target = distill(images[:2])
    assert pred.shape == target.shape == (2, 384, 8, 8) and target.grad_fn is None


def test_target_is_resized_onto_the_pdn_grid():
    distill = TeacherDistillation(PDN(), _random_target(), target_input_size=128)
    images = torch.rand(2, 3, 64, 64)
    distill.fit_target_stats([images])
    target_grid = distill.target_features(images)
    assert target_grid.shape[-2:] == (16, 16)
    pred, target = distill(images)
    assert pred.shape == target.shape == (2, 384, 8, 8)
    normalised = (target_grid - distill.target_mean) / distill.target_std
    torch.testing.assert_close(target, F.interpolate(normalised, size=(8, 8), mode="bilinear"))


def test_empty_or_malformed_input_errors_clearly():
    distill = TeacherDistillation(PDN(), _random_target())
    with pytest.raises(ValueError, match="no images"):
        distill.fit_target_stats([])
    with pytest.raises(ValueError, match="no images"):
        teacher_output_stats(distill.teacher, iter(()))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(3, 64, 64\)"):
        distill.fit_target_stats([torch.rand(3, 64, 64)])
    with pytest.raises(KeyError, match="'image'"):
        distill.fit_target_stats([{"img": torch.rand(1, 3, 64, 64)}])


def test_teacher_output_stats_normalise_the_pdn_outputs():
    teacher = PDN().train()
    images = torch.rand(5, 3, 64, 64)
    mean, std = teacher_output_stats(teacher, [images[:2], images[2:]])
    assert teacher.training and mean.shape == std.shape == (1, 384, 1, 1)
    teacher.feat_mean.copy_(mean)
    teacher.feat_std.copy_(std)
    with torch.no_grad():
        normalised = teacher.normalize(teacher(images))
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(384), rtol=0, atol=1e-4)
    torch.testing.assert_close(normalised.std(dim=(0, 2, 3), unbiased=False), torch.ones(384), rtol=0, atol=1e-3)


def test_distillation_lowers_the_mse_on_real_photos():
    torch.manual_seed(0)
    images = _photo_crops()
    target = PatchCoreTarget(OFFLINE_TEACHER["target_backbone"], weights=OFFLINE_TEACHER["target_weights"])
    distill = TeacherDistillation(PDN(), target)
    distill.fit_target_stats([images])
    optimizer = torch.optim.Adam(distill.teacher.parameters(), lr=1e-3, weight_decay=1e-5)
    mse = nn.MSELoss()

    def loss_on_all():
        with torch.no_grad():
            return mse(*distill(images)).item()

    initial = loss_on_all()
    for _ in range(50):
        pred, target = distill(images[torch.randperm(len(images))[:4]])
        optimizer.zero_grad()
        mse(pred, target).backward()
        optimizer.step()
    final = loss_on_all()
    assert 0.8 < initial < 1.5  # normalised targets against an untrained PDN near zero
    assert final < 0.7 * initial  # measured: 0.57 x initial
