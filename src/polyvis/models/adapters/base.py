"""What every adapter (projector from fused features to the LLM's width) shares."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from polyvis.errors import ConfigError
from polyvis.models.adapters._grid import require_grid
from polyvis.registry import registry

ADAPTERS = registry("adapter")


class AdapterParams(BaseModel):
    """Options shared by all adapters; each adapter subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")
    type: str


class Adapter(nn.Module):
    """Base class: stores the constructor's arguments, then calls the subclass's `build()`.

    Subclasses set `Params` and implement `build()`, which creates the layers and returns the
    number of output tokens. forward(x) maps (B, in_tokens, in_dim) to (B, num_tokens, out_dim).
    `in_grid` is the (h, w) layout of the input tokens, or None when they are a plain sequence;
    subclasses with `needs_grid` refuse a plain sequence (naming model.adapter.type) and always
    see a checked (h, w).
    """

    Params: ClassVar[type[AdapterParams]] = AdapterParams
    needs_grid: ClassVar[bool] = False
    num_tokens: int

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        in_grid: tuple[int, int] | None,
        in_tokens: int,
        params: AdapterParams,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.in_grid = require_grid(in_grid, in_tokens, params.type) if self.needs_grid else in_grid
        self.in_tokens = in_tokens
        self.params = params
        self.num_tokens = self.build()

    def build(self) -> int:
        """Create the layers and return the number of output tokens.

        The order in which layers are created decides their initial weights under a seed (and
        the state-dict order), so it is part of an adapter's behaviour.
        """
        raise NotImplementedError


def check_heads(heads: int, width: int) -> None:
    """Attention heads must divide the width they split (error names model.adapter.heads)."""
    if width % heads:
        raise ConfigError(
            "model.adapter.heads", f"{heads} heads must divide the input width {width}"
        )


def position_embedding(tokens: int, dim: int) -> nn.Parameter:
    """A learned embedding per input token, (1, tokens, dim), truncated-normal with std 0.02."""
    emb = nn.Parameter(torch.empty(1, tokens, dim))
    nn.init.trunc_normal_(emb, std=0.02)
    return emb
