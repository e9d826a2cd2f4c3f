"""`transformer`: OmniFusion 1.0's adapter, one transformer encoder layer then a linear map."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams, check_heads


@ADAPTERS.register("transformer")
class TransformerAdapter(Adapter):
    """nn.TransformerEncoderLayer(d_model=in_dim, post-norm, batch_first) -> Linear(in_dim, out_dim).

        Mirrors `VisualToGPTMapping` of AIRI-Institute/OmniFusion, whose layer is built with PyTorch's
        defaults (dim_feedforward 2048, dropout 0.1, ReLU, norm_first=False); those are the defaults
        here too. The submodule names are the same, so OmniFusion's `projection.pt` state dict loads
        as is (`load_state_dict(sd)`, sd being the saved state dict, or `.state_dict()` of the
    saved module), key for key:

            transformer_layer.self_attn.in_proj_weight / in_proj_bias   (3*d, d) / (3*d,)
            transformer_layer.self_attn.out_proj.weight / .bias
            transformer_layer.linear1.weight / .bias                    (ffn_dim, d)
            transformer_layer.linear2.weight / .bias                    (d, ffn_dim)
            transformer_layer.norm1.weight / .bias, norm2.weight / .bias
            linear.weight / linear.bias                                 (out_dim, d)

        OmniFusion 1.0 itself: in_dim 1024 (CLIP-L/14), heads 4, out_dim 4096 (Mistral-7B).
    """

    class Params(AdapterParams):
        heads: int = Field(4, ge=1)
        ffn_dim: int = Field(2048, ge=1)
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        activation: Literal["relu", "gelu"] = "relu"

    params: Params

    def build(self) -> int:
        p = self.params
        check_heads(p.heads, self.in_dim)
        self.transformer_layer = nn.TransformerEncoderLayer(
            d_model=self.in_dim,
            nhead=p.heads,
            dim_feedforward=p.ffn_dim,
            dropout=p.dropout,
            activation=p.activation,
            batch_first=True,
            norm_first=False,
        )
        self.linear = nn.Linear(self.in_dim, self.out_dim)
        return self.in_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.transformer_layer(x))
