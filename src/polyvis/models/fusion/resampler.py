"""resampler: a fixed number of learned queries cross-attend over all encoders' tokens."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.models.fusion.attention import CrossAttentionBlock, check_heads
from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion, FusionParams, square_side
from polyvis.models.fusion.common import concat_layers, default_dim, in_width, require_encoders


@FUSIONS.register("resampler")
class ResamplerFusion(Fusion):
    """Perceiver-style resampler (Flamingo, MEQ-Former-lite) over the encoders' joint token set.

    Each encoder is mapped to `dim` and tagged with a learned type embedding and (by default) a
    learned position embedding per token, so the queries can tell encoders and places apart.
    `depth` blocks of pre-norm cross-attention + FFN, then a final LayerNorm. The output is
    `num_queries` tokens, laid out as a square grid when num_queries is a perfect square.
    """

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

    def forward(self, feats: list[list[Tensor]]) -> Tensor:
        xs = concat_layers(feats, self.encoders)
        kv = []
        for k, (p, x) in enumerate(zip(self.proj, xs)):
            y = p(x) + self.type_embed[k].to(x.dtype)
            if self.pos_embed is not None:
                y = y + self.pos_embed[k].to(x.dtype)
            kv.append(y)
        kv = torch.cat(kv, dim=1)
        q = self.queries.to(kv.dtype).unsqueeze(0).expand(kv.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, kv)
        return self.norm(q)
