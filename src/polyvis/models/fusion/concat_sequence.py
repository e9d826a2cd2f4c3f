"""concat-sequence: append the encoders' token sequences, each tagged by a learned type embedding."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.errors import ConfigError
from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion, FusionParams
from polyvis.models.fusion.common import (
    FIELD,
    concat_layers,
    default_dim,
    in_width,
    require_encoders,
)


@FUSIONS.register("concat-sequence")
class ConcatSequenceFusion(Fusion):
    """[P_1(x_1) + t_1, ..., P_K(x_K) + t_K] along the sequence (OmniFusion variant 2, BRAVE).

    `project: false` skips the linear maps; then every encoder must already have width `dim`.
    No grid alignment is needed: each encoder keeps its own token count. A tiled encoder's views
    are fused one by one, each as an image of its own (docs/fusion.md).
    """

    tile_rule = "views"
    positional = False  # takes a detector's object queries (models/detector.py)

    class Params(FusionParams):
        dim: PositiveInt | None = None
        project: bool = True
        type_embedding: bool = True

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.out_dim = default_dim(encoders, params.dim)
        self.num_tokens = sum(e.num_tokens for e in encoders)
        # one encoder is still a spatial grid (object queries are not); several sequences are not
        self.grid = encoders[0].grid if len(encoders) == 1 and encoders[0].spatial else None
        if params.project:
            self.proj = nn.ModuleList(nn.Linear(in_width(e), self.out_dim) for e in encoders)
        else:
            self.proj = None
            for e in encoders:
                if in_width(e) != self.out_dim:
                    raise ConfigError(
                        f"{FIELD}.project",
                        f"false needs every encoder at width {self.out_dim}, but {e.name!r} "
                        f"has {in_width(e)} (dim x layers); set project: true",
                    )
        self.type_embed = (
            nn.Parameter(torch.randn(len(encoders), self.out_dim) * 0.02)
            if params.type_embedding
            else None
        )

    def forward(self, feats: list[list[Tensor]]) -> Tensor:
        xs = concat_layers(feats, self.encoders)
        if self.proj is not None:
            xs = [p(x) for p, x in zip(self.proj, xs)]
        if self.type_embed is not None:
            xs = [x + self.type_embed[k].to(x.dtype) for k, x in enumerate(xs)]
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
