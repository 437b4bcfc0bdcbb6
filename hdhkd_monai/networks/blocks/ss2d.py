"""SS2D: the VMamba 2D selective-scan token mixer used inside the Mamba UpNet.

May import ``networks.blocks``, ``networks.layers`` and the layers below (``data``, ``distill``, ``pretrained``, the
shared leaves); never ``networks.nets``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.selective_scan import selective_scan
from ..layers.simple import plain_tensor

__all__ = ["SS2D"]


class SS2D(nn.Module):
    """Four-direction 2D selective scan (VMamba SS2D).

    The map is projected to ``2*d_inner`` channels and split into a scan branch ``x`` and a gate ``z``. ``x`` passes a
    depthwise convolution and SiLU, then is read as four sequences of length ``L = H*W``: row-major, column-major and
    both reversed. Each direction has its own input-dependent ``delta`` (a rank-``dt_rank`` projection, softplus inside
    the scan), ``B`` and ``C`` (``d_state`` each), and its own ``A`` (log-parametrised, S4D-real init) and ``D``. The
    four outputs are put back in row-major order and summed, layer-normalised, gated by ``SiLU(z)`` and projected back
    to ``d_model``.

    Args:
        d_model: channels of the input and output tokens.
        d_state: state size ``N`` of each scan channel.
        expand: ``d_inner = expand * d_model``, the width of the scan.
        dt_rank: rank of the ``delta`` projection; ``None`` gives ``ceil(d_model / 16)`` as in VMamba.
        d_conv: kernel of the depthwise convolution before the scan.
        directions: 4 (row-major, column-major, both reversed) or 1 (row-major only, which makes the scan causal in
            row-major order; used by the tests).
        dt_min, dt_max, dt_init_floor: ``delta`` starts log-uniform in ``[dt_min, dt_max]`` (clamped below at
            ``dt_init_floor``) through the bias of the ``delta`` projection.
        scan_backend: ``backend`` passed to :func:`~hdhkd_monai.networks.layers.selective_scan.selective_scan`.

    forward: ``[B, H, W, d_model] -> [B, H, W, d_model]`` (a ``MetaTensor`` input gives a plain tensor).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        dt_rank: int | None = None,
        d_conv: int = 3,
        directions: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if directions not in (1, 4):
            raise ValueError(f"directions must be 1 or 4, got {directions}")
        d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.d_inner, self.d_state, self.dt_rank, self.directions = d_inner, d_state, dt_rank, directions
        self.scan_backend = scan_backend
        k = directions

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner)
        # Per-direction projections, stored stacked so that one einsum serves all directions.
        bound = d_inner**-0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank).uniform_(-(dt_rank**-0.5), dt_rank**-0.5))
        # delta = softplus(W x + bias) starts log-uniform in [dt_min, dt_max]: bias = softplus^-1(dt).
        dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A[:, n] = -(n + 1) for every channel.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, d] -> [B, L, K, d]``: the K scan orders of the map, token-major (the layout the scan reads
        without a transpose)."""
        b, h, w, d = x.shape
        rows = x.reshape(b, h * w, d)
        if self.directions == 1:
            return rows.unsqueeze(2)
        cols = x.transpose(1, 2).reshape(b, h * w, d)
        return torch.stack([rows, cols, rows.flip(1), cols.flip(1)], dim=2)

    def _cross_merge(self, ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``[L, B, K, d] -> [B, H, W, d]``: every direction back in row-major order, summed. (The batch size is left
        as -1 in the views: an ONNX trace would freeze a read one.)"""
        d = ys.shape[3]
        if self.directions == 1:
            return ys[:, :, 0].reshape(h, w, -1, d).permute(2, 0, 1, 3)
        rows = ys[:, :, 0] + ys[:, :, 2].flip(0)
        cols = ys[:, :, 1] + ys[:, :, 3].flip(0)
        return (rows.view(h, w, -1, d) + cols.view(w, h, -1, d).transpose(0, 1)).permute(2, 0, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = plain_tensor(x)
        b, h, w, _ = x.shape
        k, d, n, r = self.directions, self.d_inner, self.d_state, self.dt_rank
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        xs = self._cross_scan(x)  # [B, L, K, d]
        x_dbl = torch.einsum("blkd,kcd->blkc", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=-1)
        # One projection per direction, stacked: einsum would give [K, B, L, d] storage and need a transpose.
        dts = torch.stack([F.linear(dts[:, :, i], self.dt_proj_weight[i]) for i in range(k)], dim=2)
        # The scan takes [B, channels, L] tensors; these views keep the token-major storage, which it reads as is.
        ys = selective_scan(
            xs.flatten(2).transpose(1, 2),
            dts.flatten(2).transpose(1, 2),
            -torch.exp(self.A_log),
            bs.permute(0, 2, 3, 1),
            cs.permute(0, 2, 3, 1),
            self.D,
            delta_bias=self.dt_proj_bias.reshape(-1),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        y = self._cross_merge(ys.permute(2, 0, 1).unflatten(-1, (k, d)), h, w)
        return self.out_proj(self.out_norm(y) * F.silu(z))
