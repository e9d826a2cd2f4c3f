"""sva: Cambrian-1's Spatial Vision Aggregator, a query grid that attends to local windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.models.fusion.attention import CrossAttentionBlock, check_heads
from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion, FusionParams, tokens_to_grid
from polyvis.models.fusion.common import (
    ONE,
    Scale,
    concat_layers,
    default_dim,
    in_width,
    require_encoders,
    scale_grid,
    scaled,
)


@FUSIONS.register("sva")
class SVAFusion(Fusion):
    """A learned Lh x Lw query grid; query (i, j) cross-attends only to window (i, j) of every
    encoder, the window being that encoder's grid divided by the query grid.

    An encoder grid that is not a multiple of the query grid is first resized (bilinear) to the
    next multiple up, (ceil(h / Lh) * Lh, ceil(w / Lw) * Lw), as Cambrian-1 does. Keys and values
    are each encoder's tokens after its own LayerNorm + linear map to `dim`, plus a learned
    position embedding inside the window. Cambrian also feeds every query a global mean feature;
    that is left out here so that each output token depends on its window only.
    """

    class Params(FusionParams):
        grid: tuple[PositiveInt, PositiveInt] | None = None
        dim: PositiveInt | None = None
        heads: PositiveInt = 8
        depth: PositiveInt = 1
        ffn_mult: PositiveInt = 4

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        dim = default_dim(encoders, params.dim)
        check_heads(dim, params.heads)
        if params.grid is None:
            grid = min((e.grid for e in encoders), key=lambda g: (g[0] * g[1], g))
        else:
            grid = (int(params.grid[0]), int(params.grid[1]))
        self.grid = grid
        self.out_dim = dim
        self.num_tokens = grid[0] * grid[1]
        # per encoder: window size (mh, mw) in its (possibly resized) grid
        self.windows = [
            (math.ceil(e.grid[0] / grid[0]), math.ceil(e.grid[1] / grid[1])) for e in encoders
        ]
        self.proj = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(in_width(e)), nn.Linear(in_width(e), dim)) for e in encoders
        )
        # a one-token window needs no position inside it
        self.window_pos = nn.ParameterDict(
            {
                str(k): nn.Parameter(torch.randn(mh * mw, dim) * 0.02)
                for k, (mh, mw) in enumerate(self.windows)
                if mh * mw > 1
            }
        )
        self.queries = nn.Parameter(torch.randn(self.num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, params.heads, params.ffn_mult) for _ in range(params.depth)
        )

    def windowed(self, k: int, y: Tensor, scale: Scale = ONE) -> Tensor:
        """(B, N_k, dim) -> (B * Lh * Lw, mh * mw, dim): the tokens of each query's window.

        With a `scale`, the encoder's grid and the query grid are both multiplied by it, so the
        windows keep their size.
        """
        (lh, lw), (mh, mw) = scale_grid(self.grid, scale), self.windows[k]
        enc_grid = scale_grid(self.encoders[k].grid, scale)
        fmap = tokens_to_grid(y, enc_grid)
        if (mh * lh, mw * lw) != enc_grid:
            fmap = F.interpolate(
                fmap, size=(mh * lh, mw * lw), mode="bilinear", align_corners=False
            )
        b, d = fmap.shape[:2]
        win = fmap.reshape(b, d, lh, mh, lw, mw).permute(0, 2, 4, 3, 5, 1)
        win = win.reshape(b * lh * lw, mh * mw, d)
        if str(k) in self.window_pos:
            win = win + self.window_pos[str(k)].to(win.dtype)
        return win

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        xs = concat_layers(feats, scaled(self.encoders, scale))
        kv = torch.cat(
            [self.windowed(k, p(x), scale) for k, (p, x) in enumerate(zip(self.proj, xs))], 1
        )
        b = xs[0].shape[0]
        queries = self.queries
        if tuple(scale) != ONE:  # every cell of the multiplied grid asks its own window the same
            lh, lw = self.grid
            queries = queries.view(lh, lw, -1).repeat(scale[0], scale[1], 1).flatten(0, 1)
        q = queries.to(kv.dtype).unsqueeze(0).expand(b, -1, -1).reshape(-1, 1, self.out_dim)
        for block in self.blocks:
            q = block(q, kv)
        return q.reshape(b, queries.shape[0], self.out_dim)
