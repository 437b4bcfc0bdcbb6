"""HDHKD networks: grids and shapes, frozen teacher, gradients, SS2D scan order, ablation configs, export.

Shapes are checked at 64x64 for every backbone and at 256x256 for the default backbone only (to keep CI short).
"""

import os

import pytest
import timm
import torch

from hdhkd_monai.anomaly_map import (
    cosine_discrepancy,
    discrepancy_map,
    normalize_map,
    squared_discrepancy,
    upsample_map,
)
from hdhkd_monai.networks import (
    HDHKD,
    PDN,
    SS2D,
    STUDENT_BACKBONES,
    AnomalyMapNet,
    ConcatFusion,
    MultiFeatureModel,
    StudentEncoder,
)
from hdhkd_monai.networks.blocks import PatchMemory
from hdhkd_monai.networks.blocks.mixers import AttentionMixer, ConvMixer, DenseMixer, DepthwiseConvMixer

# A narrow student for tests where the architecture, not its width, is under test.
SMALL = dict(num_modules=1, fusion_channels=32, encoder_channels=64, decoder_channels=32, d_state=4)


def _model(padding=False, out_channels=384, **kwargs):
    torch.manual_seed(0)
    return HDHKD(PDN(padding=padding, out_channels=out_channels), **kwargs)


# --- teacher -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["small", "medium"])
@pytest.mark.parametrize("padding, grid_256", [(False, 56), (True, 64)])
def test_pdn_grid(size, padding, grid_256):
    pdn = PDN(size, padding=padding)
    assert pdn.output_size((256, 256)) == (grid_256, grid_256)
    out = pdn(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 384, *pdn.output_size((64, 96)))
    assert pdn.feat_mean.shape == pdn.feat_std.shape == (1, 384, 1, 1)


@pytest.mark.parametrize("padding", [False, True])
def test_pdn_receptive_field_is_33_and_lines_up_with_border(padding):
    """Cell t sees input pixels 4 * (t + border) - 16 ... + 16: 33 wide, centred where the anomaly map puts it."""
    torch.manual_seed(0)
    pdn = PDN(padding=padding, out_channels=8)
    x = torch.rand(4, 3, 64, 64, requires_grad=True)
    out = pdn(x)
    t = 3
    out[:, :, t, t].sum().backward()
    support = x.grad.abs().sum((0, 1)) > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    centre = 4 * (t + pdn.border)
    assert rows.tolist() == cols.tolist() == list(range(max(centre - 16, 0), centre + 17))


# --- student and the whole model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", STUDENT_BACKBONES)
def test_shapes_every_backbone_at_64(backbone):
    model = _model(backbone=backbone).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model.student.encoder(x).shape == (2, 512, 4, 4)
        f_t, f_sd = model.features(x)
        assert f_t.shape == f_sd.shape == (2, 384, 8, 8)
        assert model.anomaly_map(x).shape == (2, 1, 64, 64)


def test_shapes_default_backbone_at_256():
    for padding, grid in ((False, 56), (True, 64)):
        model = _model(padding=padding).eval()
        with torch.no_grad():
            f_t, f_sd = model.features(torch.rand(1, 3, 256, 256))
        assert f_t.shape == f_sd.shape == (1, 384, grid, grid)


def test_input_size_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        _model(**SMALL)(torch.rand(1, 3, 72, 64))


def test_gradients_reach_every_student_parameter_and_never_the_teacher():
    model = _model().train()
    assert not model.teacher.training and model.student.training
    for m in model.student.modules():  # timm zero-initialises each residual block's last BN scale, which would
        if isinstance(m, torch.nn.BatchNorm2d):  # block the gradient of that block's convs in the first step only
            torch.nn.init.ones_(m.weight)
    f_t, f_sd = model(torch.rand(2, 3, 64, 64))
    assert not f_t.requires_grad
    (f_t - f_sd).pow(2).mean().backward()
    for name, p in model.student.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches student.{name}"
    for name, p in model.teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    model.train()
    assert not model.teacher.training


def test_vmamba_dt_and_a_init_survive_model_construction():
    model = _model()
    ss2ds = [m for m in model.modules() if isinstance(m, SS2D)]
    assert len(ss2ds) == 4
    for ss2d in ss2ds:
        dt = torch.nn.functional.softplus(ss2d.dt_proj_bias)
        assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
        # log-uniform over two decades: about half of the values below the geometric mean 1e-2
        assert 0.35 < (dt < 1e-2).float().mean() < 0.65
        expected = torch.log(torch.arange(1, ss2d.d_state + 1, dtype=torch.float32)).expand_as(ss2d.A_log)
        torch.testing.assert_close(ss2d.A_log.detach(), expected)


def test_default_scan_width_is_192_channels_per_direction():
    ss2d = next(m for m in _model().modules() if isinstance(m, SS2D))
    assert (ss2d.directions, ss2d.d_inner, ss2d.d_state) == (4, 192, 16)


def test_backbone_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("resnet18", pretrained=False)  # a whole classifier: layer4 and fc are left out
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    encoder = StudentEncoder("resnet18", weights=path)
    torch.testing.assert_close(encoder.backbone.state_dict()["layer3.1.conv2.weight"], full.layer3[1].conv2.weight)

    other = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match="resnet50.pth.*shape mismatch"):
        StudentEncoder("resnet18", weights=other)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        StudentEncoder("resnet18", weights=corrupt)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        StudentEncoder("resnet18", weights=tmp_path / "missing.pth")


# --- SS2D scan order -----------------------------------------------------------------------------------------------


def _perturbation_effect(ss2d, h, w, position):
    """Which output positions (row-major) change when the input token at ``position`` changes."""
    torch.manual_seed(0)
    x = torch.randn(1, h, w, 8)
    x2 = x.clone()
    x2.view(1, h * w, 8)[0, position] += 1.0
    with torch.no_grad():
        diff = (ss2d(x2) - ss2d(x)).abs().amax(-1).flatten()
    return diff > 1e-6


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_one_direction_is_causal_in_row_major_order(backend):
    torch.manual_seed(0)
    h, w, p = 5, 6, 17
    # Without the depthwise conv's spatial footprint the scan alone decides: nothing before p moves.
    changed = _perturbation_effect(SS2D(8, d_state=4, d_conv=1, directions=1, scan_backend=backend), h, w, p)
    assert not changed[:p].any()
    assert changed[p:].all()
    # With the 3x3 depthwise conv, p reaches back one row and one column at most.
    changed = _perturbation_effect(SS2D(8, d_state=4, directions=1, scan_backend=backend), h, w, p)
    assert not changed[: p - w - 1].any()
    assert changed[p:].all()


def test_four_directions_make_every_output_depend_on_every_input():
    torch.manual_seed(0)
    h, w = 4, 5
    ss2d = SS2D(8, d_state=4)
    x = torch.randn(1, h, w, 8, requires_grad=True)
    y = ss2d(x).reshape(h * w, 8)
    for q in range(h * w):
        (grad,) = torch.autograd.grad(y[q].sum(), x, retain_graph=True)
        assert (grad.abs().sum(-1) > 0).all(), f"output {q} ignores some input positions"


# --- Table V and Table VII configurations --------------------------------------------------------------------------

TABLE_V = [  # conv_upsample, Mamba UpNet, MFM, SS2D
    dict(global_decoder=None, mfm=False),
    dict(ss2d=False, mfm=False),
    dict(mfm=False),
    dict(conv_upsample=False, ss2d=False),
    dict(conv_upsample=False),
    dict(ss2d=False),
    dict(),
]
TABLE_VII = [dict(global_decoder=d) for d in ("fcn", "transformer", "conv", "mamba")]


@pytest.mark.parametrize("config", TABLE_V + TABLE_VII, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_every_table_configuration_trains(config):
    model = _model(image_size=64, **config).train()
    student = model.student
    assert (student.local_branch is not None) == config.get("conv_upsample", True)
    assert (student.global_branch is not None) == (config.get("global_decoder", "mamba") is not None)
    branches = int(student.local_branch is not None) + int(student.global_branch is not None)
    if config.get("mfm", True):
        assert isinstance(student.fusion, MultiFeatureModel) and len(student.fusion.branch_convs) == branches
    else:
        assert isinstance(student.fusion, ConcatFusion) if branches == 2 else student.fusion is None
    if student.global_branch is not None:
        mixer = student.global_branch.blocks[0].mixer
        mixers = {"mamba": SS2D if config.get("ss2d", True) else DepthwiseConvMixer, "fcn": DenseMixer,
                  "transformer": AttentionMixer, "conv": ConvMixer}  # fmt: skip
        expected = mixers[config.get("global_decoder", "mamba")]
        assert isinstance(mixer, expected)
    f_t, f_sd = model(torch.rand(2, 3, 64, 64))
    assert f_sd.shape == f_t.shape == (2, 384, 8, 8)
    (f_t - f_sd).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.student.parameters())


def test_fcn_decoder_is_tied_to_its_image_size():
    with pytest.raises(ValueError, match="image_size"):
        _model(global_decoder="fcn", **SMALL)
    model = _model(global_decoder="fcn", image_size=64, **SMALL).eval()
    with pytest.raises(ValueError, match="FCN decoder was built for 256 tokens"):
        model(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(global_decoder="unet"), "global_decoder must be one of"),
        (dict(global_decoder=None, conv_upsample=False), "at least one decoder branch"),
        (dict(global_decoder="transformer", ss2d=False), "ss2d=False"),
    ],
)
def test_invalid_configurations_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        _model(**config)


# --- anomaly map and the inference wrapper -------------------------------------------------------------------------


def test_anomaly_map_is_the_upsampled_discrepancy():
    model = _model(**SMALL).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f_t, f_sd = model.features(x)
        expected = discrepancy_map(f_t, f_sd, [64, 64], border=4)
        torch.testing.assert_close(model.anomaly_map(x), expected)


def test_training_mode_gives_features_and_eval_mode_the_prediction_raw_then_calibrated():
    model = _model(score_top_k=10, **SMALL)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f_t, f_sd = model.train()(x)
        assert f_t.shape == f_sd.shape == (2, 384, 8, 8)
        model.eval()
        raw = model.anomaly_map(x)
        assert torch.isnan(model.map_quantiles).all() and torch.isnan(model.threshold)
        pred = model(x)
        torch.testing.assert_close(pred.anomaly_map, raw)
        torch.testing.assert_close(pred.pred_score, raw.flatten(1).topk(10).values.mean(1))
        model.map_quantiles.copy_(torch.tensor([0.5, 2.0]))
        calibrated = model(x)
        exported = AnomalyMapNet(model)(x)
    assert calibrated.anomaly_map.shape == (2, 1, 64, 64)
    torch.testing.assert_close(calibrated.anomaly_map, normalize_map(raw, model.map_quantiles))
    torch.testing.assert_close(calibrated.pred_score, normalize_map(pred.pred_score, model.map_quantiles))
    torch.testing.assert_close(exported, calibrated.anomaly_map)
    assert "map_quantiles" in model.state_dict() and "threshold" in model.state_dict()


def test_cosine_discrepancy_is_one_minus_the_cosine_of_each_cell_and_blind_to_length():
    gen = torch.Generator().manual_seed(0)
    f_t, f_sd = torch.randn(2, 6, 3, 4, generator=gen), torch.randn(2, 6, 3, 4, generator=gen)
    expected = torch.empty(2, 1, 3, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                a, c = f_t[b, :, i, j].double(), f_sd[b, :, i, j].double()
                expected[b, 0, i, j] = 1 - a.dot(c) / (a.norm() * c.norm())
    torch.testing.assert_close(cosine_discrepancy(f_t, f_sd).double(), expected, rtol=1e-5, atol=1e-6)
    # a student that predicts the teacher's direction at 3x its length: no cosine discrepancy, a squared one
    assert cosine_discrepancy(f_t, 3 * f_t).abs().max() < 1e-6 and squared_discrepancy(f_t, 3 * f_t).min() > 0


def test_hdhkd_with_the_cosine_discrepancy_maps_it_and_exports_it():
    model = _model(**TINY, discrepancy="cosine").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f_t, f_sd = model.features(x)
        expected = upsample_map(cosine_discrepancy(f_t, f_sd), [64, 64], model.border)
        torch.testing.assert_close(model(x).anomaly_map, expected)
        net = AnomalyMapNet(model).eval()
        for exported in (torch.jit.script(net), torch.jit.trace(net, x)):
            torch.testing.assert_close(exported(x), net(x), rtol=1e-4, atol=1e-6)
    assert model.settings["discrepancy"] == "cosine"
    with pytest.raises(ValueError, match="discrepancy 'l1': choose one of squared, cosine"):
        _model(**TINY, discrepancy="l1")


@pytest.mark.parametrize("export", ["script", "trace"])
def test_anomaly_map_net_exports_with_torchscript(export, tmp_path):
    model = _model(**SMALL).eval()
    model.map_quantiles.copy_(torch.tensor([0.1, 0.9]))
    net = AnomalyMapNet(model).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        exported = torch.jit.script(net) if export == "script" else torch.jit.trace(net, x)
        path = tmp_path / "net.ts"
        exported.save(str(path))
        loaded = torch.jit.load(str(path))
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-6)
        x2 = torch.rand(2, 3, 96, 96)  # another batch and size: nothing shape-specific was baked in
        torch.testing.assert_close(loaded(x2), net(x2), rtol=1e-4, atol=1e-6)


# A network tiny enough to run many times in a test; the SS2D of its global branch scans 16 tokens at 64 px.
TINY = dict(out_channels=8, num_modules=1, fusion_channels=16, encoder_channels=32, decoder_channels=16, d_state=4)
#: With the NaN fill a read of unwritten memory fails on its first run; ten runs per thread count also cover the
#: JIT's re-optimisation after its first profiled calls (200 took 30 s of the suite).
RUNS = 10
THREADS = sorted({2, os.cpu_count() or 1})  # two threads, and one per logical core (conftest caps the suite at 2)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning")
def test_torchscript_models_never_give_nan_and_equal_eager(uninitialised_memory_is_nan):
    """The traced and the scripted map network, RUNS runs each at two threads and at the machine's default, on the
    traced input size and on another one: no NaN, and equal to the eager network. Memory from ``torch.empty`` holds
    NaN, so a read of a buffer never written fails every time (a trace that unrolled the scan's loops at the traced
    length left the rest of a longer scan's output unwritten: NaN in 1 of 40 runs, wrong values in the others)."""
    model = _model(**TINY).eval()
    model.map_quantiles.copy_(torch.tensor([0.1, 0.9]))
    net = AnomalyMapNet(model).eval()
    inputs = [torch.rand(1, 3, 64, 64), torch.rand(1, 3, 80, 64)]
    threads_before = torch.get_num_threads()
    with torch.no_grad():
        expected = [net(x) for x in inputs]
        exported = {"trace": torch.jit.trace(net, inputs[0]), "script": torch.jit.script(net)}
        try:
            for threads in THREADS:
                torch.set_num_threads(threads)
                for name, module in exported.items():
                    for run in range(RUNS):
                        out = module(inputs[run % 2])
                        assert not out.isnan().any(), f"{name}: NaN at {threads} threads, run {run}"
                        torch.testing.assert_close(out, expected[run % 2], rtol=1e-4, atol=1e-6)
        finally:
            torch.set_num_threads(threads_before)
