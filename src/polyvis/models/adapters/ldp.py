"""`ldp`: MobileVLM V2's lightweight downsample projector (LDPv2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyvis.models.adapters._grid import (
    GridSize,
    clamp_grid,
    map_to_tokens,
    tokens_to_map,
)
from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams


@ADAPTERS.register("ldp")
class LDPAdapter(Adapter):
    """MLP (Linear -> GELU -> Linear to out_dim) -> adaptive average pool to `pool_grid`
    -> depthwise 3x3 conv added back to its input (position injection, PEG).

    The pool target is clamped to the input grid, so an 8x8 input with the default 12 stays 8x8.
    MobileVLM's `LDPNetV2Projector` keys map as `mlp.mlp.{0,2}` -> `mlp.{0,2}` and
    `peg.peg.0` -> `peg`.
    """

    class Params(AdapterParams):
        pool_grid: GridSize = (12, 12)

    needs_grid = True
    params: Params

    def build(self) -> int:
        d = self.out_dim
        self.pool_grid = clamp_grid(self.params.pool_grid, self.in_grid)
        self.mlp = nn.Sequential(nn.Linear(self.in_dim, d), nn.GELU(), nn.Linear(d, d))
        self.peg = nn.Conv2d(d, d, 3, 1, 1, bias=True, groups=d)
        return self.pool_grid[0] * self.pool_grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tokens_to_map(self.mlp(x), self.in_grid)
        x = F.adaptive_avg_pool2d(x, self.pool_grid)
        x = self.peg(x) + x
        return map_to_tokens(x)
