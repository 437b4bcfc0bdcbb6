"""Anomaly map, image scores and EfficientAD map normalisation against hand computations."""

import pytest
import torch
import torch.nn.functional as F

from hdhkd_monai.anomaly_map import discrepancy_map, image_score, map_quantiles, normalize_map, quantile


def test_discrepancy_map_is_the_channel_mean_of_squared_differences():
    f_t = torch.zeros(1, 2, 2, 2)
    f_sd = torch.tensor([[[[1.0, 0.0], [2.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]]])
    expected = torch.tensor([[[[5.0, 0.0], [2.0, 8.0]]]])  # (1+9)/2, 0, (4+0)/2, (0+16)/2
    torch.testing.assert_close(discrepancy_map(f_t, f_sd, [2, 2]), expected)
    up = discrepancy_map(f_t, f_sd, [8, 8])
    assert up.shape == (1, 1, 8, 8)
    torch.testing.assert_close(up, F.interpolate(expected, size=(8, 8), mode="bilinear", align_corners=False))


def test_discrepancy_map_border_lines_the_grid_up_with_the_image():
    f_t = torch.zeros(2, 3, 2, 2)
    f_sd = torch.randn(2, 3, 2, 2)
    raw = f_sd.pow(2).mean(1, keepdim=True)
    # With a border of one cell a 2x2 grid stands for a 4x4 one: the map is the grid edge-padded, nothing stretched.
    out = discrepancy_map(f_t, f_sd, [4, 4], border=1)
    torch.testing.assert_close(out[:, :, 1:3, 1:3], raw)
    torch.testing.assert_close(out[:, :, 0, 1:3], raw[:, :, 0])
    torch.testing.assert_close(out[:, :, 0, 0], raw[:, :, 0, 0])


def test_image_score_max_and_top_k():
    maps = torch.tensor([[[[1.0, 5.0], [3.0, 2.0]]], [[[0.0, 0.5], [4.0, 4.0]]]])
    torch.testing.assert_close(image_score(maps), torch.tensor([5.0, 4.0]))
    torch.testing.assert_close(image_score(maps, top_k=2), torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(image_score(maps, top_k=3), torch.tensor([10.0 / 3, 8.5 / 3]))


def test_quantile_matches_torch_quantile():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 17, 19)
    for q in (0.0, 0.1, 0.9, 0.995, 1.0):
        torch.testing.assert_close(quantile(x, q), torch.quantile(x, q))


def test_map_quantiles_and_normalisation():
    maps = torch.arange(1001, dtype=torch.float32).view(1, 1, 7, 143)
    q = map_quantiles(maps)
    torch.testing.assert_close(q, torch.tensor([900.0, 995.0]))
    torch.testing.assert_close(normalize_map(torch.tensor([900.0, 995.0, 1090.0]), q), torch.tensor([0.0, 0.1, 0.2]))
    with pytest.raises(ValueError, match="low < high"):
        map_quantiles(maps, low=0.99, high=0.9)
