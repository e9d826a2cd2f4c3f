"""concat-channel: align the grids, then concatenate the encoders along the feature axis."""

from __future__ import annotations

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import Tensor, nn

from polyvis.errors import ConfigError
from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion
from polyvis.models.fusion.common import (
    FIELD,
    ONE,
    AlignParams,
    Scale,
    align_all,
    concat_layers,
    in_width,
    require_encoders,
    resolve_grid,
    scale_grid,
    scaled,
)


@FUSIONS.register("concat-channel")
class ConcatChannelFusion(Fusion):
    """[x_1 | ... | x_K] per grid position (Prismatic, Eagle); with `proj_dim` each encoder first
    gets its own linear map to proj_dim (Vary: 1024 -> 2048 each).

    With one encoder and no proj_dim it is the identity, so a one-encoder model is plain LLaVA.

    `scales` (one fixed factor per encoder) balances encoders whose features differ in size:
    with Adam every weight of the adapter moves at the same rate, so an encoder whose features
    are k times larger moves the adapter's output k times faster and can drown the others.
    """

    class Params(AlignParams):
        proj_dim: PositiveInt | None = None
        scales: list[PositiveFloat] | None = None

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.grid = resolve_grid(encoders, params.grid, params.align)
        self.num_tokens = self.grid[0] * self.grid[1]
        if params.scales is not None and len(params.scales) != len(encoders):
            raise ConfigError(
                f"{FIELD}.scales", f"has {len(params.scales)} values for {len(encoders)} encoders"
            )
        if params.proj_dim is None:
            self.proj = None
            self.out_dim = sum(in_width(e) for e in encoders)
        else:
            self.proj = nn.ModuleList(nn.Linear(in_width(e), params.proj_dim) for e in encoders)
            self.out_dim = params.proj_dim * len(encoders)

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        encoders = scaled(self.encoders, scale)
        xs = concat_layers(feats, encoders)
        if self.params.scales is not None:
            xs = [x * s for x, s in zip(xs, self.params.scales)]
        if self.proj is not None:
            # project first: affine maps commute with interpolate/pool, and pad leaves zeros
            xs = [p(x) for p, x in zip(self.proj, xs)]
        xs = align_all(xs, encoders, scale_grid(self.grid, scale), self.params.align)
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=-1)
