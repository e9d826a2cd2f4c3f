"""interleave: each encoder through its own linear map, tokens interleaved in spatial order."""

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


@FUSIONS.register("interleave")
class InterleaveFusion(Fusion):
    """I-MoF (Eyes Wide Shut): the tokens come out as [e1_t1, e2_t1, ..., e1_t2, e2_t2, ...].

    Every encoder is mapped to `dim` and aligned to the common grid first, so the k-th token of
    each position describes the same image region. The output is a sequence of K * h * w tokens.
    """

    class Params(AlignParams):
        dim: PositiveInt | None = None

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.out_dim = default_dim(encoders, params.dim)
        grid = resolve_grid(encoders, params.grid, params.align)
        self.align_grid = grid
        self.num_tokens = len(encoders) * grid[0] * grid[1]
        self.grid = grid if len(encoders) == 1 else None
        self.proj = nn.ModuleList(nn.Linear(in_width(e), self.out_dim) for e in encoders)

    def forward(self, feats: list[list[Tensor]]) -> Tensor:
        xs = concat_layers(feats, self.encoders)
        ys = [p(x) for p, x in zip(self.proj, xs)]
        ys = align_all(ys, self.encoders, self.align_grid, self.params.align)
        b, n, d = ys[0].shape
        # (B, N, K, d) -> (B, N*K, d): position-major, encoder-minor
        return torch.stack(ys, dim=2).reshape(b, n * len(ys), d)
