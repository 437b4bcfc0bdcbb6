"""The fast chunked selective scan against the sequential reference, a closed form, and finite differences."""

import math
import sys

import pytest
import torch
from torch import nn

from hdhkd_monai.networks import selective_scan as scan_module
from hdhkd_monai.networks.selective_scan import selective_scan

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


def test_inference_path_matches_autograd_path():
    """Without gradients the scan runs a forward-only path; it must give the same numbers."""
    inputs = make_inputs(L=2 * CHUNK + 1)
    with_grad = selective_scan(*inputs[:5], return_last_state=True, chunk_size=CHUNK)
    with torch.no_grad():
        without = selective_scan(*inputs[:5], return_last_state=True, chunk_size=CHUNK)
    for a, b in zip(with_grad, without):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


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
