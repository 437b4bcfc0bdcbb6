"""ONNX export: the selective scan's export form against the eager scan, and SS2D exported with a dynamic batch axis
and run by onnxruntime against eager. (The whole inference network through ``python -m monai.bundle onnx_export``
is in test_bundle_checks.py.)"""

import numpy as np
import pytest
import torch

from hdhkd_monai.networks.layers import selective_scan as scan_module
from hdhkd_monai.networks.layers.selective_scan import selective_scan
from hdhkd_monai.networks.blocks.ss2d import SS2D
from test_selective_scan import CHUNK, assert_close_f32, make_inputs

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the onnx extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests need the onnx extra: pip install -e '.[onnx]'")

#: ONNX ops that in-place writes into slices (``index_put``, ``copy_`` into a view) export to.
SCATTER_OPS = {"ScatterND", "ScatterElements", "Scatter"}


@pytest.mark.parametrize(
    "L, groups, large_delta, extras",
    [(1, None, False, True), (3 * CHUNK + 5, None, False, True), (2 * CHUNK + 3, 2, False, False),
     (4 * CHUNK + 3, None, True, True)],
    ids=["one-step", "chunks-D-z-bias", "groups", "large-delta"],
)
def test_export_form_equals_the_eager_scan(monkeypatch, L, groups, large_delta, extras):
    """During ONNX export selective_scan runs its functional form; it equals the forward-only chunked scan the
    eager model runs and the sequential reference, including where exp(cumsum) would overflow."""
    u, delta, A, B, C, D, z, delta_bias = (t.detach() for t in make_inputs(L=L, groups=groups, large_delta=large_delta))
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=True) if extras else {}
    eager = selective_scan(u, delta, A, B, C, return_last_state=True, chunk_size=CHUNK, **kwargs)
    reference = selective_scan(u, delta, A, B, C, return_last_state=True, backend="reference", **kwargs)
    calls, export_scan = [], scan_module._export_scan
    monkeypatch.setattr(scan_module, "_export_scan", lambda *a: calls.append(a) or export_scan(*a))
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    exported = selective_scan(u, delta, A, B, C, return_last_state=True, chunk_size=CHUNK, **kwargs)
    assert calls, "the export form did not run"
    for got, eager_t, ref_t in zip(exported, eager, reference):
        assert torch.isfinite(got).all()
        assert_close_f32(got, eager_t)
        assert_close_f32(got, ref_t)


def _export(module, example, path, **kwargs):
    torch.onnx.export(
        module, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": [0], "y": [0]}, **kwargs,
    )  # fmt: skip
    return onnx.load(str(path))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_ss2d_exports_without_scatter_and_runs_at_any_batch_size(monkeypatch, tmp_path):
    """SS2D over an 8x8 map (L = 64, four chunks of 16 in the export form) exported at batch 2: no scatter op in the
    graph, and onnxruntime gives eager's output at batch 1 and 3 (the batch axis is really dynamic)."""
    monkeypatch.setattr(scan_module, "EXPORT_CHUNK", 16)
    torch.manual_seed(0)
    module = SS2D(d_model=8, d_state=4, scan_backend="torch").eval()
    model = _export(module, torch.randn(2, 8, 8, 8), tmp_path / "ss2d.onnx")
    assert not {n.op_type for n in model.graph.node} & SCATTER_OPS
    session = ort.InferenceSession(str(tmp_path / "ss2d.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 8, 8, 8)
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
