"""`perceiver`: a Flamingo-style Perceiver Resampler, learned latents cross-attending to the tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from polyvis.models.adapters.base import (
    ADAPTERS,
    Adapter,
    AdapterParams,
    check_heads,
    position_embedding,
)


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs; latents] (Flamingo: keys include the latents themselves)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b, n, d = latents.shape
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, heads, L, d/heads)
            return t.reshape(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Sequential):
    """LayerNorm -> Linear(d, mult*d) -> GELU -> Linear(mult*d, d), no biases (Flamingo)."""

    def __init__(self, dim: int, mult: int):
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        )


@ADAPTERS.register("perceiver")
class PerceiverAdapter(Adapter):
    """`num_latents` learned queries of width in_dim; per layer latents += attn(x, latents) and
    latents += ff(latents); then LayerNorm and Linear(in_dim, out_dim). Outputs num_latents
    tokens whatever the input length, so it takes grids and plain sequences alike.

    `pos_emb` adds a learned embedding per input token (off by default as in Flamingo, whose
    encoder features already carry position).
    """

    class Params(AdapterParams):
        num_latents: int = Field(64, ge=1)
        depth: int = Field(2, ge=1)
        heads: int = Field(4, ge=1)
        ff_mult: int = Field(4, ge=1)
        pos_emb: bool = False

    params: Params

    def build(self) -> int:
        p, dim = self.params, self.in_dim
        check_heads(p.heads, dim)
        self.latents = nn.Parameter(torch.randn(p.num_latents, dim))
        self.pos_emb = position_embedding(self.in_tokens, dim) if p.pos_emb else None
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, p.heads), FeedForward(dim, p.ff_mult)])
            for _ in range(p.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, self.out_dim)
        return p.num_latents

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_emb is not None:
            x = x + self.pos_emb
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.proj(self.norm(latents))
