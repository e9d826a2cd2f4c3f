"""Page families: small text on a page larger than the generator's `size` (docs/tiling.md).

An encoder whose input is `size` px sees the whole page shrunk to that size, so the text is
small there; tiles of `size` px (polyvis.models.tiling) see it at its drawn scale.

- ocrpage: a 2·size x 2·size page (128 x 128 at 64) with one short line of text somewhere on
  it, the ocr family's strings: "What does the text say?" -> "lamp" (exact_match). The font
  is 12-15 px at size 64 (scaled with size) and the line at most 0.9·size wide (one tile),
  so its ink is at most an eighth of the page high: 8 px or less once the page is shrunk to 64.
- tablepage: a wide 3·size x size page (192 x 64 at 64) filled by a table with a shaded header
  row, its row keys distinct words: "What is the Cost of lamp?" -> "42" (anls). Easy: 4
  columns x 2 body rows; medium: 5 x 2; hard: 6 x 3 with numbers up to 999 and pixel noise.
  Shrunk to a size x size square, its text is a third as wide.

Difficulty otherwise follows the ocr family: easy is black on white, medium a dark ink on a pale
tint, hard adds a tilt of up to 6 degrees (ocrpage) and pixel noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import (
    add_noise,
    distinct_words,
    draw_text_centered,
    fit_font,
    level_index,
    pick,
    sample,
    uniform_int,
)
from polyvis.data.synthetic.ocr import QUESTION, random_text
from polyvis.data.synthetic.table import KEY_HEADERS, VALUE_HEADERS, draw_table_grid


def page(rng: np.random.Generator, width: int, height: int, difficulty: str) -> Image.Image:
    """A light page: plain white when easy, a random pale tint otherwise."""
    if difficulty == "easy":
        return Image.new("RGB", (width, height), (255, 255, 255))
    tint = tuple(uniform_int(rng, 225, 255) for _ in range(3))
    return Image.new("RGB", (width, height), tint)  # type: ignore[arg-type]


def ink(rng: np.random.Generator, difficulty: str) -> tuple[int, int, int]:
    return (0, 0, 0) if difficulty == "easy" else tuple(uniform_int(rng, 0, 90) for _ in range(3))  # type: ignore[return-value]


@FAMILIES.register("ocrpage")
class OcrPageFamily(Family):
    name = "ocrpage"
    metric = "exact_match"

    @classmethod
    def page_size(cls, size: int) -> tuple[int, int]:
        return 2 * size, 2 * size

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        text = random_text(rng, difficulty)
        side = 2 * size
        img = page(rng, side, side, difficulty)
        margin = max(1, size // 16)
        start = uniform_int(rng, round(size * 12 / 64), round(size * 15 / 64))
        # at most 0.9 of a tile wide: a long string gets a smaller font, never a larger one
        fnt = fit_font(text, 0.9 * size, side, start)
        x0, y0, x1, y1 = fnt.getbbox(text)
        w, h = x1 - x0, y1 - y0
        hard = level_index(difficulty) == 2
        tilt = int(np.ceil(0.06 * w)) if hard else 0  # sin(6°)·w/2, free above and below
        x = uniform_int(rng, margin, side - margin - w)
        y = uniform_int(rng, margin + tilt, side - margin - tilt - h)
        colour = ink(rng, difficulty)
        meta = {"text": text, "box": [x, y - tilt, x + w, y + h + tilt], "font_px": fnt.size}
        meta["qa"] = [qa(QUESTION, text, "read")]
        if not hard:
            ImageDraw.Draw(img).text((x - x0, y - y0), text, font=fnt, fill=colour)
            return Item(img, meta)
        layer = Image.new("L", (side, side), 0)
        ImageDraw.Draw(layer).text((x - x0, y - y0), text, font=fnt, fill=255)
        layer = layer.rotate(float(rng.uniform(-6, 6)), resample=Image.BICUBIC,
                             center=(x + w / 2, y + h / 2))  # fmt: skip
        img.paste(Image.new("RGB", (side, side), colour), (0, 0), layer)  # type: ignore[arg-type]
        return Item(add_noise(img, rng, 6.0), meta)


def wide_table(rng: np.random.Generator, difficulty: str) -> list[list[str]]:
    """Rows of cells; row 0 the header, column 0 the distinct keys."""
    level = level_index(difficulty)
    cols, rows = (4, 5, 6)[level], (2, 2, 3)[level]
    header = [pick(rng, KEY_HEADERS)] + sample(rng, VALUE_HEADERS, cols - 1)
    hi = (99, 99, 999)[level]
    body = [[k] + [str(uniform_int(rng, 1, hi)) for _ in range(cols - 1)]
            for k in distinct_words(rng, rows, 4)]  # fmt: skip
    return [header, *body]


@FAMILIES.register("tablepage")
class TablePageFamily(Family):
    name = "tablepage"
    metric = "anls"

    @classmethod
    def page_size(cls, size: int) -> tuple[int, int]:
        return 3 * size, size

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        table = wide_table(rng, difficulty)
        width, height = self.page_size(size)
        img = page(rng, width, height, difficulty)
        draw = ImageDraw.Draw(img)
        n_rows, n_cols = len(table), len(table[0])
        margin = max(1, size // 32)
        cw, ch = (width - 2 * margin) / n_cols, (height - 2 * margin) / n_rows
        # one font for the table: the largest at which its longest cell fits a cell
        longest = max((cell for row in table for cell in row), key=len)
        fnt = fit_font(longest, cw * 0.9, ch * 0.8, round(ch * 0.75))
        draw_table_grid(draw, (width, height), margin, (n_rows, n_cols), (cw, ch))
        colour = ink(rng, difficulty)
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                box = (
                    margin + c * cw,
                    margin + r * ch,
                    margin + (c + 1) * cw,
                    margin + (r + 1) * ch,
                )
                draw_text_centered(draw, box, cell, fnt, colour)
        img = add_noise(img, rng, 5.0 if level_index(difficulty) == 2 else 0.0)
        r, c = uniform_int(rng, 1, n_rows - 1), uniform_int(rng, 1, n_cols - 1)
        question = qa(f"What is the {table[0][c]} of {table[r][0]}?", table[r][c], "lookup")
        return Item(img, {"table": table, "font_px": fnt.size, "qa": [question]})
