"""Grid helpers shared by the adapters that treat tokens as a 2-D feature map."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import BeforeValidator, Field

from polyvis.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]


def _square(v: object) -> object:
    return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v


# A pooled grid size: one int n for n x n, or [h, w]; always (h, w) once validated.
# (Not a Union: pydantic would report errors under branch names like `pool_grid.constrained-int`.)
GridSize = Annotated[tuple[PositiveInt, PositiveInt], BeforeValidator(_square)]


def require_grid(in_grid: tuple[int, int] | None, in_tokens: int, name: str) -> tuple[int, int]:
    """The input grid, or a ConfigError naming model.adapter.type when tokens are a plain sequence."""
    if in_grid is None:
        raise ConfigError(
            "model.adapter.type",
            f"{name!r} needs a spatial grid of tokens, but the fusion gives a plain sequence of "
            f"{in_tokens} tokens; use linear, mlp, transformer or perceiver, or a fusion that "
            "keeps the grid",
        )
    h, w = int(in_grid[0]), int(in_grid[1])
    if h * w != in_tokens:
        raise ConfigError(
            "model.adapter.type",
            f"{name!r} got a {h}x{w} grid but {in_tokens} tokens (expected {h * w})",
        )
    return h, w


def clamp_grid(size: tuple[int, int], in_grid: tuple[int, int]) -> tuple[int, int]:
    """A pooling target, never larger than the input grid (pooling must not upsample)."""
    return min(size[0], in_grid[0]), min(size[1], in_grid[1])


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, D) row-major tokens -> (B, D, h, w)."""
    b, _, d = x.shape
    return x.transpose(1, 2).reshape(b, d, grid[0], grid[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h*w, D) row-major tokens."""
    return x.flatten(2).transpose(1, 2)
