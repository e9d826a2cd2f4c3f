"""One preview tile of a record: its first image, with a box answer drawn on it, then id, Q and A.

A box is drawn where the record's `box_format` (pixels, or norm1000 of the image's size) puts it."""

from __future__ import annotations

import textwrap
from typing import Any

from PIL import Image, ImageDraw

from polyvis.data.boxes import record_box_format, to_pixels
from polyvis.data.converters.coco import parse_box
from polyvis.data.images import load_image
from polyvis.data.records import IMAGE_TOKEN
from polyvis.data.synthetic.common import font

__all__ = ["record_tile"]

LINE_HEIGHT = 13


def record_tile(record: dict[str, Any], image_path: Any, width: int) -> Image.Image:
    """A `width`-pixel-wide tile: the image scaled to fit (upscaled without smoothing), the
    record id, then the first question (3 lines at most) and its answer (4 lines at most).

    Raises ImageError (a DataError) when the image is missing, corrupt or too large."""
    conv = record["conversations"]
    question = conv[0]["value"].replace(IMAGE_TOKEN, "").strip()
    answer = conv[1]["value"]
    src = load_image(image_path)  # an unreadable image is an ImageError naming its file
    scale = width / max(src.size)
    shown = src.resize(
        (max(1, round(src.width * scale)), max(1, round(src.height * scale))),
        Image.NEAREST if scale >= 1 else Image.LANCZOS,
    )
    fnt = font(11)
    chars = max(10, int(width / 6.2))
    lines = [str(record.get("id"))]
    lines += textwrap.wrap("Q: " + question, chars)[:3]
    lines += textwrap.wrap("A: " + answer.replace("\n", " / "), chars)[:4]
    tile = Image.new("RGB", (width, width + 6 + LINE_HEIGHT * len(lines)), (255, 255, 255))
    tile.paste(shown, (0, 0))
    draw = ImageDraw.Draw(tile)
    box = parse_box(answer)
    if box is not None:
        pixels = to_pixels(box, record_box_format(record), src.width, src.height)
        draw.rectangle([round(v * scale) for v in pixels], outline=(255, 0, 255), width=2)
    for k, line in enumerate(lines):
        draw.text(
            (2, width + 3 + LINE_HEIGHT * k), line, font=fnt, fill=(0, 0, 0) if k else (90, 90, 90)
        )
    return tile
