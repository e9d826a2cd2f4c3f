"""gated: a per-token softmax gate over the encoders (a soft mixture of experts)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polyvis.models.fusion.base import FUSIONS, EncoderInfo
from polyvis.models.fusion.common import (
    ONE,
    ProjectAlignFusion,
    ProjectAlignParams,
    Scale,
    concat_layers,
    in_width,
    scaled,
)


@FUSIONS.register("gated")
class GatedFusion(ProjectAlignFusion):
    """g = softmax_k(W [x_1 | ... | x_K]) per token; z = sum_k g_k * P_k(x_k) on a common grid.

    W starts at zero, so training starts from the plain average of the projections. With one
    encoder the gate would be constantly 1, so none is built.
    """

    def __init__(self, encoders: list[EncoderInfo], params: ProjectAlignParams):
        super().__init__(encoders, params)
        self.gate: nn.Linear | None = None
        if len(encoders) > 1:
            self.gate = nn.Linear(sum(in_width(e) for e in encoders), len(encoders))
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def gates(self, xs: list[Tensor]) -> Tensor:
        """(B, N, K) gate weights from the aligned raw inputs; they sum to 1 over K."""
        if self.gate is None:
            return xs[0].new_ones(*xs[0].shape[:2], 1)
        return self.gate(torch.cat(xs, dim=-1)).softmax(dim=-1)

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        xs = concat_layers(feats, scaled(self.encoders, scale))
        g = self.gates(self.align(xs, scale))
        return torch.einsum("bnk,kbnd->bnd", g, torch.stack(self.project_aligned(xs, scale)))
