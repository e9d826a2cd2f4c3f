"""gated: a per-token softmax gate over the encoders (a soft mixture of experts)."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion
from polyvis.models.fusion.common import (
    AlignParams,
    align_all,
    concat_layers,
    default_dim,
    in_width,
    require_encoders,
    resolve_grid,
)


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """g = softmax_k(W [x_1 | ... | x_K]) per token; z = sum_k g_k * P_k(x_k) on a common grid.

    W starts at zero, so training starts from the plain average of the projections. With one
    encoder the gate would be constantly 1, so none is built.
    """

    class Params(AlignParams):
        dim: PositiveInt | None = None

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.out_dim = default_dim(encoders, params.dim)
        self.grid = resolve_grid(encoders, params.grid, params.align)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.proj = nn.ModuleList(nn.Linear(in_width(e), self.out_dim) for e in encoders)
        self.gate: nn.Linear | None = None
        if len(encoders) > 1:
            self.gate = nn.Linear(sum(in_width(e) for e in encoders), len(encoders))
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def gates(self, xs: list[Tensor]) -> Tensor:
        """(B, N, K) gate weights from the aligned raw inputs; they sum to 1 over K."""
        if self.gate is None:
            return xs[0].new_ones(*xs[0].shape[:2], 1)
        return self.gate(torch.cat(xs, dim=-1)).softmax(dim=-1)

    def forward(self, feats: list[list[Tensor]]) -> Tensor:
        xs = concat_layers(feats, self.encoders)
        policy = self.params.align
        g = self.gates(align_all(xs, self.encoders, self.grid, policy))
        # project first: affine maps commute with interpolate/pool, and pad leaves zeros
        ys = align_all([p(x) for p, x in zip(self.proj, xs)], self.encoders, self.grid, policy)
        return torch.einsum("bnk,kbnd->bnd", g, torch.stack(ys))
