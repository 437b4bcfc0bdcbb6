"""Distillation loss (eq. 5) and its EfficientAD hard-feature variant."""

import pytest
import torch

from hdhkd_monai.losses import DistillationLoss


def test_l2_loss_is_the_mean_squared_difference():
    f_t = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # [1, 2, 1, 2]
    f_sd = torch.tensor([[[[0.0, 2.0]], [[1.0, 7.0]]]])
    assert DistillationLoss()(f_t, f_sd).item() == pytest.approx((1 + 0 + 4 + 9) / 4)


def test_hard_loss_matches_efficientad_quantile_selection():
    torch.manual_seed(0)
    f_t, f_sd = torch.randn(2, 16, 5, 7), torch.randn(2, 16, 5, 7)
    d = (f_t - f_sd).pow(2)
    for q in (0.5, 0.9, 0.999):
        expected = d[d >= torch.quantile(d, q)].mean()  # EfficientAD's hard loss
        torch.testing.assert_close(DistillationLoss(hard_quantile=q)(f_t, f_sd), expected)


def test_hard_loss_only_trains_the_top_quantile():
    f_t = torch.zeros(1, 1, 10, 10)
    f_sd = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10).requires_grad_()
    loss = DistillationLoss(hard_quantile=0.9)(f_t, f_sd)
    loss.backward()
    top = torch.arange(90, 100, dtype=torch.float32)  # quantile 0.9 of 0..99 is 89.1: the ten values 90..99
    assert loss.item() == pytest.approx(top.pow(2).mean().item())
    assert (f_sd.grad.flatten()[90:] > 0).all() and (f_sd.grad.flatten()[:90] == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="hard_quantile"):
        DistillationLoss(hard_quantile=1.0)
    with pytest.raises(ValueError, match="differ"):
        DistillationLoss()(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 3))
