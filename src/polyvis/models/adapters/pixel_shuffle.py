"""`pixel-shuffle`: nanoVLM / Idefics3 space-to-depth token merging, then a linear map."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from polyvis.errors import ConfigError
from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams


def pixel_shuffle(x: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """(B, h*w, D) -> (B, (h/r)*(w/r), D*r*r), each output token one r x r block of neighbours.

    Output token (i, j) (row-major over the (h/r, w/r) grid) holds the block's tokens in
    row-major order: features [(a*r + b)*D : (a*r + b + 1)*D] come from input (i*r + a, j*r + b).
    This is nanoVLM's ordering.
    """
    b, _, d = x.shape
    h, w = grid
    x = x.reshape(b, h // r, r, w // r, r, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // r) * (w // r), d * r * r)


@ADAPTERS.register("pixel-shuffle")
class PixelShuffleAdapter(Adapter):
    """Merge every `factor` x `factor` block of tokens into one (r^2 fewer tokens, r^2 wider),
    then Linear(in_dim * r^2, out_dim), without bias as in nanoVLM's modality projector."""

    class Params(AdapterParams):
        factor: int = Field(2, ge=1)

    needs_grid = True
    params: Params

    def build(self) -> int:
        h, w = self.in_grid
        r = self.params.factor
        if h % r or w % r:
            raise ConfigError(
                "model.adapter.factor",
                f"the {h}x{w} token grid is not divisible by factor {r}; use a factor that "
                "divides both sides, or a model.fusion.grid that it divides",
            )
        self.proj = nn.Linear(self.in_dim * r * r, self.out_dim, bias=False)
        return self.in_tokens // (r * r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(x, self.in_grid, self.params.factor))
