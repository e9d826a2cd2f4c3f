"""mul: the element-wise product of the encoders after a linear map each, times a learned scale."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polyvis.models.fusion.base import FUSIONS, EncoderInfo
from polyvis.models.fusion.common import ONE, ProjectAlignFusion, ProjectAlignParams, Scale


@FUSIONS.register("mul")
class MulFusion(ProjectAlignFusion):
    """z = w ⊙ prod_k P_k(x_k) on a common grid; w a per-channel scale initialised to 1."""

    def __init__(self, encoders: list[EncoderInfo], params: ProjectAlignParams):
        super().__init__(encoders, params)
        self.scale = nn.Parameter(torch.ones(self.out_dim))

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        ys = self.project_layers(feats, scale)
        out = ys[0]
        for y in ys[1:]:
            out = out * y
        return out * self.scale
