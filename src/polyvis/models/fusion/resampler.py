"""resampler: a fixed number of learned queries cross-attend over all encoders' tokens."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.models.fusion.attention import CrossAttentionBlock, check_heads
from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion, FusionParams, square_side
from polyvis.models.fusion.common import (
    concat_layers,
    default_dim,
    in_width,
    require_encoders,
)


@FUSIONS.register("resampler")
class ResamplerFusion(Fusion):
    """Perceiver-style resampler (Flamingo, MEQ-Former-lite) over the encoders' joint token set.

    Each encoder is mapped to `dim` and tagged with a learned type embedding and (by default) a
    learned position embedding per token, so the queries can tell encoders and places apart.
    `depth` blocks of pre-norm cross-attention + FFN, then a final LayerNorm. The output is
    `num_queries` tokens, laid out as a square grid when num_queries is a perfect square.

    A tiled encoder's views (thumbnail, tiles) join the keys as one longer sequence, each view
    with the same position embeddings plus a learned embedding of its slot (`tile_embed`), so
    the output stays `num_queries` tokens however many tiles an image has.
    """

    tile_rule = "sequence"
    positional = False  # takes a detector's object queries (models/detector.py)

    class Params(FusionParams):
        num_queries: PositiveInt = 64
        dim: PositiveInt | None = None
        heads: PositiveInt = 8
        depth: PositiveInt = 2
        ffn_mult: PositiveInt = 4
        pos_embed: bool = True

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        dim = default_dim(encoders, params.dim)
        check_heads(dim, params.heads)
        self.out_dim = dim
        self.num_tokens = params.num_queries
        side = square_side(params.num_queries)
        self.grid = (side, side) if side is not None else None
        self.queries = nn.Parameter(torch.randn(params.num_queries, dim) * 0.02)
        self.proj = nn.ModuleList(nn.Linear(in_width(e), dim) for e in encoders)
        self.type_embed = nn.Parameter(torch.randn(len(encoders), dim) * 0.02)
        self.pos_embed = (
            nn.ParameterList(nn.Parameter(torch.randn(e.num_tokens, dim) * 0.02) for e in encoders)
            if params.pos_embed
            else None
        )
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, params.heads, params.ffn_mult) for _ in range(params.depth)
        )
        self.norm = nn.LayerNorm(dim)
        # made last, and only for tiled encoders: untiled models keep their parameters and init
        self.tile_embed = nn.ParameterDict(
            {
                str(k): nn.Parameter(torch.randn(e.views, dim) * 0.02)
                for k, e in enumerate(encoders)
                if e.views > 1
            }
        )

    def forward(self, feats: list[list[Tensor]], views: dict[int, Tensor] | None = None) -> Tensor:
        """views: for a tiled encoder k, the slot of each view whose tokens feats[k] holds one
        view after the other, (B, V * N_k, D_k)."""
        views = views or {}
        xs = concat_layers(feats, self._stacked(views) if views else self.encoders)
        kv = []
        for k, (p, x) in enumerate(zip(self.proj, xs)):
            y = p(x) + self.type_embed[k].to(x.dtype)
            n_views = len(views[k]) if k in views else 1
            if self.pos_embed is not None:
                pos = self.pos_embed[k]
                y = y + (pos.repeat(n_views, 1) if n_views > 1 else pos).to(x.dtype)
            if k in views and str(k) in self.tile_embed:
                slot = self.tile_embed[str(k)][views[k]]
                y = y + slot.repeat_interleave(self.encoders[k].num_tokens, 0).to(x.dtype)
            kv.append(y)
        kv = torch.cat(kv, dim=1)
        q = self.queries.to(kv.dtype).unsqueeze(0).expand(kv.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, kv)
        return self.norm(q)

    def _stacked(self, views: dict[int, Tensor]) -> list[EncoderInfo]:
        """The encoders as the joined views look: V grids stacked one above the other."""
        return [
            EncoderInfo(e.name, e.dim, (len(views[k]) * e.grid[0], e.grid[1]), e.num_layers)
            if k in views
            else e
            for k, e in enumerate(self.encoders)
        ]
