"""HDHKD's patch memory: the distance it scores, the bank it keeps, its place in the map, its exports and checkpoints."""

import numpy as np
import pytest
import torch
from conftest import LITE

from hdhkd_monai.anomaly_map import cosine_discrepancy, discrepancy_map, map_quantiles, upsample_map
from hdhkd_monai.data.phantom import make_bscan
from hdhkd_monai.distill import fit_teacher_stats
from hdhkd_monai.errors import SettingsMismatchError
from hdhkd_monai.networks import HDHKD, AnomalyMapNet, PretrainedTeacher
from hdhkd_monai.networks.blocks import PatchMemory, k_center_greedy
from hdhkd_monai.state_dict import check_settings, load_weights, stored_flat_settings

SMALL = dict(backbone=LITE["backbone"], backbone_weights=LITE["weights"], num_modules=1, fusion_channels=32,
             encoder_channels=64, decoder_channels=32, d_state=4, score_top_k=20)  # fmt: skip


def _scans(kinds, size=64, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    scans = [make_bscan(size, anomaly=kind, rng=rng)[0] for kind in kinds]
    return (torch.from_numpy(np.stack(scans)).float() / 255)[:, None].expand(-1, 3, -1, -1).contiguous()


def _plant_checkerboard(images: torch.Tensor) -> torch.Tensor:
    """``images`` with a checkerboard disc (radius 7 px) that no normal scan has."""
    size = images.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= 49
    out = images.clone()
    out[:, :, disc] = ((yy // 2 + xx // 2) % 2).float()[disc]
    return out


def _brute_force(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The slow reference: every cell's squared distance to every bank row, the smallest, over the channels."""
    b, c, h, w = features.shape
    out = torch.empty(b, 1, h, w, dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                diff = features[i, :, y, x].double()[None] - bank.double()
                out[i, 0, y, x] = diff.square().sum(1).min() / c
    return out


def test_memory_scores_the_squared_distance_to_the_nearest_bank_row_per_channel():
    torch.manual_seed(0)
    memory = PatchMemory(8, coreset_ratio=1.0).fit(torch.randn(50, 8), progress=False)
    features = torch.randn(2, 8, 3, 4)
    expected = _brute_force(features, memory.bank)
    torch.testing.assert_close(memory(features).double(), expected, rtol=1e-5, atol=1e-5)
    memory.chunk_elements = 50  # one query per block: the blocks must not change the result
    torch.testing.assert_close(memory(features).double(), expected, rtol=1e-5, atol=1e-5)
    assert memory(memory.bank[:6].T.reshape(1, 8, 2, 3)).abs().max() < 1e-5  # a remembered patch is at distance 0


@pytest.mark.parametrize("ratio, cap, expected", [(0.1, None, 100), (0.1, 40, 40), (1.0, None, 1000), (0.0004, None, 1)])
def test_memory_keeps_the_greedy_coreset_of_the_ratio_bounded_by_max_patches(ratio, cap, expected):
    patches = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    memory = PatchMemory(4, coreset_ratio=ratio, max_patches=cap, seed=3).fit(patches, progress=False)
    assert memory.bank.shape == (expected, 4)
    if expected < len(patches):
        start = int(torch.randint(1000, (1,), generator=torch.Generator().manual_seed(3)))
        torch.testing.assert_close(memory.bank, patches[k_center_greedy(patches, expected, start=start)])


def test_memory_refuses_wrong_features_and_adds_nothing_before_fit():
    memory = PatchMemory(4)
    assert torch.equal(memory(torch.ones(1, 4, 2, 3)), torch.zeros(1, 1, 2, 3))  # MONAI's checks run untrained nets
    with pytest.raises(ValueError, match=r"\[N>=1, 4\]"):
        memory.fit(torch.zeros(10, 5))
    with pytest.raises(ValueError, match="max_patches"):
        PatchMemory(4, max_patches=0)


@pytest.fixture(scope="module")
def fitted():
    """An untrained small HDHKD with its memory fitted on eight normal phantom B-scans, and six other scans: four
    normal, then two with a planted checkerboard disc."""
    torch.manual_seed(0)
    images = _scans([None] * 6)
    images[4:] = _plant_checkerboard(images[4:])
    normals = _scans([None] * 8, seed=1)
    teacher = fit_teacher_stats(PretrainedTeacher(**LITE), [normals])
    model = HDHKD(teacher, memory=PatchMemory(teacher.out_channels, coreset_ratio=0.5), **SMALL).eval()
    f_t = model.teacher_features(normals)
    model.memory.fit(f_t.permute(0, 2, 3, 1).flatten(0, 2), progress=False)
    return model, images


def test_hdhkd_map_adds_the_memory_distance_of_the_teacher_features_to_the_discrepancy(fitted):
    model, images = fitted
    with torch.no_grad():
        f_t, f_sd = model.features(images)
        expected = discrepancy_map(f_t, f_sd, images.shape[-2:]) + torch.nn.functional.interpolate(
            model.memory(f_t), size=images.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(model.anomaly_map(images), expected, rtol=1e-5, atol=1e-6)


def test_the_memory_part_of_the_map_ranks_planted_anomalies_above_normal_scans(fitted):
    model, images = fitted
    with torch.no_grad():
        memory_part = model.memory(model.teacher_features(images)).flatten(1).amax(1)
    assert memory_part[4:].min() > memory_part[:4].max()


@pytest.mark.parametrize("export", ["script", "trace"])
def test_a_model_with_memory_exports_and_gives_the_eager_maps_at_another_size(fitted, export):
    model, images = fitted
    net = AnomalyMapNet(model).eval()
    with torch.no_grad():
        exported = torch.jit.script(net) if export == "script" else torch.jit.trace(net, images[:2])
        other = torch.nn.functional.interpolate(images[:3], size=(96, 80), mode="bilinear")
        torch.testing.assert_close(exported(other), net(other), rtol=1e-5, atol=1e-6)


def _cosine_with_memory(fitted) -> HDHKD:
    """``fitted``'s model with the cosine discrepancy: the same teacher, student weights and memory."""
    model, _ = fitted
    cosine = HDHKD(model.teacher, memory=model.memory, discrepancy="cosine", **SMALL).eval()
    cosine.student.load_state_dict(model.student.state_dict())
    return cosine


def test_with_the_cosine_the_memory_is_weighed_so_both_terms_spread_alike_on_the_normal_images(fitted):
    model, images = fitted
    cosine = _cosine_with_memory(fitted)
    squared_weight = float(model.memory_weight)
    batches = [{"image": images[:3], "label": torch.tensor([0, 0, 0])},
               {"image": images[3:], "label": torch.tensor([0, 1, 1])}]  # fmt: skip
    model.fit_on_validation(batches)
    cosine.fit_on_validation(batches)
    assert float(model.memory_weight) == squared_weight == 1.0  # the squared discrepancy shares the memory's units
    with torch.no_grad():  # the slow way, on the four normal images only
        f_t, f_sd = cosine.features(images[:4])
        spreads = [float(q[1] - q[0]) for q in (map_quantiles(upsample_map(m, [64, 64], cosine.border))
                                                for m in (cosine_discrepancy(f_t, f_sd), cosine.memory(f_t)))]
        torch.testing.assert_close(float(cosine.memory_weight), spreads[0] / spreads[1], rtol=1e-5, atol=0)
        expected = upsample_map(cosine_discrepancy(f_t, f_sd) + cosine.memory_weight * cosine.memory(f_t), [64, 64],
                                cosine.border)
        torch.testing.assert_close(cosine.anomaly_map(images[:4]), expected, rtol=1e-5, atol=1e-6)
        scripted = torch.jit.script(AnomalyMapNet(cosine))
        torch.testing.assert_close(scripted(images), AnomalyMapNet(cosine)(images), rtol=1e-5, atol=1e-6)
    assert cosine.memory_weight != 1.0 and cosine.training is False
    with pytest.raises(ValueError, match="no normal"):
        cosine.fit_on_validation([{"image": images[4:], "label": torch.tensor([1, 1])}])


def test_a_checkpoint_keeps_the_memory_weight_and_one_made_before_it_loads_at_weight_one(fitted):
    cosine = _cosine_with_memory(fitted)
    cosine.memory_weight.fill_(0.25)
    state = AnomalyMapNet(cosine).state_dict()
    loaded = _cosine_with_memory(fitted)
    AnomalyMapNet(loaded).load_state_dict(state)
    assert float(loaded.memory_weight) == 0.25
    del state["model.memory_weight"]  # a checkpoint of bundle 0.6.0, through the package's loader and torch's
    loaders = (lambda: load_weights(AnomalyMapNet(loaded), state, "old.pt"),
               lambda: AnomalyMapNet(loaded).load_state_dict(state))  # fmt: skip
    for load in loaders:
        loaded.memory_weight.fill_(0.5)
        load()
        assert float(loaded.memory_weight) == 1.0


def test_a_checkpoint_loads_its_bank_and_a_memory_setting_mismatch_is_named(fitted):
    model, images = fitted
    state = AnomalyMapNet(model).state_dict()
    torch.manual_seed(1)
    same = HDHKD(PretrainedTeacher(**LITE), memory=PatchMemory(model.teacher.out_channels, coreset_ratio=0.5), **SMALL)
    AnomalyMapNet(same).load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(images).anomaly_map, model(images).anomaly_map)
    without = HDHKD(PretrainedTeacher(**LITE), **SMALL)
    with pytest.raises(SettingsMismatchError, match="memory"):
        AnomalyMapNet(without).load_state_dict(state)


def test_a_model_stored_before_the_memory_and_normalisation_settings_loads_as_made():
    """Checkpoints of bundle 0.4 have none of the later settings: they were made without memory, with the backbone's
    own input normalisation and the squared discrepancy, and load so; asking them for a memory or the cosine is a
    named mismatch."""
    stored = {"score_top_k": 20, "teacher": {"type": "PretrainedTeacher", "backbone": "b", "weights": None}}
    now = {**stored, "memory": None, "discrepancy": "squared", "teacher": {**stored["teacher"], "normalization": "backbone"}}
    with pytest.raises(SettingsMismatchError, match="discrepancy: made with 'squared', now 'cosine'"):
        check_settings(stored_flat_settings(stored, HDHKD.later_settings), {**now, "discrepancy": "cosine"})
    check_settings(stored_flat_settings(stored, HDHKD.later_settings), now)
    with pytest.raises(SettingsMismatchError, match="memory"):
        check_settings(stored_flat_settings(stored, HDHKD.later_settings), {**now, "memory": {"coreset_ratio": 0.1, "max_patches": 4096}})
    with pytest.raises(SettingsMismatchError, match="normalization"):
        check_settings(stored_flat_settings(stored, HDHKD.later_settings), {**now, "teacher": {**now["teacher"], "normalization": "imagenet"}})
    baseline = {"image_size": 64, "teacher": {"type": "PDN"}}  # another detector's settings gain nothing
    assert stored_flat_settings(baseline, {}) == {"image_size": 64, "teacher.type": "PDN"}
