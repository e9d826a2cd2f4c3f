"""Boxes in answers, drawn on their image.

A box is written as the COCO converter writes grounding answers (`box_text`, docs/data.md):
`[x1, y1, x2, y2]`. `parse_boxes` finds every such group of four numbers in a text (an answer
may name several objects); `draw_boxes` outlines them on a copy of the image. Pure PIL: the chat
command and the HTML reports both use them.

Box formats (`BOX_FORMATS`): `pixels`, the corners in pixels of the original image, and
`norm1000`, each corner an integer in 0..1000 of the image's width and height (as Qwen-VL
writes them). A record says which with its optional `box_format` field (absent: pixels);
`to_norm1000` and `to_pixels` convert between them given the image's size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from polyvis.errors import ConfigError

if TYPE_CHECKING:  # PIL is imported where it draws: the converters import this module at start-up
    from PIL import Image

Box = tuple[float, float, float, float]

_NUM = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
BOX_RE = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")
ANSWER_COLOUR = (255, 0, 255)  # magenta, as `polyvis data preview` draws answer boxes
REFERENCE_COLOUR = (0, 200, 0)

BoxFormat = Literal["pixels", "norm1000"]  # converters' options take it: the CLI lists both
BOX_FORMATS: tuple[str, ...] = get_args(BoxFormat)
NORM = 1000  # norm1000's full width and height
_PROMPTS = {
    "pixels": "Answer with a box [x1, y1, x2, y2].",
    "norm1000": "Answer with a box [x1, y1, x2, y2] in 0-1000 coordinates.",
}


def check_box_format(name: Any, field: str = "box_format") -> str:
    """`name` when it is a known box format; else a ConfigError naming `field` and the valid
    ones."""
    if not isinstance(name, str) or name not in BOX_FORMATS:
        raise ConfigError(field, f"unknown box format {name!r}; valid: {', '.join(BOX_FORMATS)}")
    return name


def record_box_format(record: Mapping[str, Any]) -> str:
    """The format of a record's boxes: its `box_format` field, pixels when it has none."""
    return check_box_format(record.get("box_format") or "pixels", f"{record.get('id')}: box_format")


def box_prompt(box_format: str) -> str:
    """The end of a grounding question, saying which coordinates the answer is in."""
    return _PROMPTS[check_box_format(box_format)]


def to_norm1000(box: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """Pixel corners (x1, y1, x2, y2) of a `width` x `height` image -> integers in 0..1000.

    Corners are clipped to the image; a box that rounds to no area is made one unit wide/high
    (as `box_text` does for pixels), since no answer could match a box of no area."""
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width} x {height}")
    x1, y1, x2, y2 = (
        min(NORM, max(0, round(float(v) / side * NORM)))
        for v, side in zip(box, (width, height, width, height))
    )
    x1, x2 = _widen(x1, x2)
    y1, y2 = _widen(y1, y2)
    return x1, y1, x2, y2


def _widen(a: int, b: int) -> tuple[int, int]:
    """(a, b) with b >= a + 1 inside 0..NORM: moves b up, or a down at the far edge."""
    if b > a:
        return a, b
    return (a, a + 1) if a < NORM else (NORM - 1, NORM)


def to_pixels(
    box: Sequence[float], box_format: str, width: float, height: float
) -> tuple[float, float, float, float]:
    """A box in `box_format` -> pixel corners of a `width` x `height` image (for drawing)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if check_box_format(box_format) == "pixels":
        return x1, y1, x2, y2
    sx, sy = width / NORM, height / NORM
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy


def boxes_to_pixels(
    boxes: Sequence[Sequence[float]], box_format: str, size: tuple[int, int]
) -> list[tuple[float, float, float, float]]:
    """`to_pixels` for each box; `size` is the image's (width, height), as PIL gives it."""
    return [to_pixels(b, box_format, *size) for b in boxes]


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
    from PIL import ImageDraw

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
    from PIL import Image

    scale = size / max(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    return image.convert("RGB").resize(new, resample), scale
