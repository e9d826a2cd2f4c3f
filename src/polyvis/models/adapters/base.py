"""What every adapter (projector from fused features to the LLM's width) shares."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from polyvis.registry import registry

ADAPTERS = registry("adapter")


class AdapterParams(BaseModel):
    """Options shared by all adapters; each adapter subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")
    type: str


class Adapter(nn.Module):
    """Base class. Subclasses set `Params`, and in __init__ set `num_tokens`.

    forward(x) maps (B, in_tokens, in_dim) to (B, num_tokens, out_dim).
    `in_grid` is the (h, w) layout of the input tokens, or None when they are a plain sequence.
    """

    Params: ClassVar[type[AdapterParams]] = AdapterParams
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
        self.in_grid = in_grid
        self.in_tokens = in_tokens
        self.params = params
