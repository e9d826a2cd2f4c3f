"""interleave: each encoder through its own linear map, tokens interleaved in spatial order."""

from __future__ import annotations

import torch
from torch import Tensor

from polyvis.models.fusion.base import FUSIONS, EncoderInfo
from polyvis.models.fusion.common import ONE, ProjectAlignFusion, ProjectAlignParams, Scale


@FUSIONS.register("interleave")
class InterleaveFusion(ProjectAlignFusion):
    """I-MoF (Eyes Wide Shut): the tokens come out as [e1_t1, e2_t1, ..., e1_t2, e2_t2, ...].

    Every encoder is mapped to `dim` and aligned to the common grid first, so the k-th token of
    each position describes the same image region. The output is a sequence of K * h * w tokens.
    """

    def __init__(self, encoders: list[EncoderInfo], params: ProjectAlignParams):
        super().__init__(encoders, params)
        self.num_tokens = len(encoders) * self.num_tokens
        # several encoders' tokens interleaved are no longer one grid
        self.grid = self.align_grid if len(encoders) == 1 else None

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        ys = self.project_layers(feats, scale)
        b, n, d = ys[0].shape
        # (B, N, K, d) -> (B, N*K, d): position-major, encoder-minor
        return torch.stack(ys, dim=2).reshape(b, n * len(ys), d)
