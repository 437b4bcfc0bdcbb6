"""Baselines: EfficientAD-S, PatchCore and RD4AD at 64x64 (shapes, training, frozen parts, coreset, scoring)."""

import copy

import pytest
import torch
from conftest import LITE
from ignite.engine import Events

from hdhkd_monai.anomaly_map import normalize_map, quantile
from hdhkd_monai.baselines.efficientad import AutoEncoder, EfficientAD
from hdhkd_monai.baselines.patchcore import PatchCore, k_center_greedy
from hdhkd_monai.baselines.rd4ad import RD4AD, OneClassBottleneck, ReverseDecoder
from hdhkd_monai.distill import teacher_output_stats
from hdhkd_monai.engines import AnomalyEvaluator
from hdhkd_monai.handlers import CalibrationHandler
from hdhkd_monai.networks import PretrainedTeacher
from hdhkd_monai.networks.nets.pdn import PDN

SIZE = 64


def _striped_images(n: int, seed: int) -> torch.Tensor:
    """OCT-like normal images: horizontal bands plus mild noise, [n, 3, SIZE, SIZE] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 6 * torch.pi, SIZE)
    bands = 0.5 + 0.3 * torch.sin(rows)[:, None].expand(SIZE, SIZE)
    phase = torch.rand(n, 1, 1, 1, generator=g) * 0.1
    noise = 0.03 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return (bands + phase + noise).clamp(0, 1).expand(n, 3, SIZE, SIZE).contiguous()


def _plant(images: torch.Tensor, top: int = 24, left: int = 24, side: int = 16) -> torch.Tensor:
    """Copy of ``images`` with a checkerboard square (nothing like the bands) at rows/cols [top, top+side)."""
    out = images.clone()
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    out[..., top : top + side, left : left + side] = ((yy // 2 + xx // 2) % 2).float()
    return out


# ---------------------------------------------------------------------------------------------------- EfficientAD


def _efficientad(seed: int = 0, **kwargs) -> EfficientAD:
    """EfficientAD-S on a random PDN teacher whose output statistics are set on the normal images, as in training."""
    torch.manual_seed(seed)
    teacher = PDN(size="small", out_channels=384, padding=False)
    mean, std = teacher_output_stats(teacher, [_striped_images(4, seed=10)])
    teacher.feat_mean.copy_(mean)
    teacher.feat_std.copy_(std)
    return EfficientAD(teacher, image_size=SIZE, **kwargs)


def test_efficientad_shapes():
    model = _efficientad().eval()
    x = _striped_images(2, seed=0)
    grid = model.teacher.output_size((SIZE, SIZE))
    assert model.student(x).shape == (2, 768, *grid)
    assert [f.shape for f in model.features(x)] == [(2, 384, *grid)] * 4
    assert model.anomaly_map(x).shape == (2, 1, SIZE, SIZE)


def test_efficientad_warns_about_an_unnormalised_teacher_when_training_is_set_up():
    model = EfficientAD(PDN(), image_size=SIZE)  # as inference builds it: the statistics load with the checkpoint
    with pytest.warns(UserWarning, match="statistics are unset"):
        model.configure_optimizer()


def test_efficientad_autoencoder_follows_the_paper_at_256():
    autoencoder = AutoEncoder(256, 384)
    assert [s[0] for s in autoencoder.decoder_sizes] == [3, 8, 15, 32, 63, 127]
    assert autoencoder.encoder(torch.rand(1, 3, 256, 256)).shape == (1, 64, 1, 1)
    assert autoencoder(torch.rand(1, 3, 256, 256), (56, 56)).shape == (1, 384, 56, 56)
    with pytest.raises(ValueError, match="built for"):
        autoencoder(torch.rand(1, 3, SIZE, SIZE), (8, 8))


def test_efficientad_teacher_is_frozen():
    model = _efficientad().train()
    assert not model.teacher.training and model.student.training and model.autoencoder.training
    model.loss(_striped_images(2, seed=1)).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.parameters())
    assert all(p.grad is not None for p in model.autoencoder.parameters())


def test_efficientad_training_lowers_loss():
    model = _efficientad(augment=False)
    x = _striped_images(2, seed=2)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        before = model.eval().loss(x).item()  # eval: no dropout, so before/after compare the same function
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    with torch.no_grad():
        after = model.eval().loss(x).item()
    assert after < 0.9 * before, (before, after)


def test_efficientad_penalty_adds_student_output_energy():
    model = _efficientad(penalty_weight=1000.0).eval()  # a large weight keeps the term well above float rounding
    x, penalty = _striped_images(2, seed=3), torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = 1000.0 * model.student(penalty)[:, :384].square().mean()
        assert torch.allclose(model.loss(x, penalty_images=penalty) - model.loss(x), expected, rtol=1e-3)


def test_efficientad_map_normalisation_sends_quantiles_to_0_and_0p1():
    model = _efficientad()
    validation = _striped_images(4, seed=4)
    assert not model.calibrated
    model.fit_map_normalisation([validation[:2], validation[2:]])
    assert model.calibrated and model.training  # the mode is restored
    local, global_ = model.eval().local_global_maps(validation)  # eval: no dropout, as during the fit
    for maps, quantiles in ((local, model.quantiles_st), (global_, model.quantiles_ae)):
        normalised = normalize_map(maps, quantiles)
        assert abs(quantile(normalised, 0.9)) < 1e-5 and abs(quantile(normalised, 0.995) - 0.1) < 1e-5
    with pytest.raises(ValueError, match="no images"):
        model.fit_map_normalisation([])


def test_efficientad_fits_its_normalisation_on_the_normal_validation_images_only():
    validation, abnormal = _striped_images(4, seed=4), torch.rand(2, 3, SIZE, SIZE)
    reference, model = _efficientad(), _efficientad()
    reference.fit_map_normalisation([validation])
    model.fit_on_validation([{"image": torch.cat([validation[:2], abnormal]), "label": torch.tensor([0, 0, 1, 1])},
                             {"image": validation[2:], "label": torch.tensor([0, 0])}])  # fmt: skip
    for name in ("quantiles_st", "quantiles_ae"):
        torch.testing.assert_close(getattr(model, name), getattr(reference, name))


# ---------------------------------------------------------------------------------------------------------- RD4AD


@pytest.fixture(scope="module")
def rd4ad():
    torch.manual_seed(0)
    return RD4AD(**LITE)


def test_rd4ad_shapes_follow_encoder_channels(rd4ad):
    x = _striped_images(2, seed=0)
    encoded, decoded = rd4ad.features(x)
    assert [e.shape for e in encoded] == [d.shape for d in decoded]
    assert [e.shape[1] for e in encoded] == rd4ad.encoder.feature_info.channels()
    assert [e.shape[-1] for e in encoded] == [SIZE // 4, SIZE // 8, SIZE // 16]
    assert rd4ad.anomaly_map(x).shape == (2, 1, SIZE, SIZE)
    scores, maps = rd4ad.predict(x)
    assert scores.shape == (2,) and torch.equal(scores, maps.flatten(1).amax(1))


def test_rd4ad_wide_resnet_plan_matches_the_paper():
    """WideResNet-50-2 channels: a 2048-channel stride-32 embedding, decoded back to 256/512/1024 (shapes only)."""
    with torch.device("meta"):
        channels = (256, 512, 1024)
        bottleneck, decoder = OneClassBottleneck(channels), ReverseDecoder(channels)
        features = [torch.empty(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(channels)]
        embedding = bottleneck(features)
        decoded = decoder(embedding)
    assert embedding.shape == (1, 2048, 8, 8)
    assert [d.shape for d in decoded] == [f.shape for f in features]
    assert [len(stage) for stage in decoder.stages] == [3, 4, 6]


def test_rd4ad_frozen_encoder_gets_no_gradient(rd4ad):
    rd4ad.train()
    assert not rd4ad.encoder.training and rd4ad.decoder.training
    rd4ad.zero_grad(set_to_none=True)
    rd4ad.loss(_striped_images(2, seed=1)).backward()
    assert all(p.grad is None and not p.requires_grad for p in rd4ad.encoder.parameters())
    assert all(p.grad is not None for p in rd4ad.bottleneck.parameters())
    assert all(p.grad is not None for p in rd4ad.decoder.parameters())


def test_rd4ad_training_lowers_loss():
    torch.manual_seed(0)
    model = RD4AD(**LITE).train()
    x = _striped_images(4, seed=2)
    optimizer = model.configure_optimizer()
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model.loss(x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("name", ["efficientad", "rd4ad"])
def test_configure_optimizer_holds_exactly_the_trainable_parameters_with_the_papers_lr(name, rd4ad):
    model, lr = (_efficientad(), 1e-4) if name == "efficientad" else (rd4ad, 5e-3)
    (group,) = model.configure_optimizer().param_groups
    assert group["lr"] == lr
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    assert any(not p.requires_grad for p in model.parameters())  # the frozen teacher / encoder stays out


def test_rd4ad_rejects_sizes_off_its_stride(rd4ad):
    with pytest.raises(ValueError, match="multiple of 32"):
        rd4ad(torch.rand(1, 3, 48, 48))


# ------------------------------------------------------------------------------------------------------ PatchCore


def _k_center_reference(points: torch.Tensor, n: int, start: int) -> list[int]:
    """Textbook greedy k-center: each step takes the point whose nearest selected point is farthest."""
    selected = [start]
    while len(selected) < n:
        best, best_dist = None, -1.0
        for i in range(len(points)):
            nearest = min(float(torch.dist(points[i], points[j])) for j in selected)
            if nearest > best_dist:
                best, best_dist = i, nearest
        selected.append(best)
    return selected


def test_k_center_greedy_matches_brute_force():
    points = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    assert k_center_greedy(points, 12, start=7).tolist() == _k_center_reference(points, 12, start=7)


@pytest.fixture(scope="module")
def normal_images():
    return _striped_images(6, seed=3)


@pytest.fixture(scope="module")
def patchcore(normal_images):
    return PatchCore(PretrainedTeacher(**LITE), coreset_ratio=0.25).fit([normal_images[:3], normal_images[3:]])


def test_patchcore_coreset_keeps_requested_subset(patchcore, normal_images):
    every_patch = patchcore.teacher(normal_images).permute(0, 2, 3, 1).reshape(-1, patchcore.memory_bank.shape[1])
    assert len(patchcore.memory_bank) == round(0.25 * len(every_patch)) == round(0.25 * 6 * (SIZE // 8) ** 2)
    # Every bank entry is one of the training patches, and no patch is taken twice.
    matches = torch.cdist(patchcore.memory_bank, every_patch).argmin(dim=1)
    assert torch.allclose(every_patch[matches], patchcore.memory_bank)
    assert len(set(matches.tolist())) == len(matches)


def test_patchcore_coreset_is_the_exact_k_center_of_the_patch_features(patchcore):
    # Issue 21: the default selects on the features themselves; a 128-d projection cost up to 5.0 AUROC points on brainmri.
    model = copy.deepcopy(patchcore)
    patches = torch.randn(80, patchcore.memory_bank.shape[1], generator=torch.Generator().manual_seed(1))
    start = int(torch.randint(80, (1,), generator=torch.Generator().manual_seed(model.seed)))
    assert model.projection_dim is None
    n = round(model.coreset_ratio * len(patches))
    assert torch.equal(model.fit_bank(patches).memory_bank, patches[_k_center_reference(patches, n, start)])


def test_patchcore_chunked_nearest_matches_full_distance_matrix(patchcore):
    queries = torch.randn(50, patchcore.memory_bank.shape[1])
    full = torch.cdist(queries, patchcore.memory_bank).min(dim=1)
    patchcore.chunk_elements = 3 * len(patchcore.memory_bank)  # 3 queries per chunk
    try:
        dist, index = patchcore.nearest(queries)
    finally:
        patchcore.chunk_elements = 2**24
    assert torch.allclose(dist, full.values, atol=1e-4) and torch.equal(index, full.indices)


def test_patchcore_planted_patch_scores_higher(patchcore):
    normal = _striped_images(2, seed=4)
    abnormal = _plant(normal)
    scores = patchcore.patch_scores(abnormal)[:, 0]  # [B, 8, 8], stride 8: the square covers cells 3..4
    inside = scores[:, 3:5, 3:5].flatten(1).amin(1)
    outside = torch.cat([scores[:, :2].flatten(1), scores[:, 6:].flatten(1)], 1).amax(1)
    assert (inside > outside).all()
    normal_scores, normal_maps = patchcore.predict(normal)
    abnormal_scores, abnormal_maps = patchcore.predict(abnormal)
    assert normal_maps.shape == abnormal_maps.shape == (2, 1, SIZE, SIZE)
    assert (abnormal_scores > normal_scores.max()).all()


def test_patchcore_reweighting_scales_the_image_score(patchcore):
    x = _plant(_striped_images(2, seed=5))
    plain, _ = patchcore.predict(x)
    patchcore.reweight = True
    try:
        reweighted, _ = patchcore.predict(x)
    finally:
        patchcore.reweight = False
    assert (reweighted > 0).all() and (reweighted < plain).all()


def test_patchcore_memory_bank_travels_with_state_dict(patchcore):
    fresh = PatchCore(PretrainedTeacher(**LITE))
    fresh.load_state_dict(patchcore.state_dict())
    x = _striped_images(1, seed=6)
    assert torch.equal(fresh.memory_bank, patchcore.memory_bank)
    assert torch.allclose(fresh.anomaly_map(x), patchcore.anomaly_map(x))


def test_patchcore_training_mode_leaves_its_teacher_in_eval_mode(patchcore):
    patchcore.train()
    try:
        assert patchcore.training and not any(m.training for m in patchcore.teacher.modules())
    finally:
        patchcore.eval()


def test_patchcore_errors_are_clear_and_an_unfitted_model_scores_0():
    model = PatchCore(PretrainedTeacher(**LITE), reweight=True)
    with pytest.warns(UserWarning, match="call fit"):  # unfitted, as MONAI's network checks build it: maps of 0
        prediction = model.eval()(torch.rand(2, 3, SIZE, SIZE))
    assert prediction.anomaly_map.shape == (2, 1, SIZE, SIZE) and not prediction.anomaly_map.any()
    assert not prediction.pred_score.any()
    with pytest.raises(ValueError, match="no images"):
        model.fit([])
    with pytest.raises(ValueError, match=r"\[B>=1, 3, H, W\]"):
        model.fit([torch.rand(2, 1, SIZE, SIZE)])
    assert not any(p.requires_grad for p in model.parameters())


def test_the_workflow_evaluator_calibrates_and_scores_a_baseline_as_it_does_hdhkd(patchcore, normal_images):
    """A baseline's ``model(x)`` is an AnomalyPrediction, so HDHKD's evaluator and calibration run it unchanged."""
    abnormal = _plant(_striped_images(2, seed=7))
    batches = [{"image": normal_images[:3], "label": torch.zeros(3)}, {"image": abnormal, "label": torch.ones(2)}]
    calibration = CalibrationHandler(patchcore, low=None, high=None, threshold_quantile=0.5)
    evaluator = AnomalyEvaluator(device=torch.device("cpu"), val_data_loader=batches, network=patchcore,
                                 val_handlers=[calibration])  # fmt: skip
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: outputs.extend(engine.state.output))
    evaluator.run()
    expected = [patchcore.predict(batch["image"]) for batch in batches]
    scores = torch.tensor([float(o["score"]) for o in outputs])
    torch.testing.assert_close(scores, torch.cat([p.pred_score for p in expected]))
    torch.testing.assert_close(torch.stack([o["pred"] for o in outputs]), torch.cat([p.anomaly_map for p in expected]))
    # the threshold is in the baseline's own score units: the median of the normal scores (no map normalisation)
    torch.testing.assert_close(patchcore.threshold, expected[0].pred_score.median(), rtol=0, atol=0)
