"""Boxes in answers, drawn on their image.

A box is written as the COCO converter writes grounding answers (`box_text`, docs/data.md):
`[x1, y1, x2, y2]`, the corners in pixels of the original image. `parse_boxes` finds every such
group of four numbers in a text (an answer may name several objects); `draw_boxes` outlines them
on a copy of the image. Pure PIL: the chat command and the HTML reports both use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]

_NUM = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
BOX_RE = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")
ANSWER_COLOUR = (255, 0, 255)  # magenta, as `polyvis data preview` draws answer boxes
REFERENCE_COLOUR = (0, 200, 0)


def parse_boxes(text: str) -> list[Box]:
    """Every `[x1, y1, x2, y2]` in `text`, in order (numbers may be ints or decimals)."""
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in BOX_RE.findall(text or "")]


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    colour: tuple[int, int, int] = ANSWER_COLOUR,
    width: int = 2,
    scale: float = 1.0,
) -> Image.Image:
    """An RGB copy of `image` with each box outlined (`width` pixels, inside the box's edges).

    scale: how much `image` was resized from the one the boxes' pixels refer to (a thumbnail).
    Corners given in either order are drawn; boxes off the image are clipped, and boxes with a
    corner that is not a finite number (a model's "[1e999, ...]") are left out.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(out)
    for box in boxes:
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        # Clamped just past the image, where nothing of the outline shows: PIL clips boxes off
        # the image itself, but corners past its C int range overflow into wrong or refused ones.
        x1, x2 = (_clamp(round(v), out.width, width) for v in (x1, x2))
        y1, y2 = (_clamp(round(v), out.height, width) for v in (y1, y2))
        draw.rectangle(
            [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour, width=width
        )
    return out


def _clamp(v: int, side: int, width: int) -> int:
    """v within [-width - 1, side + width]: an outline `width` pixels thick drawn from there is
    wholly off the image, as it is from any point further out."""
    return min(max(v, -width - 1), side + width)


def fit(image: Image.Image, size: int) -> tuple[Image.Image, float]:
    """`image` resized so that its longer side is `size` (upscaled without smoothing, as the
    nano world's small images stay sharp), and the scale factor for `draw_boxes`."""
    scale = size / max(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    return image.convert("RGB").resize(new, resample), scale
