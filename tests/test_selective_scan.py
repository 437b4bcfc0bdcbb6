"""The fast chunked selective scan against the sequential reference, a closed form, and finite differences."""

import sys

import pytest
import torch
from torch import nn

from hdhkd_monai.networks.layers import selective_scan as scan_module
from hdhkd_monai.networks.layers.selective_scan import selective_scan
from hdhkd_monai.networks.blocks.ss2d import SS2D

CHUNK = 8  # small, so that short test sequences span several chunks


def make_inputs(batch=2, dim=6, N=4, L=19, groups=None, large_delta=False, dtype=torch.float32, seed=0):
    """Random scan inputs (u, delta, A, B, C, D, z, delta_bias), all leaf tensors requiring grad."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, N, L) if groups is None else (batch, groups, N, L)
    if large_delta:  # trained-model extremes: |sum(delta * A)| reaches thousands, far past exp's float32 range (~88)
        delta = 5 + 45 * torch.rand(batch, dim, L, generator=g, dtype=dtype)
        A = -(1 + 15 * torch.rand(dim, N, generator=g, dtype=dtype))
    else:
        delta = 0.05 + 0.5 * torch.rand(batch, dim, L, generator=g, dtype=dtype)
        A = -(0.1 + 2 * torch.rand(dim, N, generator=g, dtype=dtype))
    tensors = (
        torch.randn(batch, dim, L, generator=g, dtype=dtype),
        delta,
        A,
        torch.randn(bc_shape, generator=g, dtype=dtype),
        torch.randn(bc_shape, generator=g, dtype=dtype),
        torch.randn(dim, generator=g, dtype=dtype),
        torch.randn(batch, dim, L, generator=g, dtype=dtype),
        0.1 * torch.randn(dim, generator=g, dtype=dtype),
    )
    return [t.requires_grad_() for t in tensors]


def run(inputs, backend, extras=True, softplus=False, **kwargs):
    """Output, last state and the gradients of a fixed random loss w.r.t. every input used."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    used = inputs if extras else inputs[:5]
    out, last = selective_scan(
        u, delta, A, B, C,
        D=D if extras else None,
        z=z if extras else None,
        delta_bias=delta_bias if extras else None,
        delta_softplus=softplus,
        return_last_state=True,
        backend=backend,
        **kwargs,
    )
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (last * torch.randn(last.shape, generator=g)).sum()
    return out, last, torch.autograd.grad(loss, used)


def assert_close_f32(actual, expected):
    """Equal up to float32 rounding, relative to the tensor's scale."""
    scale = expected.abs().max().item() + 1e-30
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def assert_matches_reference(inputs, extras=True, softplus=False, chunk_size=CHUNK):
    out, last, grads = run(inputs, "torch", extras, softplus, chunk_size=chunk_size)
    ref_out, ref_last, ref_grads = run(inputs, "reference", extras, softplus)
    assert_close_f32(out, ref_out)
    assert_close_f32(last, ref_last)
    for name, grad, ref_grad in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), grads, ref_grads):
        assert torch.isfinite(grad).all(), name
        assert_close_f32(grad, ref_grad)


@pytest.mark.parametrize("L", [1, 5, CHUNK, 3 * CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("extras", [False, True], ids=["core", "D-z-delta_bias"])
def test_matches_reference(L, extras):
    assert_matches_reference(make_inputs(L=L), extras=extras, softplus=extras)


def test_default_chunk_size_matches_reference():
    assert_matches_reference(make_inputs(L=300), chunk_size=None)


def test_large_delta_stays_finite_and_exact():
    inputs = make_inputs(L=4 * CHUNK + 3, large_delta=True)
    delta, A = inputs[1], inputs[2]
    assert (delta.detach().unsqueeze(-1) * A.detach().unsqueeze(1)).sum(2).min() < -1000  # exp(cumsum) would overflow
    assert_matches_reference(inputs)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_grouped_B_C(groups):
    assert_matches_reference(make_inputs(dim=6, groups=groups, L=2 * CHUNK + 3))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_group_g_serves_its_block_of_channels(backend):
    """Groups of B and C map to consecutive channel blocks: the same as giving every channel its block's B and C."""
    u, delta, A, B, C = (t.detach() for t in make_inputs(dim=6, groups=2, L=11)[:5])
    per_channel = dict(B=B.repeat_interleave(3, dim=1), C=C.repeat_interleave(3, dim=1))  # 6 groups of one channel
    expected = selective_scan(u, delta, A, backend=backend, chunk_size=4, **per_channel)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, backend=backend, chunk_size=4), expected)


def test_gradient_through_last_state_only():
    inputs = make_inputs(L=2 * CHUNK + 3)[:5]
    grads = {}
    for backend in ("torch", "reference"):
        _, last = selective_scan(*inputs, return_last_state=True, backend=backend, chunk_size=CHUNK)
        grads[backend] = torch.autograd.grad(last.sum(), inputs, allow_unused=True, materialize_grads=True)
    for grad, ref in zip(grads["torch"], grads["reference"]):
        assert_close_f32(grad, ref)


def test_reference_matches_closed_form():
    """Two steps of one channel with one state, written out by hand."""
    u, dt, B, C = torch.rand(4, 2, dtype=torch.float64)
    A, D = -torch.rand(2, dtype=torch.float64)
    h1 = dt[0] * B[0] * u[0]
    h2 = torch.exp(dt[1] * A) * h1 + dt[1] * B[1] * u[1]
    expected = torch.stack([C[0] * h1, C[1] * h2]) + D * u
    for backend in ("reference", "torch"):
        out, last = selective_scan(
            u.view(1, 1, 2), dt.view(1, 1, 2), A.view(1, 1), B.view(1, 1, 2), C.view(1, 1, 2), D.view(1),
            return_last_state=True, backend=backend, chunk_size=1,
        )
        torch.testing.assert_close(out.view(2), expected)
        torch.testing.assert_close(last.view(()), h2)


def test_gradcheck_float64():
    inputs = [t.detach().requires_grad_() for t in make_inputs(batch=1, dim=4, N=3, L=7, groups=2, dtype=torch.float64)]

    def fn(*args):
        return selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                              return_last_state=True, backend="torch", chunk_size=3)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("L", [1, 2 * CHUNK + 1])
@pytest.mark.parametrize("extras", [False, True], ids=["core", "D-z-delta_bias"])
def test_forward_only_path_matches_reference(L, extras):
    """Without gradients the scan runs a forward-only path (bias, softplus and D applied chunk by chunk)."""
    inputs = [t.detach() for t in make_inputs(L=L)]
    u, delta, A, B, C, D, z, delta_bias = inputs
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=True) if extras else {}
    out, last = selective_scan(u, delta, A, B, C, return_last_state=True, chunk_size=CHUNK, **kwargs)
    ref_out, ref_last = selective_scan(u, delta, A, B, C, return_last_state=True, backend="reference", **kwargs)
    assert_close_f32(out, ref_out)
    assert_close_f32(last, ref_last)


@pytest.mark.parametrize("extras", [False, True], ids=["core", "D-z-delta_bias"])
def test_inference_path_matches_autograd_path(extras):
    """The forward-only path and the autograd Function's forward run the same recurrence; the core agrees exactly,
    the fused softplus (computed differently) to float rounding."""
    inputs = make_inputs(L=2 * CHUNK + 1)
    u, delta, A, B, C, D, z, delta_bias = inputs
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=True) if extras else {}
    with_grad = selective_scan(u, delta, A, B, C, return_last_state=True, chunk_size=CHUNK, **kwargs)
    assert with_grad[0].grad_fn is not None
    with torch.no_grad():
        without = selective_scan(u, delta, A, B, C, return_last_state=True, chunk_size=CHUNK, **kwargs)
    for a, b in zip(with_grad, without):
        if extras:
            assert_close_f32(b, a.detach())
        else:
            torch.testing.assert_close(b, a.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("grad", [True, False], ids=["forward-backward", "forward-only"])
def test_scan_runs_on_one_thread_and_restores_the_callers_count(monkeypatch, grad):
    """The chunked scan runs its ops on one intra-op thread (forward and backward) and gives the caller back its own
    thread count, at a count above one (as torch's default on a multi-core machine); results stay exact."""
    seen = []
    chunk_states = scan_module._chunk_states

    def recording(*args):
        seen.append(torch.get_num_threads())
        chunk_states(*args)

    monkeypatch.setattr(scan_module, "_chunk_states", recording)
    inputs = make_inputs(L=2 * CHUNK + 3) if grad else [t.detach() for t in make_inputs(L=2 * CHUNK + 3)]
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out, last = selective_scan(*inputs[:5], D=inputs[5], return_last_state=True, chunk_size=CHUNK)
        assert torch.get_num_threads() == 3
        if grad:
            forward_calls = len(seen)
            torch.autograd.grad(out.sum() + last.sum(), inputs[:6])
            assert len(seen) > forward_calls  # the backward recomputed its chunks
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    ref_out, ref_last = selective_scan(*inputs[:5], D=inputs[5], return_last_state=True, backend="reference")
    assert_close_f32(out, ref_out)
    assert_close_f32(last, ref_last)


def test_scan_restores_the_thread_count_when_it_raises(monkeypatch):
    def failing(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(scan_module, "_chunk_states", failing)
    u, delta, A, B, C = (t.detach() for t in make_inputs(L=9)[:5])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            selective_scan(u, delta, A, B, C, chunk_size=4)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_fast_softplus_matches_torch():
    x = torch.cat([torch.linspace(-87, 40, 100_001), torch.tensor([-1e30, -200.0, 19.99, 20.0, 20.01, 88.0, 89.0])])
    for dtype in (torch.float32, torch.float64):
        expected = nn.functional.softplus(x.to(dtype))
        actual = scan_module._softplus_forward(x.to(dtype))
        torch.testing.assert_close(actual, expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert scan_module._softplus_forward(torch.tensor([float("inf")])).item() == float("inf")


def test_channel_contiguous_views_are_read_in_place_and_agree():
    """SS2D passes u, delta, B and C as [b, channels, L] views of token-major storage: the scan reads them without a
    transpose and gives the same values and gradients as for contiguous inputs, on both paths."""
    inputs = make_inputs(L=2 * CHUNK + 3, groups=2)
    views = [t.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_() for t in inputs[:5]]
    views += [t.detach().clone().requires_grad_() for t in inputs[5:]]
    assert views[0].stride(-2) == 1 and not views[0].is_contiguous()
    assert scan_module._to_time_major(views[0]).data_ptr() == views[0].data_ptr()  # no copy

    ref_out, ref_last, ref_grads = run(inputs, "reference", softplus=True)
    out, last, grads = run(views, "torch", softplus=True, chunk_size=CHUNK)
    assert_close_f32(out, ref_out)
    assert_close_f32(last, ref_last)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close_f32(grad, ref_grad)
    with torch.no_grad():
        u, delta, A, B, C, D, z, delta_bias = views
        out, last = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, True, chunk_size=CHUNK)
    assert_close_f32(out, ref_out)
    assert_close_f32(last, ref_last)


def test_low_precision_input_computes_in_float32():
    u, delta, A, B, C = (t.detach() for t in make_inputs(L=13)[:5])
    out = selective_scan(u.bfloat16(), delta, A, B, C, chunk_size=CHUNK)
    assert out.dtype == torch.bfloat16
    expected = selective_scan(u.bfloat16().float(), delta, A, B, C, backend="reference")
    torch.testing.assert_close(out, expected.bfloat16())


def test_auto_picks_torch_on_cpu(monkeypatch):
    # Even where mamba-ssm imports, CPU tensors go to the pure-torch scan.
    monkeypatch.setattr(scan_module, "_mamba_available", lambda: True)
    assert scan_module._resolve_backend("auto", torch.zeros(1)) == "torch"
    u, delta, A, B, C = make_inputs(L=9)[:5]
    out = selective_scan(u, delta, A, B, C, backend="auto", chunk_size=4)
    assert type(out.grad_fn).__name__ == "_ChunkedScanBackward"
    torch.testing.assert_close(out, selective_scan(u, delta, A, B, C, backend="torch", chunk_size=4), rtol=0, atol=0)


def test_mamba_backend_without_mamba_ssm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # import mamba_ssm now fails, installed or not
    u, delta, A, B, C = (t.detach() for t in make_inputs(L=3)[:5])
    with pytest.raises(ImportError, match="mamba-ssm"):
        selective_scan(u, delta, A, B, C, backend="mamba_ssm")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(A=torch.zeros(5, 4)), "A must be"),
        (dict(B=torch.zeros(2, 4, 4, 9)), "not divisible"),
        (dict(C=torch.zeros(2, 3, 9)), "does not match"),
        (dict(backend="cuda"), "backend must be"),
    ],
)
def test_bad_arguments_raise(change, message):
    u, delta, A, B, C = (t.detach() for t in make_inputs(L=9)[:5])
    args = dict(u=u, delta=delta, A=A, B=B, C=C)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**args)


class _ScanModule(nn.Module):
    """The way SS2D calls the scan: parameters A_log, D and the delta bias, softplus on."""

    def __init__(self, dim=6, N=4):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(dim, 1))
        self.D = nn.Parameter(torch.ones(dim))
        self.delta_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, u, delta, B, C):
        return selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, None, self.delta_bias, True)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit")
def test_torchscript_script_and_trace():
    module = _ScanModule()
    u, delta, B, C = (t.detach() for t in (make_inputs(L=20)[i] for i in (0, 1, 3, 4)))
    expected = module(u, delta, B, C)
    scripted = torch.jit.script(module)
    with torch.no_grad():
        torch.testing.assert_close(scripted(u, delta, B, C), expected.detach())
        traced = torch.jit.trace(module, (u, delta, B, C))
    torch.testing.assert_close(traced(u, delta, B, C), expected.detach())

    # A scripted module still trains: its gradients come from the differentiable sequential loop.
    out = scripted(u, delta, B, C)
    assert_close_f32(out.detach(), expected.detach())
    grads = torch.autograd.grad(out.square().sum(), list(scripted.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(module.parameters()))
    for grad, ref in zip(grads, expected_grads):
        assert_close_f32(grad, ref)


def _ss2d_direction_by_direction(m: SS2D, x):
    """SS2D written out one scan order at a time, on contiguous [B, d, L] tensors with the reference scan."""
    b, h, w, _ = x.shape
    d, n, r = m.d_inner, m.d_state, m.dt_rank
    x, z = m.in_proj(x).chunk(2, dim=-1)
    x = nn.functional.silu(m.conv(x.permute(0, 3, 1, 2).contiguous())).flatten(2)  # [B, d, L] in row-major order
    rows, cols = torch.arange(h * w).view(h, w).flatten(), torch.arange(h * w).view(h, w).t().flatten()
    orders = [rows, cols, rows.flip(0), cols.flip(0)][: m.directions]
    A, D, bias = -torch.exp(m.A_log).view(-1, d, n), m.D.view(-1, d), m.dt_proj_bias
    y = torch.zeros_like(x)
    for k, order in enumerate(orders):
        u = x[:, :, order]
        dt, B, C = torch.einsum("cd,bdl->bcl", m.x_proj_weight[k], u).split([r, n, n], dim=1)
        delta = torch.einsum("dr,brl->bdl", m.dt_proj_weight[k], dt)
        y_k = selective_scan(u, delta, A[k], B, C, D[k], delta_bias=bias[k], delta_softplus=True, backend="reference")
        y = y.index_add(2, order, y_k)  # back to row-major order
    y = m.out_norm(y.transpose(1, 2).reshape(b, h, w, d))
    return m.out_proj(y * nn.functional.silu(z))


@pytest.mark.parametrize("directions", [1, 4])
def test_ss2d_matches_a_direction_by_direction_computation(directions):
    """SS2D's token-major layout, stacked projections and merge of the four orders, against the plain formulation."""
    torch.manual_seed(0)
    m = SS2D(8, d_state=4, directions=directions)
    x = torch.randn(2, 5, 7, 8, requires_grad=True)
    expected = _ss2d_direction_by_direction(m, x)
    params = [x] + list(m.parameters())
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    out = m(x)
    assert_close_f32(out, expected)
    for grad, ref_grad in zip(torch.autograd.grad(out.square().sum(), params), expected_grads):
        assert_close_f32(grad, ref_grad)
    with torch.no_grad():
        assert_close_f32(m(x), expected.detach())
