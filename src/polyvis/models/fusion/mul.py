"""mul: the element-wise product of the encoders after a linear map each, times a learned scale."""

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


@FUSIONS.register("mul")
class MulFusion(Fusion):
    """z = w ⊙ prod_k P_k(x_k) on a common grid; w a per-channel scale initialised to 1."""

    class Params(AlignParams):
        dim: PositiveInt | None = None

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.out_dim = default_dim(encoders, params.dim)
        self.grid = resolve_grid(encoders, params.grid, params.align)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.proj = nn.ModuleList(nn.Linear(in_width(e), self.out_dim) for e in encoders)
        self.scale = nn.Parameter(torch.ones(self.out_dim))

    def forward(self, feats: list[list[Tensor]]) -> Tensor:
        xs = concat_layers(feats, self.encoders)
        # project first: affine maps commute with interpolate/pool, and pad leaves zeros
        ys = [p(x) for p, x in zip(self.proj, xs)]
        ys = align_all(ys, self.encoders, self.grid, self.params.align)
        out = ys[0]
        for y in ys[1:]:
            out = out * y
        return out * self.scale
