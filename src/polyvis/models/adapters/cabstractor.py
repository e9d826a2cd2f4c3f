"""`cabstractor`: Honeybee's C-Abstractor (RegNet stage -> adaptive pool -> RegNet stage -> MLP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from polyvis.models.adapters._grid import (
    GridSize,
    clamp_grid,
    map_to_tokens,
    tokens_to_map,
)
from polyvis.models.adapters.base import ADAPTERS, Adapter, AdapterParams, position_embedding


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's LayerNorm2d, eps 1e-6)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNormAct(nn.Module):
    """Conv2d (no bias) -> LayerNorm2d -> optional SiLU; names as timm's ConvNormAct."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
        self.bn = LayerNorm2d(cout)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Channel gating from the global mean (timm's SEModule: fc1 -> SiLU -> fc2 -> sigmoid)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class Bottleneck(nn.Module):
    """RegNet-Y bottleneck as Honeybee builds it with timm: bottle ratio 1, depthwise 3x3
    (group size 1), SE ratio 0.25 of the input width, SiLU, LayerNorm2d, 1x1 conv shortcut
    when the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 1)
        self.conv2 = ConvNormAct(cout, cout, 3, groups=cout)
        self.se = SqueezeExcite(cout, max(1, round(cin * 0.25)))
        self.conv3 = ConvNormAct(cout, cout, 1, act=False)
        self.downsample = ConvNormAct(cin, cout, 1, act=False) if cin != cout else nn.Identity()
        self.act3 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(y + self.downsample(x))


class RegStage(nn.Sequential):
    """`depth` bottlenecks named b1, b2, ... (timm's RegStage with stride 1)."""

    def __init__(self, depth: int, cin: int, cout: int):
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", Bottleneck(cin if i == 0 else cout, cout))


@ADAPTERS.register("cabstractor")
class CAbstractorAdapter(Adapter):
    """pos_emb -> RegStage(depth, in_dim -> hidden) -> adaptive avg pool to `pool_grid`
    -> RegStage(depth, hidden -> hidden) -> MLP (Linear, [SiLU, Linear] * (mlp_depth-1)) to out_dim.

    Honeybee uses depth 3 and hidden 1024; the defaults here (depth 1, hidden = in_dim) keep it
    small. With depth 0 only the pooling and the MLP remain, as in Honeybee. The module names
    follow Honeybee's `CAbstractor` (`pos_emb`, `net.0.b1.conv1.conv`, ..., `readout.0`), so its
    abstractor weights load with the `abstractor.` prefix dropped.
    """

    class Params(AdapterParams):
        depth: int = Field(1, ge=0)
        hidden_dim: int | None = Field(None, ge=1)
        mlp_depth: int = Field(2, ge=1)
        pool_grid: GridSize = (8, 8)
        pos_emb: bool = True

    needs_grid = True
    params: Params

    def build(self) -> int:
        p, in_dim, out_dim = self.params, self.in_dim, self.out_dim
        self.pool_grid = clamp_grid(p.pool_grid, self.in_grid)
        hidden = p.hidden_dim or in_dim
        self.pos_emb = position_embedding(self.in_tokens, in_dim) if p.pos_emb else None
        pool = nn.AdaptiveAvgPool2d(self.pool_grid)
        if p.depth:
            self.net = nn.Sequential(
                RegStage(p.depth, in_dim, hidden), pool, RegStage(p.depth, hidden, hidden)
            )
        else:
            self.net = nn.Sequential(pool)
            hidden = in_dim
        layers: list[nn.Module] = [nn.Linear(hidden, out_dim)]
        for _ in range(p.mlp_depth - 1):
            layers += [nn.SiLU(), nn.Linear(out_dim, out_dim)]
        self.readout = nn.Sequential(*layers)
        return self.pool_grid[0] * self.pool_grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_emb is not None:
            x = x + self.pos_emb
        x = map_to_tokens(self.net(tokens_to_map(x, self.in_grid)))
        return self.readout(x)
