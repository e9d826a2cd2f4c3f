"""The pre-norm cross-attention block shared by the query-based fusions (resampler, sva)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polyvis.errors import ConfigError
from polyvis.models.fusion.common import FIELD


def check_heads(dim: int, heads: int) -> None:
    if dim % heads:
        raise ConfigError(
            f"{FIELD}.heads", f"{heads} does not divide dim {dim}; change heads or dim"
        )


class CrossAttentionBlock(nn.Module):
    """q <- q + MHA(LN(q), [LN(kv) | LN(q)]); q <- q + FFN(LN(q)) (pre-norm, GELU FFN).

    As in Flamingo's Perceiver resampler the queries are also keys, so a query can keep what it
    has; without that, a one-token window (sva) would make attention a constant 1.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int = 4):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Linear(dim * ffn_mult, dim)
        )

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        """q (B, Q, dim) attends over kv (B, S, dim)."""
        qn = self.norm_q(q)
        kv = torch.cat([self.norm_kv(kv), qn], dim=1)
        q = q + self.attn(qn, kv, kv, need_weights=False)[0]
        return q + self.ffn(self.norm_ffn(q))
