"""Tiling: one encoder sees the image as a grid of tiles of its input size (plus a thumbnail).

Image side (the processor): the grid [rows, cols] whose resolution and aspect ratio fit the image
best is picked as LLaVA-NeXT's `select_best_resolution` does; the image is resized into that
canvas keeping its aspect ratio, centred on black padding, and cut into tiles. Each view (the
thumbnail first when asked, then the tiles row by row) goes through the encoder's own image
processor.

Slots: a tiled encoder owns `views` slots of pixel_values, the thumbnail (when asked) and then the
positions of a max_rows x max_cols canvas, row by row; a tile grid r x c fills the top-left r x c
positions. Slots an image does not use are NaN, in pixels and in features alike, so
pixel_values and cached features carry each image's grid with them (generate(), the collator,
beams and the feature cache need nothing else).

Model side: `fuse_tiled` applies the fusion's `tile_rule` (docs/fusion.md) per group of images
with the same grid and returns units of the fusion's own output shape, which the adapter then
maps one by one, so every adapter sees the input it was built for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from polyvis.errors import ConfigError, DataError

Grid = tuple[int, int]


@dataclass(frozen=True)
class Tiling:
    """The allowed tile grids ([rows, cols]) of an encoder and whether a thumbnail comes first."""

    grids: tuple[Grid, ...]
    thumbnail: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], field: str = "tiling") -> Tiling:
        """A tiling as saved in config.json / polyvis_processor.json. Those files can be edited by
        hand, so the values are checked here (ConfigError naming `field`), not where a bad value
        would fail later: `max()` of no grids, a KeyError, a model that loads but no image fits.
        `thumbnail` may be left out (false), as in a config's `tiling`."""
        if not isinstance(data, dict):
            raise ConfigError(field, f"must be a mapping {{grids, thumbnail}}, got {data!r}")
        grids = data.get("grids")
        if not isinstance(grids, list | tuple) or not grids or not all(map(_is_grid, grids)):
            raise ConfigError(
                f"{field}.grids",
                f"must be a non-empty list of [rows, cols] of positive integers, got {grids!r}",
            )
        thumbnail = data.get("thumbnail", False)
        if not isinstance(thumbnail, bool):
            raise ConfigError(f"{field}.thumbnail", f"must be true or false, got {thumbnail!r}")
        return cls(tuple((int(r), int(c)) for r, c in grids), thumbnail)

    def to_dict(self) -> dict[str, Any]:
        return {"grids": [list(g) for g in self.grids], "thumbnail": self.thumbnail}

    @property
    def canvas(self) -> Grid:
        """(max rows, max cols): the positions the slots after the thumbnail stand for."""
        return max(r for r, _ in self.grids), max(c for _, c in self.grids)

    @property
    def views(self) -> int:
        """Slots per image: the thumbnail's and the canvas's."""
        rows, cols = self.canvas
        return int(self.thumbnail) + rows * cols

    def slots(self, grid: Grid) -> list[int]:
        """The slots an image with this tile grid uses: thumbnail, then the tiles row by row."""
        t, (_, cols) = int(self.thumbnail), self.canvas
        return list(range(t)) + [t + i * cols + j for i in range(grid[0]) for j in range(grid[1])]

    def layout(self, present: list[bool]) -> Grid:
        """The tile grid whose slots are exactly the `present` ones (the inverse of `slots`)."""
        for grid in self.grids:
            used = set(self.slots(grid))
            if [s in used for s in range(self.views)] == list(present):
                return grid
        raise DataError(
            f"a tiled image's views {['x' if p else '.' for p in present]} match none of the "
            f"grids {[list(g) for g in self.grids]} (thumbnail: {self.thumbnail})"
        )

    def select(self, size: Grid, tile: Grid) -> Grid:
        """The grid for an image of (height, width): LLaVA-NeXT's select_best_resolution over
        the resolutions (rows * tile height, cols * tile width)."""
        height, width = size
        best, best_used, best_waste = self.grids[0], 0, math.inf
        for rows, cols in self.grids:
            th, tw = rows * tile[0], cols * tile[1]
            scale = min(tw / width, th / height)
            used = min(int(width * scale) * int(height * scale), width * height)
            waste = th * tw - used
            if used > best_used or (used == best_used and waste < best_waste):
                best, best_used, best_waste = (rows, cols), used, waste
        return best

    def num_views(self, grid: Grid) -> int:
        return int(self.thumbnail) + grid[0] * grid[1]


def _is_grid(grid: Any) -> bool:
    """[rows, cols]: two positive integers (not bools, which JSON would not hold here anyway)."""
    return (
        isinstance(grid, list | tuple)
        and len(grid) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid)
    )


def _field(entry: dict[str, Any]) -> str:
    """The saved config's field of an encoder entry's tiling, by encoder name."""
    return f"encoders.{entry.get('name')}.tiling"


def find_tiling(entries: list[dict[str, Any]]) -> tuple[int, Tiling] | None:
    """(index, Tiling) of the tiled encoder among PolyVisConfig.encoders entries, or None."""
    for k, entry in enumerate(entries):
        if entry.get("tiling") is not None:
            return k, Tiling.from_dict(entry["tiling"], _field(entry))
    return None


def views_of(entry: dict[str, Any]) -> int:
    """Slots an encoder entry takes in pixel_values: 1, or a tiled encoder's `views`."""
    return (
        Tiling.from_dict(entry["tiling"], _field(entry)).views
        if entry.get("tiling") is not None
        else 1
    )


# -- images ------------------------------------------------------------------------------------------
def canvas_box(size: Grid, canvas: Grid) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an image of `size` resized into `canvas` (both (h, w)),
    aspect ratio kept, centred: transformers' get_patch_output_size and LLaVA-NeXT's padding."""
    height, width = size
    scale_w, scale_h = canvas[1] / width, canvas[0] / height
    if scale_w < scale_h:
        new_w, new_h = canvas[1], min(math.ceil(height * scale_w), canvas[0])
    else:
        new_h, new_w = canvas[0], min(math.ceil(width * scale_h), canvas[1])
    return (canvas[0] - new_h) // 2, (canvas[1] - new_w) // 2, new_h, new_w


def tile_image(image: Image.Image, grid: Grid, tile: Grid, resample: Any) -> list[Image.Image]:
    """The image resized and padded into grid x tile pixels, cut into tiles row by row."""
    canvas = (grid[0] * tile[0], grid[1] * tile[1])
    top, left, h, w = canvas_box((image.height, image.width), canvas)
    board = Image.new("RGB", (canvas[1], canvas[0]))  # black, as LLaVA-NeXT pads with zeros
    board.paste(image.convert("RGB").resize((w, h), resample=resample), (left, top))
    th, tw = tile
    return [
        board.crop((j * tw, i * th, (j + 1) * tw, (i + 1) * th))
        for i in range(grid[0])
        for j in range(grid[1])
    ]


def resample_of(image_processor: Any) -> Image.Resampling:
    """The PIL filter the encoder's own processor resizes with (bicubic when it names none)."""
    value = getattr(image_processor, "resample", None)
    return Image.Resampling(int(value)) if value is not None else Image.Resampling.BICUBIC


def present_views(x: Tensor) -> Tensor:
    """(n, V, ...) pixels or features -> (n, V) bool: the views that are not NaN padding."""
    return ~torch.isnan(x).flatten(2).all(-1)


def encode_views(encoder: Any, views: Tensor) -> list[Tensor]:
    """A tiled encoder over its slots (n, V, 3, h, w): per layer (n, V, N, D), NaN where unused."""
    present = present_views(views)
    feats = encoder(views[present])
    n, v = present.shape
    out = []
    for f in feats:
        full = f.new_full((n, v, *f.shape[1:]), float("nan"))
        full[present] = f
        out.append(full)
    return out


# -- fusion ------------------------------------------------------------------------------------------
def stitch(tiles: Tensor, grid: Grid, tile_grid: Grid) -> Tensor:
    """(B, r*c, h*w, D) tiles, row by row -> (B, r*h * c*w, D): one grid, row-major."""
    (h, w), (r, c) = grid, tile_grid
    b, _, _, d = tiles.shape
    return tiles.reshape(b, r, c, h, w, d).permute(0, 1, 3, 2, 4, 5).reshape(b, r * h * c * w, d)


def replicate(x: Tensor, grid: Grid, tile_grid: Grid) -> Tensor:
    """(B, h*w, D) -> (B, r*h * c*w, D): each token repeated r x c times (nearest neighbour), so
    an untiled encoder lies on the tile grid with its view of every region unchanged."""
    (h, w), (r, c) = grid, tile_grid
    b, _, d = x.shape
    x = x.reshape(b, h, w, d).repeat_interleave(r, 1).repeat_interleave(c, 2)
    return x.reshape(b, r * h * c * w, d)


def cut(x: Tensor, grid: Grid, tile_grid: Grid) -> Tensor:
    """(B, r*h * c*w * p, D), p tokens per position -> (B, r*c, h*w*p, D): back into tiles."""
    (h, w), (r, c) = grid, tile_grid
    b, n, d = x.shape
    p = n // (r * h * c * w)
    x = x.reshape(b, r, h, c, w, p, d).permute(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(b, r * c, h * w * p, d)


def unit_grid(fusion: Any) -> Grid:
    """The grid one unit of a "stitch" fusion's output lies on (interleave: its align grid)."""
    return tuple(getattr(fusion, "align_grid", None) or fusion.grid)


def _with(feats: list[Any], k: int, layers: list[Tensor]) -> list[list[Tensor]]:
    return [layers if j == k else f for j, f in enumerate(feats)]


def _thumbnail_first(
    fusion: Any, feats: list[Any], k: int, views: list[Tensor], thumbnail: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """([the thumbnail's unit] or [], the tile views): the thumbnail is fused beside the untiled
    encoders exactly as the untiled model fuses a whole image."""
    if not thumbnail:
        return [], views
    unit = fusion(_with(feats, k, [v[:, 0] for v in views])).unsqueeze(1)
    return [unit], [v[:, 1:] for v in views]


def _stitch_rule(fusion, feats, k, views, grid, thumbnail, slots) -> Tensor:
    units, views = _thumbnail_first(fusion, feats, k, views, thumbnail)
    encoders = fusion.encoders
    placed = [
        [stitch(v, encoders[k].grid, grid) for v in views]
        if j == k
        else [replicate(x, encoders[j].grid, grid) for x in layers]
        for j, layers in enumerate(feats)
    ]
    units.append(cut(fusion(placed, scale=grid), unit_grid(fusion), grid))
    return torch.cat(units, dim=1)


def _views_rule(fusion, feats, k, views, grid, thumbnail, slots) -> Tensor:
    units, views = _thumbnail_first(fusion, feats, k, views, thumbnail)
    encoders = fusion.encoders
    b, n_tiles = views[0].shape[:2]
    # each tile beside the untiled encoders' view of its region (as the stitch rule places them)
    per_tile = [
        [v.flatten(0, 1) for v in views]
        if j == k
        else [
            cut(replicate(x, encoders[j].grid, grid), encoders[j].grid, grid).flatten(0, 1)
            for x in layers
        ]
        for j, layers in enumerate(feats)
    ]
    out = fusion(per_tile)
    units.append(out.reshape(b, n_tiles, *out.shape[1:]))
    return torch.cat(units, dim=1)


def _sequence_rule(fusion, feats, k, views, grid, thumbnail, slots) -> Tensor:
    joined = [v.flatten(1, 2) for v in views]  # (B, V * N, D): views one after the other
    return fusion(_with(feats, k, joined), views={k: slots}).unsqueeze(1)


RULES = {"stitch": _stitch_rule, "views": _views_rule, "sequence": _sequence_rule}


def fuse_tiled(fusion: Any, feats: list[list[Tensor]], k: int, tiling: Tiling) -> Tensor:
    """Fuse a batch whose encoder k is tiled: (units, num_tokens, out_dim), image by image.

    feats[k]: per layer (n, views, N_k, D_k), NaN in unused slots; the others (n, N_j, D_j).
    Images are fused in groups of one grid each (in order of first appearance), so an image's
    units do not depend on the other images of its batch.
    """
    rows = present_views(feats[k][0]).tolist()
    grids = [tiling.layout(row) for row in rows]
    rule = RULES[fusion.tile_rule]
    device = feats[k][0].device
    per_image: list[Tensor | None] = [None] * len(grids)
    for grid in dict.fromkeys(grids):
        members = [i for i, g in enumerate(grids) if g == grid]
        idx = torch.tensor(members, device=device)
        slots = torch.tensor(tiling.slots(grid), device=device)
        views = [x[idx[:, None], slots[None]] for x in feats[k]]  # (g, V, N, D)
        group = [None if j == k else [x[idx] for x in layers] for j, layers in enumerate(feats)]
        units = rule(fusion, group, k, views, grid, tiling.thumbnail, slots)
        for j, i in enumerate(members):
            per_image[i] = units[j]
    return torch.cat(per_image)


def processor_tiling(entries: list[dict[str, Any]], fusion: Any) -> dict[str, Any] | None:
    """What the processor needs to tile and count tokens; None for an untiled model.

    per_view: the image's tokens are image_seq_length per view (every rule but "sequence",
    whose output length is fixed).
    """
    found = find_tiling(entries)
    if found is None:
        return None
    k, tiling = found
    return {
        "encoder": entries[k]["name"],
        **tiling.to_dict(),
        "per_view": fusion.tile_rule != "sequence",
    }
