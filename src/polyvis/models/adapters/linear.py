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

    params: Params

    def build(self) -> int:
        self.proj = nn.Linear(self.in_dim, self.out_dim, bias=self.params.bias)
        return self.in_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
