"""What every fusion method shares: encoder descriptions, the option model, grid alignment."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from polyvis.errors import ConfigError
from polyvis.registry import registry

FUSIONS = registry("fusion")
QUERY_FIELD = "model.fusion.type"  # where an encoder the method cannot fuse is refused


@dataclass(frozen=True)
class EncoderInfo:
    """What a fusion method needs to know about one encoder's output."""

    name: str
    dim: int  # hidden width D_k of one layer
    grid: tuple[int, int]  # (h, w) patch grid; tokens N_k = h * w
    num_layers: int  # how many layers were selected (L_k)
    # A tiled encoder's view slots (thumbnail + tile canvas, models/tiling.py); 1 when untiled.
    views: int = 1
    # False for a detector's object queries (models/detector.py): tokens with no place on a grid;
    # `grid` is then (1, queries).
    spatial: bool = True

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class FusionParams(BaseModel):
    """Options shared by all methods; each method subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")
    type: str


class Fusion(nn.Module):
    """Base class. Subclasses set `Params`, and in __init__ set out_dim, num_tokens, grid.

    forward(feats) takes, per encoder, the list of its selected layers' hidden states,
    each (B, N_k, D_k), and returns (B, num_tokens, out_dim).
    `grid` is the output's (h, w) when the output is a spatial grid, else None.

    `tile_rule` says how a tiled encoder's views meet the fusion (models/tiling.py,
    docs/fusion.md): "stitch" (forward also takes `scale=(rows, cols)`: every grid, the
    encoders' and the output's, multiplied by it), "views" (each view fused as an image of its
    own) or "sequence" (the views' tokens joined into one sequence).
    """

    Params: ClassVar[type[FusionParams]] = FusionParams
    tile_rule: ClassVar[str] = "stitch"
    # Whether the method combines encoders position by position on a grid; the ones that do not
    # (False) take a detector's object queries too.
    positional: ClassVar[bool] = True
    out_dim: int
    num_tokens: int
    grid: tuple[int, int] | None

    def __init__(self, encoders: list[EncoderInfo], params: FusionParams):
        super().__init__()
        self.encoders = list(encoders)
        self.params = params
        queries = [e.name for e in encoders if not e.spatial]
        if queries:
            tiled = any(e.views > 1 for e in encoders)
            problem = self.object_query_problem(params.type, queries[0], tiled)
            if problem:
                raise ConfigError(QUERY_FIELD, problem)

    @classmethod
    def object_query_problem(cls, name: str, detector: str, tiled: bool) -> str | None:
        """Why this method (registered as `name`) cannot fuse detector encoder `detector`'s object
        queries (beside a tiled encoder when `tiled`), or None when it can. The config check and
        the constructor both ask, so the error reads the same."""
        takers = [n for n in FUSIONS.names() if not FUSIONS.get(n).positional]
        if cls.positional:
            return (
                f"{name} aligns encoders position by position; detector encoder {detector!r} "
                f"gives object queries, use {' or '.join(takers)}"
            )
        if tiled and cls.tile_rule == "views":
            others = [n for n in takers if FUSIONS.get(n).tile_rule != "views"]
            return (
                f"{name} fuses each tile beside the other encoders' view of its region; detector "
                f"encoder {detector!r} gives object queries, which have no region: use "
                f"{' or '.join(others)} with a tiled encoder"
            )
        return None


def tokens_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, D) -> (B, D, h, w)."""
    b, n, d = x.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"cannot view {n} tokens as a {h}x{w} grid")
    return x.transpose(1, 2).reshape(b, d, h, w)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h*w, D)."""
    return x.flatten(2).transpose(1, 2)


AlignPolicy = Literal["interpolate", "pool", "pad"]


def align_tokens(
    x: torch.Tensor, src: tuple[int, int], dst: tuple[int, int], policy: str
) -> torch.Tensor:
    """Bring (B, N_src, D) tokens on grid `src` to grid `dst` by the declared policy.

    interpolate: bilinear resize of the feature map (Eagle); pool: adaptive average pooling
    (only shrinks); pad: keep the sequence and zero-pad or truncate it to dst's token count
    (OmniFusion's sum of sequences of different lengths).
    """
    if tuple(src) == tuple(dst):
        return x
    if policy == "pad":
        n_dst = dst[0] * dst[1]
        n = x.shape[1]
        if n >= n_dst:
            return x[:, :n_dst]
        return F.pad(x, (0, 0, 0, n_dst - n))
    fmap = tokens_to_grid(x, src)
    if policy == "interpolate":
        fmap = F.interpolate(fmap, size=dst, mode="bilinear", align_corners=False)
    elif policy == "pool":
        if dst[0] > src[0] or dst[1] > src[1]:
            raise ValueError(f"pool alignment cannot grow grid {src} to {dst}; use interpolate")
        fmap = F.adaptive_avg_pool2d(fmap, dst)
    else:
        raise ValueError(f"unknown grid alignment policy {policy!r}")
    return grid_to_tokens(fmap)


def square_side(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None
