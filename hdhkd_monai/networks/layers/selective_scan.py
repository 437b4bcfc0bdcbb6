"""Selective scan (the S6 recurrence of Mamba) with the interface of mamba-ssm's ``selective_scan_fn``.

For every batch element, channel ``d`` and state index ``n``::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (h_0 = 0)
    y_t = <C_t, h_t> + D * u_t,     out = y * silu(z) when z is given

Backends:

- ``"torch"``: exact pure-PyTorch scan for CPU (and any device without mamba-ssm). A custom autograd Function runs
  the recurrence chunk by chunk into preallocated buffers and saves only the state at each chunk start; its
  backward recomputes one chunk at a time and runs the reverse recurrence. When no gradient is needed a
  forward-only path runs the same recurrence, keeps no chunk-boundary states, and applies delta_bias, softplus and
  D chunk by chunk. No exp(cumsum) ratios (they overflow once ``|sum(delta * A)| > ~88``) and no complex log-space
  scan (it loses gradient accuracy). It reads [batch, dim, L] inputs whose ``dim`` is contiguous (views of
  token-major storage, as SS2D passes them) without a transpose, and returns its output as a view of time-major
  storage (in general not contiguous). It runs on one intra-op thread whatever ``torch.get_num_threads()`` says
  (see :func:`_one_thread`) and restores the caller's setting on return.
- ``"reference"``: the plain sequential loop, differentiated by autograd; the ground truth for tests.
- ``"mamba_ssm"``: mamba-ssm's CUDA kernel, imported lazily; CUDA tensors only.
- ``"auto"``: ``"mamba_ssm"`` for CUDA tensors when mamba-ssm imports, else ``"torch"``.

TorchScript: :func:`selective_scan` compiles inside a module passed to ``torch.jit.script`` (MONAI's ``ckpt_export``).
There it uses pure-torch code only (custom autograd Functions and optional imports do not script): the chunked
forward when no gradient is needed, which is what an exported inference model runs, and the differentiable
sequential loop when one is. ``torch.jit.trace`` records the forward-only scan as a call to its scripted form
(``torch.jit.script_if_tracing``), so its loops over chunks and time steps follow the input's sequence length: a
traced model runs at any image size and batch size, inference only. (A trace that unrolled those loops wrote only
the traced length's steps of a longer input and left the rest of the output buffer, from ``new_empty``, unwritten:
silently wrong values, NaN where the recycled memory held NaN.) The thread scope of :func:`_one_thread` is eager
only: a traced or scripted scan runs at the caller's thread count, with the same results.

ONNX: during ``torch.onnx.export`` the "torch" backend runs :func:`_export_scan`, a functional form of the same
forward-only recurrence (a chunked parallel scan whose graph does not grow with the sequence) without the in-place
slice writes that the tracer turns into ``index_put``; its graph keeps the batch axis dynamic and is fixed to the
traced sequence length.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); never ``networks.blocks`` or ``nets``.
"""

import contextlib
import functools
import warnings
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan", "BACKENDS"]

BACKENDS = ("auto", "torch", "reference", "mamba_ssm")

# The "torch" backend picks its chunk length so that one chunk buffer ([T, batch, dim, N], three of them in backward)
# holds about this many elements: at batch 2, dim 768, N 16 that is 16 steps, and each buffer is 1.5 MiB. Measured on
# a 2-core AMD EPYC: 16 steps were ~10% faster than 32 and ~25% faster than 64 (training). Inference of SS2D's scan
# (dim 768, L 4096): the default 32 steps at batch 1 and 4 at batch 8 were within 5% of the best length tried
# (8 ... 128 at batch 1, 1 ... 16 at batch 8).
CHUNK_ELEMENTS = 400_000
# Time steps per chunk of the ONNX export form (:func:`_export_scan`). Measured on the default bundle network at
# 256x256 (SS2D's L = 4096), batch 1, one onnxruntime thread, 2-core AMD EPYC at load 3.7-3.8: chunks of 8, 16, 32,
# 64 exported in 2.6, 2.1, 2.0, 2.0 s and ran in 0.55, 0.50, 0.46, 0.49 s (eager PyTorch 0.24 s). Forms tried before:
# a loop over chunks of 32 with a doubling scan in each took 39-103 s to export (the exporter slows down with the
# graph's node count, which that loop multiplies by L / chunk); a doubling scan inside all chunks at once exported in
# 5 s but ran in 1.3 s (eager 0.37 s), its log2(chunk) passes over whole-sequence tensors costing memory bandwidth.
EXPORT_CHUNK = 32


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
):
    """Selective scan, a drop-in for ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``.

    Args:
        u: input, [batch, dim, L].
        delta: step sizes, [batch, dim, L].
        A: state matrix (real), [dim, N].
        B: input projection, [batch, N, L] or [batch, groups, N, L]; group g serves channels
            g * dim / groups ... (g + 1) * dim / groups - 1.
        C: output projection, same shape rules as ``B``.
        D: skip weight, [dim].
        z: gate, [batch, dim, L]; the output is multiplied by silu(z).
        delta_bias: added to delta, [dim].
        delta_softplus: apply softplus to delta after the bias.
        return_last_state: also return the final state h_L.
        backend: one of :data:`BACKENDS`.
        chunk_size: time steps per chunk of the "torch" backend (not part of mamba-ssm's signature); by default
            about ``CHUNK_ELEMENTS / (batch * dim * N)``, a power of two in [4, 256], and ``EXPORT_CHUNK`` in ONNX
            export. Results do not depend on it.

    Returns:
        out [batch, dim, L] in ``u``'s dtype (from the "torch" backend a non-contiguous view), or
        ``(out, last_state)`` with last_state [batch, dim, N] in the compute dtype (float32, or float64 for float64
        input). Computation is float32 for half/bfloat16/float32 inputs.

    Raises:
        ValueError: on inconsistent shapes, an unknown backend, or backend="mamba_ssm" with CPU tensors.
        ImportError: backend="mamba_ssm" without a working mamba-ssm installation.
    """
    if torch.jit.is_scripting():
        if backend not in ["auto", "torch", "reference"]:
            raise RuntimeError(
                f"selective_scan: under TorchScript backend must be 'auto', 'torch' or 'reference', got {backend}."
            )
        if return_last_state:
            raise RuntimeError("selective_scan: return_last_state is not supported under TorchScript.")
        return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend == "reference", chunk_size)[0]
    else:
        backend = _resolve_backend(backend, u)
        if backend == "mamba_ssm":
            return _mamba_selective_scan_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        # ONNX export traces the functional form (torch.onnx.is_in_onnx_export does not compile under TorchScript).
        export_chunk = 0
        if backend == "torch" and torch.onnx.is_in_onnx_export():
            export_chunk = EXPORT_CHUNK if chunk_size is None else chunk_size
        with _one_thread() if backend == "torch" else contextlib.nullcontext():
            out, last_state = _scan(
                u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend == "reference", chunk_size, export_chunk
            )
        return (out, last_state) if return_last_state else out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Runs the block's torch ops on one intra-op thread and restores the caller's thread count afterwards.

    The chunked scan issues thousands of small ops. With several threads each of them ends at a barrier, and on a
    busy machine a descheduled partner thread stalls that barrier for a scheduler time slice: forward + backward
    at 2 threads beside 3 busy processes on 2 cores took up to 73 s, against 0.4 s on one thread (docs/complexity.md).
    ``torch.set_num_threads`` is process-wide for MKL, so ops run concurrently from other Python threads also see
    one thread until the block ends.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _default_chunk_size(step_elements: int, target_elements: int = CHUNK_ELEMENTS) -> int:
    chunk = 4
    while chunk < 256 and 2 * chunk * step_elements <= target_elements:
        chunk *= 2
    return chunk


def _resolve_backend(backend: str, u: Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        return "mamba_ssm" if u.is_cuda and _mamba_available() else "torch"
    if backend == "mamba_ssm":
        _mamba_selective_scan_fn()  # a clear error when mamba-ssm is missing
        if not u.is_cuda:
            raise ValueError(f"selective_scan: backend='mamba_ssm' needs CUDA tensors, got device {u.device}.")
    return backend


@functools.lru_cache(maxsize=None)
def _mamba_available() -> bool:
    try:
        _mamba_selective_scan_fn()
    except ImportError:
        return False
    return True


def _mamba_selective_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as err:  # OSError: a mamba-ssm build that cannot load its CUDA library
        raise ImportError(
            "selective_scan: backend='mamba_ssm' needs the optional mamba-ssm package with its CUDA extension "
            f"(pip install 'hdhkd-monai[mamba]'); importing it failed: {err}. Use backend='torch' instead."
        ) from err
    return selective_scan_fn


def _check_shapes(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: u and delta must both be [batch, dim, L], got {list(u.shape)} and {list(delta.shape)}."
        )
    dim = u.size(1)
    if A.dim() != 2 or A.size(0) != dim or A.is_complex():
        raise ValueError(f"selective_scan: A must be real [dim={dim}, N], got {list(A.shape)} ({A.dtype}).")
    for name, p in (("B", B), ("C", C)):
        if p.dim() not in (3, 4):
            raise ValueError(
                f"selective_scan: {name} must be [batch, N, L] or [batch, groups, N, L], got {list(p.shape)}."
            )
        if p.size(0) != u.size(0) or p.size(-1) != u.size(2) or p.size(-2) != A.size(1):
            raise ValueError(
                f"selective_scan: {name} {list(p.shape)} does not match batch {u.size(0)}, N {A.size(1)}, "
                f"L {u.size(2)}."
            )
        if p.dim() == 4 and dim % p.size(1) != 0:
            raise ValueError(f"selective_scan: dim {dim} is not divisible by the {p.size(1)} groups of {name}.")
    if D is not None and (D.dim() != 1 or D.size(0) != dim):
        raise ValueError(f"selective_scan: D must be [dim={dim}], got {list(D.shape)}.")
    if delta_bias is not None and (delta_bias.dim() != 1 or delta_bias.size(0) != dim):
        raise ValueError(f"selective_scan: delta_bias must be [dim={dim}], got {list(delta_bias.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must be shaped like u {list(u.shape)}, got {list(z.shape)}.")


def _scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    reference: bool,
    chunk_size: Optional[int],
    export_chunk: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Pure-torch selective scan: input preparation and output gating around the chosen core (with a positive
    ``export_chunk``, the functional form :func:`_export_scan` in chunks of that many steps, for ONNX)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be positive, got {chunk_size}.")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf = u.to(dtype)
    delta = delta.to(dtype)
    A = A.to(dtype)
    B = (B.unsqueeze(1) if B.dim() == 3 else B).to(dtype)
    C = (C.unsqueeze(1) if C.dim() == 3 else C).to(dtype)
    D = None if D is None else D.to(dtype)
    delta_bias = None if delta_bias is None else delta_bias.to(dtype)

    needs_grad = torch.is_grad_enabled() and (
        uf.requires_grad
        or delta.requires_grad
        or A.requires_grad
        or B.requires_grad
        or C.requires_grad
        or (D is not None and D.requires_grad)
        or (delta_bias is not None and delta_bias.requires_grad)
    )
    if not reference and export_chunk == 0 and (not needs_grad or torch.jit.is_tracing()):
        if needs_grad:  # a trace must record the same graph with and without grad (its check reruns under no_grad)
            warnings.warn("selective_scan: a traced scan is inference-only; no gradient flows through it.")
        y, last_state = _chunked_scan_inference(uf, delta, A, B, C, D, delta_bias, delta_softplus, chunk_size)
    else:
        if delta_bias is not None:
            delta = delta + delta_bias.unsqueeze(-1)
        if delta_softplus:
            delta = F.softplus(delta)
        if export_chunk > 0 and not reference:
            y, last_state = _export_scan(uf, delta, A, B, C, export_chunk)
        elif reference or torch.jit.is_scripting():
            # No autograd Function in TorchScript: gradients come from autograd through the sequential loop.
            y, last_state = _reference_scan(uf, delta, A, B, C)
        else:
            chunk = _default_chunk_size(u.size(0) * u.size(1) * A.size(1)) if chunk_size is None else chunk_size
            y, last_state = _ChunkedScan.apply(uf, delta, A, B, C, chunk)
        if D is not None:
            y = torch.addcmul(y, uf, D.unsqueeze(-1))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), last_state


def _softplus_forward(x: Tensor) -> Tensor:
    """F.softplus(x) to float rounding, without autograd support, about 2.5x as fast on CPU.

    F.softplus spends ~10 ns per element in a scalar log1p, a quarter of the inference scan; log1p(w) is computed here
    as log(v) - ((v - 1) - w) / v with v = 1 + w, which corrects the rounding of v (and gives w when v rounds to 1).
    """
    w = torch.exp(x)
    v = w + 1
    log1p = torch.log(v).sub_((v - 1).sub_(w).div_(v))
    return torch.where(x > 20, x, log1p)  # F.softplus's threshold; also drops the NaN that exp overflow gives above


def _reference_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tuple[Tensor, Tensor]:
    """Sequential loop: u, delta [b, d, L]; A [d, N]; B, C [b, G, N, L] -> y [b, d, L], h_L [b, d, N]."""
    repeats = u.size(1) // B.size(1)
    B = B.repeat_interleave(repeats, dim=1)  # [b, d, N, L]
    C = C.repeat_interleave(repeats, dim=1)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # [b, d, L, N]
    drive = (delta * u).unsqueeze(-1) * B.transpose(-1, -2)  # [b, d, L, N]
    h = u.new_zeros(u.size(0), u.size(1), A.size(1))
    ys = []
    for a_t, x_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(-1)):
        h = a_t * h + x_t
        ys.append((h * c_t).sum(-1))
    return torch.stack(ys, dim=-1), h


# Chunked scan. Its buffers are time-major with the state index ahead of the channels, [T, b, G, N, d/G]:
# each step is one contiguous block, every contraction is a fast row-vector x matrix product, and the sum over N
# runs over an outer dimension. Inputs are read as [L, b, ...] views with the channels contiguous: SS2D passes its
# tensors stored token-major, and those need no transpose; outputs are returned as views of time-major buffers.


def _to_time_major(x: Tensor) -> Tensor:
    """[b, ..., c, L] -> [L, b, ..., c] with c contiguous: a view when it already is, else a copy (a 2-D transpose,
    several times faster than permute().contiguous())."""
    if x.stride(-2) == 1:
        return x.movedim(-1, 0)
    return x.reshape(-1, x.size(-1)).t().contiguous().view([x.size(-1)] + list(x.shape[:-1]))


def _from_time_major(x: Tensor) -> Tensor:
    """[L, ...] -> [..., L], a view."""
    return x.movedim(0, -1)


@torch.jit.script_if_tracing  # a trace calls the scripted form: its loops follow the input's length, not the traced one
def _chunked_scan_inference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    chunk_size: Optional[int],
) -> Tuple[Tensor, Tensor]:
    """The forward-only path: u, delta [b, d, L]; A [d, N]; B, C [b, G, N, L] -> y [b, d, L] (including the D skip),
    h_L [b, d, N]. Bias, softplus and D are applied chunk by chunk, on data still in cache."""
    chunk = _default_chunk_size(u.size(0) * u.size(1) * A.size(1)) if chunk_size is None else chunk_size
    # Detached, not under no_grad(): a trace records detach, so the traced graph also runs with grad enabled.
    y, last_state = _chunked_forward(
        _to_time_major(u.detach()),
        _to_time_major(delta.detach()),
        _state_major(A.detach(), B.size(1)),
        _to_time_major(B.detach()),
        _to_time_major(C.detach()),
        chunk,
        None,
        None if D is None else D.detach(),
        None if delta_bias is None else delta_bias.detach(),
        delta_softplus,
    )
    return _from_time_major(y), _channel_major(last_state)


@torch.jit.unused  # TorchScript compiles a stub: scripted models run the chunked scan
def _export_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tuple[Tensor, Tensor]:
    """The scan in functional form, for ONNX export: no in-place writes into slices (the tracer records those as
    ``index_put``/``copy_``), no loop over the whole sequence (the graph stays small whatever L), and every shape
    follows the input's, so the batch axis stays dynamic.

    u, delta (the step sizes, bias and softplus applied) [b, d, L]; A [d, N]; B, C [b, G, N, L] -> y [b, d, L],
    h_L [b, d, N]. A chunked parallel scan: the time axis is cut into chunks of ``chunk`` steps (the last one padded
    with steps that keep the state); a loop over the ``chunk`` steps runs the recurrence in every chunk at once from a
    zero state, keeping each step's state and cumulative decay; a :func:`_doubling_scan` across the chunks' end states
    gives each chunk its incoming state, which it adds times its cumulative decay. Equals
    :func:`_chunked_scan_inference` to float rounding (the products are summed in another order).
    """
    G = B.size(1)
    L, dg = u.size(2), u.size(1) // G  # the batch size is left as -1 in views: a trace would freeze a read one
    T = min(chunk, L)
    n = (L + T - 1) // T

    def blocks(x: Tensor, shape: List[int]) -> Tensor:
        """[b, ..., L] -> [T, n, b, *shape] (step in chunk, chunk), the padding steps zero (a zero step size keeps
        the state)."""
        x = x.movedim(x.dim() - 1, 0)  # (an ONNX trace of movedim(-1, 0) gives an invalid Transpose)
        if n * T > L:
            x = torch.cat([x, torch.zeros_like(x[: n * T - L])])
        return x.reshape([n, T, -1] + shape).transpose(0, 1)

    dt = blocks(delta, [G, 1, dg])
    decay = torch.exp(dt * _state_major(A, G))  # [T, n, b, G, N, dg]
    drive = dt * blocks(u, [G, 1, dg]) * blocks(B, [G, B.size(2), 1])
    states, decays = [drive[0]], [decay[0]]  # within each chunk from a zero state, all chunks at once
    for t in range(1, T):
        states.append(decay[t] * states[-1] + drive[t])
        decays.append(decays[-1] * decay[t])
    _, ends = _doubling_scan(decays[-1], states[-1])  # the state at each chunk's end
    incoming = torch.cat([torch.zeros_like(ends[:1]), ends[:-1]])
    h = torch.stack(states) + torch.stack(decays) * incoming
    y = torch.matmul(blocks(C, [G, 1, C.size(2)]), h).transpose(0, 1).reshape(n * T, -1, G * dg)[:L]  # y_t = C_t h_t
    return y.permute(1, 2, 0), _channel_major(ends[-1])


def _doubling_scan(decay: Tensor, state: Tensor) -> Tuple[Tensor, Tensor]:
    """Hillis-Steele scan of ``h_t = decay_t h_{t-1} + state_t`` (``h`` zero before the first step) along dim 0, in
    ``ceil(log2(length))`` doubling steps: returns (the product of the decays up to t, h_t). Decays lie in (0, 1], so
    their products cannot overflow."""
    length, k = decay.size(0), 1
    while k < length:  # after the step for k, state_t sums the last 2k steps and decay_t is their decays' product
        state = state + decay * torch.cat([torch.zeros_like(state[:k]), state[: length - k]])
        decay = decay * torch.cat([torch.ones_like(decay[:k]), decay[: length - k]])
        k *= 2
    return decay, state


def _state_major(x: Tensor, groups: int) -> Tensor:
    """[..., d, N] -> [..., G, N, d/G], contiguous."""
    d, N = x.size(-2), x.size(-1)
    return x.reshape(list(x.shape[:-2]) + [groups, d // groups, N]).transpose(-1, -2).contiguous()


def _channel_major(x: Tensor) -> Tensor:
    """[..., G, N, d/G] -> [..., d, N]."""
    G, N, dg = x.size(-3), x.size(-2), x.size(-1)
    return x.transpose(-1, -2).reshape(list(x.shape[:-3]) + [G * dg, N])


def _chunk_states(dt: Tensor, dtu: Tensor, A: Tensor, B: Tensor, decay: Tensor, states: Tensor) -> None:
    """Runs the recurrence over one chunk of T steps, in place.

    dt, dtu: delta and delta * u, [T, b, G, 1, d/G]; A: [G, N, d/G]; B: [T, b, G, N]. Buffers: decay
    [T, b, G, N, d/G] is left holding exp(delta_t * A); states [T + 1, b, G, N, d/G] holds the state before the chunk
    in states[0] on entry and h_1 .. h_T of the chunk after it.
    """
    # exp(delta A) as exp2(delta A log2(e)): on CPU ~3x as fast as exp, and within float rounding of it.
    torch.mul(dt, A * 1.4426950408889634, out=decay)
    decay.exp2_()
    torch.mul(dtu, B.unsqueeze(-1), out=states[1:])
    h = states.unbind(0)
    for t, a_t in enumerate(decay.unbind(0)):
        h[t + 1].addcmul_(a_t, h[t])  # h_t = delta_t B_t u_t + exp(delta_t A) h_{t-1}


def _chunked_forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int,
    boundary: Optional[Tensor],
    D: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Chunked scan without autograd.

    u, delta: [L, b, d] (d contiguous); A: [G, N, d/G]; B, C: [L, b, G, N]; D, delta_bias: [d].
    Returns y [L, b, d] (plus D * u when D is given) and h_L [b, G, N, d/G]. The step sizes are delta, with
    delta_bias and softplus applied when given. A given ``boundary`` [n_chunks + 1, b, G, N, d/G] (the backward pass
    needs it) is filled with the states at chunk boundaries, h_0 = 0, ..., h_L.
    """
    L, b, G, N, dg = u.size(0), u.size(1), A.size(0), A.size(1), A.size(2)
    T = min(chunk, L)
    u = u.view(L, b, G, 1, dg)
    dtu = u.new_empty(T, b, G, 1, dg)
    decay = u.new_empty(T, b, G, N, dg)
    states = u.new_empty(T + 1, b, G, N, dg)
    states[0].zero_()
    y = u.new_empty(L, b, G, 1, dg)
    for c, s in enumerate(range(0, L, chunk)):
        e = min(s + chunk, L)
        h = states[: e - s + 1]
        dt = delta[s:e] if delta_bias is None else delta[s:e] + delta_bias
        if delta_softplus:
            dt = _softplus_forward(dt)
        dt = dt.view(e - s, b, G, 1, dg)
        torch.mul(dt, u[s:e], out=dtu[: e - s])
        _chunk_states(dt, dtu[: e - s], A, B[s:e], decay[: e - s], h)
        torch.matmul(C[s:e].unsqueeze(-2), h[1:], out=y[s:e])  # y_t = C_t h_t
        if D is not None:
            y[s:e].addcmul_(u[s:e], D.view(G, 1, dg))
        states[0].copy_(h[-1])
        if boundary is not None:
            boundary[c + 1].copy_(h[-1])
    return y.view(L, b, G * dg), states[0]


class _ChunkedScan(torch.autograd.Function):
    """Exact chunked scan saving only chunk-boundary states; backward recomputes each chunk.

    u, delta [b, d, L]; A [d, N]; B, C [b, G, N, L] -> y [b, d, L], h_L [b, d, N].
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        G = B.size(1)
        ut, dt, Bt, Ct = _to_time_major(u), _to_time_major(delta), _to_time_major(B), _to_time_major(C)
        As = _state_major(A, G)
        L, N = ut.size(0), As.size(1)
        boundary = u.new_empty((L + chunk - 1) // chunk + 1, u.size(0), G, N, u.size(1) // G)
        boundary[0].zero_()
        y, last_state = _chunked_forward(ut, dt, As, Bt, Ct, chunk, boundary)
        ctx.save_for_backward(ut, dt, As, Bt, Ct, boundary)
        ctx.chunk = chunk
        return _from_time_major(y), _channel_major(last_state)

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        with _one_thread():  # backward runs after selective_scan's own scope has ended
            return _ChunkedScan._backward(ctx, grad_y, grad_last)

    @staticmethod
    def _backward(ctx, grad_y, grad_last):
        u, dt, A, B, C, boundary = ctx.saved_tensors
        chunk = ctx.chunk
        L, b, G, N, dg = u.size(0), u.size(1), A.size(0), A.size(1), A.size(2)
        u, dt = u.view(L, b, G, 1, dg), dt.view(L, b, G, 1, dg)
        dtu = dt * u
        grad_y = u.new_zeros(L, b, G, 1, dg) if grad_y is None else _to_time_major(grad_y).view(L, b, G, 1, dg)

        # dL/dh at the end of the current chunk, flowing back from later chunks (or from last_state).
        carry = u.new_zeros(b, G, N, dg) if grad_last is None else _state_major(grad_last, G)
        grad_dtu = torch.empty_like(u)  # through delta_t * u_t * B_t
        grad_dt_decay = torch.empty_like(u)  # through exp(delta_t * A)
        grad_A = torch.zeros_like(A)
        grad_B = torch.empty_like(B)
        grad_C = torch.empty_like(C)
        decay = u.new_empty(min(chunk, L), b, G, N, dg)
        states = u.new_empty(min(chunk, L) + 1, b, G, N, dg)
        grad_h = torch.empty_like(decay)

        for c in range(boundary.size(0) - 2, -1, -1):
            s, e = c * chunk, min(c * chunk + chunk, L)
            a, g = decay[: e - s], grad_h[: e - s]
            states[0].copy_(boundary[c])
            _chunk_states(dt[s:e], dtu[s:e], A, B[s:e], a, states[: e - s + 1])
            h_prev, h = states[: e - s], states[1 : e - s + 1]

            # Reverse recurrence: g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}.
            torch.mul(grad_y[s:e], C[s:e].unsqueeze(-1), out=g)
            g[-1].add_(carry)
            a_steps, g_steps = a.unbind(0), g.unbind(0)
            for t in range(e - s - 2, -1, -1):
                g_steps[t].addcmul_(a_steps[t + 1], g_steps[t + 1])
            torch.mul(a_steps[0], g_steps[0], out=carry)

            # Contractions over the channels of a group (C, B) and over the state (delta * u).
            torch.matmul(grad_y[s:e], h.transpose(-1, -2), out=grad_C[s:e].unsqueeze(-2))
            torch.matmul(dtu[s:e], g.transpose(-1, -2), out=grad_B[s:e].unsqueeze(-2))
            torch.matmul(B[s:e].unsqueeze(-2), g, out=grad_dtu[s:e])

            # Through exp(delta_t A): dL/d(delta_t A) = g_t * h_{t-1} * exp(delta_t A), in the decay buffer.
            a.mul_(g).mul_(h_prev)
            torch.sum(torch.mul(a, A, out=h), dim=-2, keepdim=True, out=grad_dt_decay[s:e])
            grad_A.add_(a.mul_(dt[s:e]).sum(dim=(0, 1)))

        grad_u = _from_time_major((grad_dtu * dt).view(L, b, G * dg))
        grad_dt = _from_time_major(grad_dtu.mul_(u).add_(grad_dt_decay).view(L, b, G * dg))
        return grad_u, grad_dt, _channel_major(grad_A), _from_time_major(grad_B), _from_time_major(grad_C), None
