"""Helpers the fusion methods share: input checks, layer concatenation, the grid-alignment options."""

from __future__ import annotations

import dataclasses

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from polyvis.errors import ConfigError
from polyvis.models.fusion.base import AlignPolicy, EncoderInfo, Fusion, FusionParams, align_tokens

# build_fusion validates options under this prefix; constructor-time checks name the same field.
FIELD = "model.fusion"

# A tile grid (rows, cols) that multiplies every grid of a "stitch" fusion; ONE leaves them as built.
Scale = tuple[int, int]
ONE: Scale = (1, 1)


def scale_grid(grid: tuple[int, int], scale: Scale) -> tuple[int, int]:
    return (grid[0] * scale[0], grid[1] * scale[1])


def scaled(encoders: list[EncoderInfo], scale: Scale) -> list[EncoderInfo]:
    """The encoders with their grids multiplied by `scale` (the same list for ONE)."""
    if tuple(scale) == ONE:
        return encoders
    return [dataclasses.replace(e, grid=scale_grid(e.grid, scale)) for e in encoders]


class AlignParams(FusionParams):
    """Options of methods that combine tokens position by position.

    align: how encoders on other grids are brought to `grid` (see base.align_tokens).
    grid: the common (h, w); default the largest encoder grid (the smallest for align: pool,
    which can only shrink).
    """

    align: AlignPolicy = "interpolate"
    grid: tuple[PositiveInt, PositiveInt] | None = None


def require_encoders(encoders: list[EncoderInfo]) -> None:
    if not encoders:
        raise ConfigError("model.encoders", "a fusion needs at least one encoder")


def in_width(enc: EncoderInfo) -> int:
    """Width of an encoder's input to a fusion: its selected layers concatenated on channels."""
    return enc.dim * enc.num_layers


def default_dim(encoders: list[EncoderInfo], dim: int | None) -> int:
    """`dim` when given, else the widest encoder input."""
    return dim if dim is not None else max(in_width(e) for e in encoders)


def check_feats(feats: list[list[Tensor]], encoders: list[EncoderInfo]) -> None:
    """Refuse inputs that do not match the encoders this fusion was built for, naming the encoder."""
    if len(feats) != len(encoders):
        raise ValueError(f"fusion built for {len(encoders)} encoders got features of {len(feats)}")
    batch = None
    for enc, layers in zip(encoders, feats):
        if len(layers) != enc.num_layers:
            raise ValueError(
                f"encoder {enc.name!r}: expected {enc.num_layers} layers, got {len(layers)}"
            )
        for x in layers:
            want = (enc.num_tokens, enc.dim)
            if x.dim() != 3 or tuple(x.shape[1:]) != want:
                raise ValueError(
                    f"encoder {enc.name!r}: expected (B, {want[0]}, {want[1]}) features, "
                    f"got {tuple(x.shape)}"
                )
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(f"encoder {enc.name!r}: batch {x.shape[0]} != {batch}")


def concat_layers(feats: list[list[Tensor]], encoders: list[EncoderInfo]) -> list[Tensor]:
    """Check the inputs, then join each encoder's selected layers along channels: (B, N_k, D_k*L_k)."""
    check_feats(feats, encoders)
    # a single layer passes through untouched (no copy), so identity fusions stay exact
    return [layers[0] if len(layers) == 1 else torch.cat(layers, dim=-1) for layers in feats]


def resolve_grid(
    encoders: list[EncoderInfo], grid: tuple[int, int] | None, policy: str
) -> tuple[int, int]:
    """The common grid for `policy`, checked so that no encoder is silently mismatched."""
    if grid is None:
        pick = min if policy == "pool" else max
        grid = pick((e.grid for e in encoders), key=lambda g: (g[0] * g[1], g))
    grid = (int(grid[0]), int(grid[1]))
    n_dst = grid[0] * grid[1]
    for e in encoders:
        if policy == "pool" and (grid[0] > e.grid[0] or grid[1] > e.grid[1]):
            raise ConfigError(
                f"{FIELD}.grid",
                f"align: pool cannot grow encoder {e.name!r} grid {e.grid[0]}x{e.grid[1]} "
                f"to {grid[0]}x{grid[1]}; use align: interpolate or a smaller grid",
            )
        if policy == "pad" and e.num_tokens > n_dst:
            raise ConfigError(
                f"{FIELD}.grid",
                f"align: pad would drop {e.num_tokens - n_dst} of encoder {e.name!r}'s "
                f"{e.num_tokens} tokens to fit {grid[0]}x{grid[1]}; use a larger grid",
            )
    return grid


def align_all(
    xs: list[Tensor], encoders: list[EncoderInfo], grid: tuple[int, int], policy: str
) -> list[Tensor]:
    """Bring every encoder's tokens to `grid` by `policy`."""
    return [align_tokens(x, e.grid, grid, policy) for x, e in zip(xs, encoders)]


class ProjectAlignParams(AlignParams):
    """AlignParams plus `dim`, the common width (default the widest encoder input)."""

    dim: PositiveInt | None = None


class ProjectAlignFusion(Fusion):
    """Base of the methods that map each encoder to `dim` with its own Linear (`proj.k`) and
    combine them position by position on one grid (`align_grid`).

    Sets out_dim, align_grid, grid (= align_grid) and num_tokens (one per grid position);
    subclasses add their own parameters after calling this __init__ (their creation order is
    part of the initial weights under a seed) and may redefine grid and num_tokens.
    """

    Params = ProjectAlignParams

    def __init__(self, encoders: list[EncoderInfo], params: ProjectAlignParams):
        super().__init__(encoders, params)
        require_encoders(encoders)
        self.out_dim = default_dim(encoders, params.dim)
        self.align_grid = resolve_grid(encoders, params.grid, params.align)
        self.grid: tuple[int, int] | None = self.align_grid
        self.num_tokens = self.align_grid[0] * self.align_grid[1]
        self.proj = nn.ModuleList(nn.Linear(in_width(e), self.out_dim) for e in encoders)

    def align(self, xs: list[Tensor], scale: Scale = ONE) -> list[Tensor]:
        """Bring every encoder's tokens to `align_grid` (times `scale`) by the configured policy."""
        return align_all(
            xs,
            scaled(self.encoders, scale),
            scale_grid(self.align_grid, scale),
            self.params.align,
        )

    def project_aligned(self, xs: list[Tensor], scale: Scale = ONE) -> list[Tensor]:
        """Each encoder through its linear map, then aligned: (B, h*w, dim) each."""
        # project first: affine maps commute with interpolate/pool, and pad leaves zeros
        return self.align([p(x) for p, x in zip(self.proj, xs)], scale)

    def project_layers(self, feats: list[list[Tensor]], scale: Scale = ONE) -> list[Tensor]:
        """project_aligned of each encoder's selected layers, concatenated per position."""
        return self.project_aligned(concat_layers(feats, scaled(self.encoders, scale)), scale)
