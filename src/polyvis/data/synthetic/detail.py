"""Detail family: the scene's shapes, each also with a pattern and an orientation.

What DINOv2 keeps and CLIP's captions never name (issue 18; MMVP's "CLIP-blind" pairs turn on
orientation and pattern). The shapes are placed as the scene family places them; then each gets
a pattern (solid, striped, hollow) and, where it has one, an orientation (a triangle points up,
down, left or right; a square stands straight or on its corner, diagonal; a circle has none).
Both are written as COCO attributes beside the colour, so `polyvis.nano.probe_data` probes them.

Records: the COCO converter's caption of each image, which names colours, shapes and positions
and never a pattern or an orientation (clip-nano trains on these, as CLIP on alt-text), and two
question types:
- `pattern`: "What pattern does the red shape have?" (the only shape of its colour): colour and
  pattern at once, so it needs the expert that sees colour and the one that sees pattern;
- `orientation`: "Which way does the triangle point?" (the only triangle): fine detail alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from polyvis.data.converters.coco import coco_to_records
from polyvis.data.records import make_record
from polyvis.data.synthetic.base import FAMILIES, Family, Item, image_rel_path
from polyvis.data.synthetic.common import COLORS, add_noise, background, level_index, pick
from polyvis.data.synthetic.scene import (
    place_shapes,
    scene_coco,
    shape_area,
    shape_polygon,
    write_coco,
)

PATTERNS: tuple[str, ...] = ("solid", "striped", "hollow")
ORIENTATIONS: dict[str, tuple[str, ...]] = {
    "triangle": ("up", "down", "left", "right"),
    "square": ("straight", "diagonal"),
}
STRIPE_PERIOD = 4  # px: 2 rows of colour, 2 of background, from the shape's top edge
OUTLINE = 2  # px of a hollow shape's rim


def outline_points(shape: str, bbox: list[int], orientation: str | None) -> list[tuple]:
    """The polygon of a triangle or square inside bbox [x, y, w, h] (right/bottom exclusive)."""
    x, y, w, h = bbox
    x1, y1, mx, my = x + w - 1, y + h - 1, x + (w - 1) / 2, y + (h - 1) / 2
    if shape == "square":
        if orientation == "diagonal":
            return [(mx, y), (x1, my), (mx, y1), (x, my)]
        return [(x, y), (x1, y), (x1, y1), (x, y1)]
    return {
        "up": [(x, y1), (x1, y1), (mx, y)],
        "down": [(x, y), (x1, y), (mx, y1)],
        "left": [(x1, y), (x1, y1), (x, my)],
        "right": [(x, y), (x, y1), (x1, my)],
    }[orientation or "up"]


def shape_mask(obj: dict[str, Any], size: int) -> Image.Image:
    """The pixels one shape colours, as an L mask: its outline, then its pattern."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    x, y, w, h = obj["bbox"]
    if obj["shape"] == "circle":
        draw.ellipse((x, y, x + w - 1, y + h - 1), fill=255)
    else:
        draw.polygon(outline_points(obj["shape"], obj["bbox"], obj.get("orientation")), fill=255)
    if obj["pattern"] == "hollow":
        inner = mask.filter(ImageFilter.MinFilter(2 * OUTLINE + 1))
        mask = ImageChops.subtract(mask, inner)
    elif obj["pattern"] == "striped":
        rows = (np.arange(size) - y) % STRIPE_PERIOD < STRIPE_PERIOD // 2
        stripes = np.repeat(rows[:, None], size, axis=1).astype(np.uint8) * 255
        mask = ImageChops.multiply(mask, Image.fromarray(stripes, "L"))
    return mask


@FAMILIES.register("detail")
class DetailFamily(Family):
    name = "detail"
    metric = "exact_match"
    two_expert_tasks = ("pattern",)

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        img = background(rng, size, difficulty)
        objects = place_shapes(rng, size, difficulty)
        for obj in objects:
            obj["pattern"] = pick(rng, PATTERNS)
            if obj["shape"] in ORIENTATIONS:
                obj["orientation"] = pick(rng, ORIENTATIONS[obj["shape"]])
            img.paste(COLORS[obj["color"]], (0, 0), shape_mask(obj, size))
        img = add_noise(img, rng, 4.0 * level_index(difficulty))
        return Item(img, {"width": size, "height": size, "objects": objects})

    def to_records(
        self, split: str, metas: list[dict[str, Any]], folder: Path, seed: int
    ) -> list[dict[str, Any]]:
        attributes = ("color", "pattern", "orientation")
        coco = scene_coco(metas, attributes, _segmentation, _area, "polyvis synthetic details")
        write_coco(folder, split, coco)
        records = coco_to_records(
            coco,
            image_dir=f"images/{split}",
            id_prefix=f"detail-{split}",
            family="detail",
            seed=seed,
            tasks=("caption",),
        )
        for index, meta in enumerate(metas):
            for task, q, a in detail_questions(meta["objects"]):
                records.append(
                    make_record(
                        f"detail-{split}-{index:06d}-{task}",
                        image_rel_path(split, index),
                        [(q, a)],
                        family="detail",
                        task=task,
                    )
                )
        return records


def detail_questions(objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(task, question, answer) of one image: the pattern of the first shape whose colour no
    other shape has, and the way the triangle points when there is exactly one."""
    out = []
    colours = [o["color"] for o in objects]
    unique = [o for o in objects if colours.count(o["color"]) == 1]
    if unique:
        o = unique[0]
        out.append(("pattern", f"What pattern does the {o['color']} shape have?", o["pattern"]))
    triangles = [o for o in objects if o["shape"] == "triangle"]
    if len(triangles) == 1:
        out.append(
            ("orientation", "Which way does the triangle point?", triangles[0]["orientation"])
        )
    return out


def _segmentation(obj: dict[str, Any]) -> list[float]:
    if obj["shape"] == "circle":
        return shape_polygon("circle", obj["bbox"])
    pts = outline_points(obj["shape"], obj["bbox"], obj.get("orientation"))
    return [round(float(v), 2) for p in pts for v in p]


def _area(obj: dict[str, Any]) -> float:
    _, _, w, h = obj["bbox"]
    return w * h / 2.0 if obj.get("orientation") == "diagonal" else shape_area(obj["shape"], w, h)
