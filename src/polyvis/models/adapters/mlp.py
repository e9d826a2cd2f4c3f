"""`mlp`: the LLaVA-1.5 GELU MLP projector (`mlp2x_gelu` at depth 2)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from polyvis.errors import ConfigError
from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams


@ADAPTERS.register("mlp")
class MLPAdapter(Adapter):
    """Linear(in, out) -> [GELU -> Linear(out, out)] * (depth - 1); keeps the token count.

    The layers live in `self.mlp`, an nn.Sequential laid out exactly like LLaVA's
    `mm_projector` (keys `mlp.0`, `mlp.2`, ...), so LLaVA-1.5 checkpoints load with the prefix
    swapped; `llava_state_dict()` gives the keys of transformers' LlavaMultiModalProjector.
    """

    class Params(AdapterParams):
        depth: int = Field(2, ge=1)
        # width of the hidden layers; default the LM's width (LLaVA). Several encoders
        # concatenated along channels can need more than the LM's width to pass through.
        hidden: int | None = Field(None, gt=0)

    params: Params

    def build(self) -> int:
        p = self.params
        hidden = p.hidden or self.out_dim
        widths = [self.in_dim] + [hidden] * (p.depth - 1) + [self.out_dim]
        layers: list[nn.Module] = [nn.Linear(widths[0], widths[1])]
        for a, b in zip(widths[1:-1], widths[2:]):
            layers += [nn.GELU(), nn.Linear(a, b)]
        self.mlp = nn.Sequential(*layers)
        return self.in_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def llava_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the names of transformers' LlavaMultiModalProjector (depth 2 only).

        Returns {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
        (detached copies), loadable with `projector.load_state_dict(...)` into a projector whose
        config has projector_hidden_act="gelu" and multimodal_projector_bias=True.
        """
        if self.params.depth != 2:
            raise ConfigError(
                "model.adapter.depth",
                f"LLaVA's projector has exactly 2 linear layers, this mlp has {self.params.depth}",
            )
        first, last = self.mlp[0], self.mlp[2]
        if first.out_features != last.out_features:
            raise ConfigError(
                "model.adapter.hidden",
                f"LLaVA's projector's hidden width is the LM's ({last.out_features}), "
                f"this mlp's is {first.out_features}",
            )
        return {
            "linear_1.weight": first.weight.detach().clone(),
            "linear_1.bias": first.bias.detach().clone(),
            "linear_2.weight": last.weight.detach().clone(),
            "linear_2.bias": last.bias.detach().clone(),
        }
