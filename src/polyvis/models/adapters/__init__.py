"""Adapters: project fused visual tokens into the language model's embedding space."""

from __future__ import annotations

from typing import Any

# Importing the modules registers their adapters.
from polyvis.models.adapters import (  # noqa: F401
    cabstractor,
    ldp,
    linear,
    mlp,
    perceiver,
    pixel_shuffle,
    transformer,
)
from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams
from polyvis.options import resolve_typed

__all__ = ["ADAPTERS", "Adapter", "AdapterParams", "build_adapter"]


def build_adapter(
    cfg: dict[str, Any],
    in_dim: int,
    out_dim: int,
    in_grid: tuple[int, int] | None,
    in_tokens: int,
    field: str = "model.adapter",
) -> Adapter:
    """Build the adapter named by cfg['type']; errors name `field`."""
    cls, params = resolve_typed(ADAPTERS, cfg, field)
    return cls(in_dim, out_dim, in_grid, in_tokens, params)
