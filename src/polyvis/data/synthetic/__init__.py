"""Synthetic task families: seeded, offline generators of images with questions and answers.

    from polyvis.data.synthetic import generate
    generate(["scene", "ocr"], n=100, seed=0, out="data/nano", image_size=64)

Families (registry `FAMILIES`): scene, detail (the scene's shapes with patterns and
orientations), ocr, latex, chart, table, mixed, binding and
chartbind (questions that need two experts at once), and ocrpage and tablepage (small text on a
page larger than `size`, for tiling). See docs/data.md.
"""

from __future__ import annotations

# Importing the family modules registers them.
from polyvis.data.synthetic import (  # noqa: F401
    binding,
    chart,
    chartbind,
    detail,
    latex,
    mixed,
    ocr,
    pages,
    scene,
    table,
)
from polyvis.data.synthetic.base import FAMILIES, Family, Item, image_rel_path, qa
from polyvis.data.synthetic.common import LEVELS, item_rng, parse_difficulty
from polyvis.data.synthetic.generate import SPLIT_NAMES, generate, split_sizes

__all__ = [
    "FAMILIES",
    "LEVELS",
    "SPLIT_NAMES",
    "Family",
    "Item",
    "generate",
    "image_rel_path",
    "item_rng",
    "parse_difficulty",
    "qa",
    "split_sizes",
]
