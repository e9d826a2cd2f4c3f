"""`linear`: one linear map per token (LLaVA-1.0 projector)."""

from __future__ import annotations

import torch
from torch import nn

from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams


@ADAPTERS.register("linear")
class LinearAdapter(Adapter):
    """y = W x + b for every token; keeps the token count."""

    class Params(AdapterParams):
        bias: bool = True

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        in_grid: tuple[int, int] | None,
        in_tokens: int,
        params: Params,
    ):
        super().__init__(in_dim, out_dim, in_grid, in_tokens, params)
        self.proj = nn.Linear(in_dim, out_dim, bias=params.bias)
        self.num_tokens = in_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
