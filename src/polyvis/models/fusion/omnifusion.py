"""omnifusion: OmniFusion's "projection & summation" over every selected layer of every encoder."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.models.fusion.base import FUSIONS, AlignPolicy, EncoderInfo, Fusion
from polyvis.models.fusion.common import (
    ONE,
    AlignParams,
    Scale,
    align_all,
    check_feats,
    require_encoders,
    resolve_grid,
    scale_grid,
    scaled,
)


@FUSIONS.register("omnifusion")
class OmniFusion(Fusion):
    """y_k = sum_l softmax(a_k)_l * Linear_kl(LayerNorm_kl(x_kl)); z = Linear(GELU(sum_k y_k)).

    Layers are not concatenated here: each gets its own LayerNorm and linear map to `dim`
    (default the widest single layer). Encoders with one selected layer have no layer weights.
    The encoders' sequences are summed after align: pad (default, as OmniFusion zero-pads the
    shorter sequence) or interpolate / pool to a common grid.
    """

    class Params(AlignParams):
        align: AlignPolicy = "pad"
        dim: PositiveInt | None = None

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.out_dim = params.dim if params.dim is not None else max(e.dim for e in encoders)
        self.grid = resolve_grid(encoders, params.grid, params.align)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.layer_proj = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.LayerNorm(e.dim), nn.Linear(e.dim, self.out_dim))
                for _ in range(e.num_layers)
            )
            for e in encoders
        )
        # zeros: the weighted sum starts as the plain mean over layers
        self.layer_logits = nn.ParameterDict(
            {
                str(k): nn.Parameter(torch.zeros(e.num_layers))
                for k, e in enumerate(encoders)
                if e.num_layers > 1
            }
        )
        self.out = nn.Sequential(nn.GELU(), nn.Linear(self.out_dim, self.out_dim))

    def layer_weights(self, k: int) -> Tensor:
        """Softmax weights over encoder k's selected layers (sum to 1)."""
        key = str(k)
        if key in self.layer_logits:
            return self.layer_logits[key].softmax(dim=0)
        return torch.ones(1, device=self.out[1].weight.device)

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        encoders = scaled(self.encoders, scale)
        check_feats(feats, encoders)
        ys = []
        for k, (layers, projs) in enumerate(zip(feats, self.layer_proj)):
            stacked = torch.stack([p(x) for p, x in zip(projs, layers)])  # (L, B, N, dim)
            w = self.layer_weights(k).to(stacked.dtype)
            ys.append(torch.einsum("l,lbnd->bnd", w, stacked))
        ys = align_all(ys, encoders, scale_grid(self.grid, scale), self.params.align)
        return self.out(torch.stack(ys).sum(0))
