"""add: a weighted sum of the encoders after a linear map each to a common width."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polyvis.errors import ConfigError
from polyvis.models.fusion.base import FUSIONS, EncoderInfo
from polyvis.models.fusion.common import FIELD, ONE, ProjectAlignFusion, ProjectAlignParams, Scale


@FUSIONS.register("add")
class AddFusion(ProjectAlignFusion):
    """z = sum_k w_k * P_k(x_k) on a common grid (founding research; A-MoF in Eyes Wide Shut).

    `weights` are the initial w (default 1/K each); `learn_weights` makes them trainable,
    otherwise they stay fixed (alpha and 1 - alpha in A-MoF).
    """

    class Params(ProjectAlignParams):
        weights: list[float] | None = None
        learn_weights: bool = True

    def __init__(self, encoders: list[EncoderInfo], params: Params):
        super().__init__(encoders, params)
        k = len(encoders)
        if params.weights is not None and len(params.weights) != k:
            raise ConfigError(
                f"{FIELD}.weights", f"has {len(params.weights)} values for {k} encoders"
            )
        init = torch.tensor(params.weights if params.weights is not None else [1.0 / k] * k)
        if params.learn_weights:
            self.weights = nn.Parameter(init)
        else:
            # rebuilt from the config, so it need not be saved with the weights
            self.register_buffer("weights", init, persistent=False)

    def forward(self, feats: list[list[Tensor]], scale: Scale = ONE) -> Tensor:
        ys = torch.stack(self.project_layers(feats, scale))  # (K,B,N,d)
        return (self.weights.to(ys.dtype).view(-1, 1, 1, 1) * ys).sum(0)
