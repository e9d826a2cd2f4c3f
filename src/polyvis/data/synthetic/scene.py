"""Scene family: coloured circles, squares and triangles, written as COCO instances first.

COCO layout written per split at `scene/annotations/{split}.json`:
- categories are the shapes (circle=1, square=2, triangle=3, supercategory "shape");
- each annotation carries its colour as `attributes: {"color": "red"}` (real COCO has no such
  field, and the converter then simply speaks of "a person" instead of "a red person");
- `bbox` is [x, y, w, h] in integer pixels: the exact extent of the drawn shape, which stays the
  full (amodal) box when another shape overlaps it.
The records then come from the COCO converter (one code path for real and synthetic detection).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageDraw

from polyvis.data.converters.coco import coco_to_records
from polyvis.data.synthetic.base import FAMILIES, Family, Item, image_name
from polyvis.data.synthetic.common import (
    COLORS,
    add_noise,
    background,
    level_index,
    pick,
    uniform_int,
)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]

# Per level: (min objects, max objects, min side, max side as fractions of the image, max IoU).
_LEVELS = {
    "easy": (1, 3, 0.22, 0.36, 0.0),
    "medium": (2, 4, 0.16, 0.30, 0.0),
    "hard": (3, 6, 0.11, 0.28, 0.3),
}


def _iou(a: list[int], b: list[int]) -> float:
    """IoU of two [x, y, w, h] boxes; touching boxes (0 px apart) count as 0."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def _gap_ok(a: list[int], b: list[int], gap: int) -> bool:
    """True when the boxes are at least `gap` pixels apart on some axis."""
    return (
        a[0] + a[2] + gap <= b[0]
        or b[0] + b[2] + gap <= a[0]
        or a[1] + a[3] + gap <= b[1]
        or b[1] + b[3] + gap <= a[1]
    )


def shape_polygon(shape: str, bbox: list[int]) -> list[float]:
    """COCO segmentation polygon [x1, y1, x2, y2, ...] of a shape inside bbox [x, y, w, h]."""
    x, y, w, h = bbox
    if shape == "square":
        pts = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    elif shape == "triangle":
        pts = [(x, y + h), (x + w, y + h), (x + w / 2, y)]
    else:
        cx, cy = x + w / 2, y + h / 2
        pts = [
            (
                cx + w / 2 * math.cos(2 * math.pi * k / 16),
                cy + h / 2 * math.sin(2 * math.pi * k / 16),
            )
            for k in range(16)
        ]
    return [round(float(v), 2) for p in pts for v in p]


def shape_area(shape: str, w: int, h: int) -> float:
    if shape == "square":
        return float(w * h)
    if shape == "triangle":
        return w * h / 2.0
    return round(math.pi * w * h / 4.0, 2)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, bbox: list[int], fill: tuple) -> None:
    """Draw a shape whose pixels exactly span bbox [x, y, w, h] (right/bottom edges exclusive)."""
    x, y, w, h = bbox
    x1, y1 = x + w - 1, y + h - 1
    if shape == "square":
        draw.rectangle((x, y, x1, y1), fill=fill)
    elif shape == "circle":
        draw.ellipse((x, y, x1, y1), fill=fill)
    else:
        draw.polygon([(x, y1), (x1, y1), ((x + x1) / 2, y)], fill=fill)


def place_shapes(rng: np.random.Generator, size: int, difficulty: str) -> list[dict[str, Any]]:
    """A level's shapes, each {shape, color, bbox}, placed by rejection sampling."""
    lo, hi, smin, smax, max_iou = _LEVELS[difficulty]
    want = uniform_int(rng, lo, hi)
    side_lo, side_hi = max(6, round(smin * size)), max(7, round(smax * size))
    objects: list[dict[str, Any]] = []
    for _ in range(want):
        for _try in range(60):  # a crowded image just gets fewer shapes
            side = uniform_int(rng, side_lo, side_hi)
            box = [uniform_int(rng, 0, size - side), uniform_int(rng, 0, size - side), side, side]
            others = [o["bbox"] for o in objects]
            ok = (
                all(_iou(box, b) <= max_iou for b in others)
                if max_iou > 0
                else all(_gap_ok(box, b, 1) for b in others)
            )
            if ok:
                objects.append(
                    {"shape": pick(rng, SHAPES), "color": pick(rng, list(COLORS)), "bbox": box}
                )
                break
    return objects


@FAMILIES.register("scene")
class SceneFamily(Family):
    name = "scene"
    metric = "exact_match"

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        img = background(rng, size, difficulty)
        objects = place_shapes(rng, size, difficulty)
        draw = ImageDraw.Draw(img)
        for obj in objects:
            draw_shape(draw, obj["shape"], obj["bbox"], COLORS[obj["color"]])
        img = add_noise(img, rng, 4.0 * level_index(difficulty))
        return Item(img, {"width": size, "height": size, "objects": objects})

    def to_records(
        self, split: str, metas: list[dict[str, Any]], folder: Path, seed: int
    ) -> list[dict[str, Any]]:
        coco = scene_coco(metas)
        write_coco(folder, split, coco)
        return coco_to_records(
            coco, image_dir=f"images/{split}", id_prefix=f"scene-{split}", family="scene", seed=seed
        )


def scene_coco(
    metas: list[dict[str, Any]],
    attributes: tuple[str, ...] = ("color",),
    polygon: Callable[[dict[str, Any]], list[float]] | None = None,
    area: Callable[[dict[str, Any]], float] | None = None,
    description: str = "polyvis synthetic scenes",
) -> dict[str, Any]:
    """The COCO instances dict of a split: image i has id i and file name `{i:06d}.png`; each
    shape's `attributes` are those of `attributes` it has. polygon / area: a shape's segmentation
    and area (default: an upright shape filling its box)."""
    polygon = polygon or (lambda o: shape_polygon(o["shape"], o["bbox"]))
    area = area or (lambda o: shape_area(o["shape"], o["bbox"][2], o["bbox"][3]))
    cat_id = {c["name"]: c["id"] for c in CATEGORIES}
    images, annotations = [], []
    for index, meta in enumerate(metas):
        images.append(
            {
                "id": index,
                "file_name": image_name(index),
                "width": meta["width"],
                "height": meta["height"],
            }
        )
        for obj in meta["objects"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": cat_id[obj["shape"]],
                    "bbox": list(obj["bbox"]),
                    "area": area(obj),
                    "segmentation": [polygon(obj)],
                    "iscrowd": 0,
                    "attributes": {k: obj[k] for k in attributes if k in obj},
                }
            )
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def write_coco(folder: Path, split: str, coco: dict[str, Any]) -> None:
    """`{folder}/annotations/{split}.json`, where the probes and converters read it."""
    path = folder / "annotations" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco, indent=1) + "\n", encoding="utf-8")
